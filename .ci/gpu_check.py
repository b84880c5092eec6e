"""The GPU path, measured: whole-KB ranking at VPWiki's size (exact and two-stage) and the `paper` preset for one epoch.

Usage (on a machine with a GPU, from the repository root, vpmel importable):
    python .ci/gpu_check.py [--entities 137460] [--queries 200] [--data-preset large] [--skip-train]

Prints one JSON object per check (and writes them to --out, default gpu_check.json):
- rank: random features and matcher as `vpmel bench rank` makes them, on the GPU: the entity cache, exact
  ranking (`rank_entities`), the faiss first stage (CPU) and two-stage ranking (`two_stage_rank`), their agreement,
  one mention's latency, peak GPU memory;
- train: MiniVPWiki `--data-preset` built with 16 processes, then `vpmel train --preset paper --clip-weights none
  --epochs 1` (ViT-B/32 at 224 px from random weights, CLIP text, batch 128, bf16): steps/s, epoch and run seconds,
  peak GPU memory, dev and test metrics (exact whole-KB ranking); with --two-stage-report, the trained model's test split
  ranked exactly and in two stages for several K, and the first stage's recall@K (chapter 22's `two_stage_report`)."""
import argparse, json, sys, time
from pathlib import Path
from types import SimpleNamespace

import torch

def sync(): torch.cuda.synchronize() if torch.cuda.is_available() else None

def rank_check(n_entities: int, n_queries: int, candidates: int, dev: str) -> dict:
    from vpmel.bench import _bench_setup, _kb_blocks
    from vpmel.rank import build_entity_cache, rank_entities, FirstStage, two_stage_rank
    matcher, mentions, gold = _bench_setup(0, n_entities, n_queries)
    matcher = matcher.to(dev)
    to = lambda f: SimpleNamespace(**{k: v.to(dev) for k, v in vars(f).items()})
    mentions = to(mentions)
    if dev == 'cuda': torch.cuda.reset_peak_memory_stats()
    sync(); t = time.perf_counter()
    cache = build_entity_cache(matcher, (to(b) for b in _kb_blocks(0, n_entities)), total=n_entities)
    sync(); t_cache = time.perf_counter() - t          # includes generating the random features on the CPU
    t = time.perf_counter(); exact = rank_entities(matcher, mentions, cache, gold); sync(); t_exact = time.perf_counter() - t
    t = time.perf_counter(); first = FirstStage.from_cache(matcher, cache); t_index = time.perf_counter() - t
    t = time.perf_counter(); two = two_stage_rank(matcher, mentions, cache, first, gold, candidates); sync(); t_two = time.perf_counter() - t
    one = []
    for i in range(20):
        m1 = SimpleNamespace(**{k: v[i % n_queries:i % n_queries + 1] for k, v in vars(mentions).items()})
        sync(); t = time.perf_counter(); two_stage_rank(matcher, m1, cache, first, None, candidates); sync(); one.append(time.perf_counter() - t)
    one.sort()
    return {'check': 'rank', 'device': torch.cuda.get_device_name() if dev == 'cuda' else 'cpu', 'entities': n_entities,
            'queries': n_queries, 'candidates': candidates, 'entity_cache_s': round(t_cache, 2), 'exact_s': round(t_exact, 3),
            'first_stage_index_s': round(t_index, 2), 'two_stage_s': round(t_two, 3), 'one_mention_ms': round(1000 * one[len(one) // 2], 2),
            'two_stage_speedup_over_exact': round(t_exact / t_two, 2),
            'top1_equal_frac': float((exact.topk_indices[:, 0] == two.topk_indices[:, 0]).float().mean()),
            'ranks_equal_frac': float((exact.ranks == two.ranks).float().mean()),
            'peak_gpu_mb': round(torch.cuda.max_memory_allocated() / 2**20) if dev == 'cuda' else None}

def train_check(data_preset: str, workers: int, two_stage: bool = False) -> dict:
    import vpmel.train as T
    from vpmel.minivpwiki import build_minivpwiki
    from vpmel.runs import preset, train_run
    t = time.perf_counter()
    root = build_minivpwiki(Path('data/minivpwiki')/data_preset, preset=data_preset, workers=workers, progress=False)
    t_data = time.perf_counter() - t
    cfg = preset('paper', data=str(root), name=f'paper-{data_preset}')
    cfg.model.encoder.pretrained = None                 # what --clip-weights none does: no download on a node without internet
    cfg.train.epochs, cfg.dev_mentions = 1, 1000
    stamps, step = [], T.train_step
    def timed_step(*a, **k):
        out = step(*a, **k); sync(); stamps.append(time.perf_counter()); return out
    T.train_step = timed_step
    if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter(); s = train_run(cfg, 'runs', resume=False, progress=False); t_run = time.perf_counter() - t
    T.train_step = step
    n = len(stamps)
    report = None
    if two_stage:        # the trained model: exact vs two-stage ranking of the test split, first-stage recall@K
        from vpmel.iier import IIER
        from vpmel.towers import ensure_data, mention_sets
        from vpmel.evaluate import two_stage_report
        run = Path('runs')/cfg.name
        model = IIER.from_pretrained(run/'model').to('cuda' if torch.cuda.is_available() else 'cpu')
        ds = ensure_data(cfg)
        t = time.perf_counter()
        report = two_stage_report(model, ds, mention_sets(cfg, ds, model, progress=False)['test'], run/'index', 256)
        report['seconds'] = round(time.perf_counter() - t, 1)
    return {'check': 'train', 'two_stage_report': report, 'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'data': data_preset,
            'data_build_s': round(t_data, 1), 'steps': n, 'batch_size': cfg.train.batch_size,
            'steps_per_s': round((n - 1) / (stamps[-1] - stamps[0]), 2) if n > 1 else None,
            'epoch_s': round(stamps[-1] - stamps[0], 1) if n > 1 else None, 'run_s': round(t_run, 1),
            'peak_gpu_mb': round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
            'dev': s['dev'], 'test': s['test']}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--entities', type=int, default=137460)
    ap.add_argument('--queries', type=int, default=200)
    ap.add_argument('--candidates', type=int, default=100)
    ap.add_argument('--data-preset', default='large')
    ap.add_argument('--workers', type=int, default=16)
    ap.add_argument('--skip-rank', action='store_true')
    ap.add_argument('--skip-train', action='store_true')
    ap.add_argument('--two-stage-report', action='store_true', help='after training: exact vs two-stage on the test split (recall@K)')
    ap.add_argument('--out', default='gpu_check.json')
    a = ap.parse_args()
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    results = []
    if not a.skip_rank: results.append(rank_check(a.entities, a.queries, a.candidates, dev)); print(json.dumps(results[-1]), flush=True)
    if not a.skip_train: results.append(train_check(a.data_preset, a.workers, a.two_stage_report)); print(json.dumps(results[-1]), flush=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    return 0

if __name__ == '__main__':
    sys.exit(main())
