"""The prompt explorer in a real browser (Debian's chromium through playwright): draw a box with the mouse, check the ranking.

Usage (from the repository root, in the project's environment):
    apt-get install -y chromium && pip install playwright && python .ci/browser_explore.py [--run RUN_DIR]

Without --run, a tiny IIER is trained on MiniVPWiki `tiny` in a temporary folder (seconds). Two pages are tested:
1. JupyterLab (127.0.0.1, with a token): a notebook shows `ExplorerApp` on a test mention; the script drags a new box
   on the image with real mouse events and checks that the box shown, the top-k table and the gold rank change, and
   that no cell printed a traceback; then it picks "lasso", draws a free-hand loop on the stroke canvas with the
   mouse, and checks that the prompt becomes that lasso (the prompt line and the prompted image) and the top-k changes.
2. `vpmel explore RUN` (Voilà on 127.0.0.1): the same drag and lasso on the served page.
Screenshots go to --shots (default /tmp/vpmel-browser): explore-lab-before/after.png, explore-voila.png."""
import argparse, contextlib, json, math, re, secrets, shutil, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_run_all import free_port, start_lab, open_and_run_all  # noqa: E402

NOTEBOOK_CODE = """\
from transformers.utils import logging; logging.disable_progress_bar()
from vpmel.explore import PromptExplorer
from vpmel.explorer_app import ExplorerApp
app = ExplorerApp(PromptExplorer.from_run({run!r}, {data!r}))
app.pick('test', {index})
app.widget"""

def train_tiny(work: Path) -> Path:
    "A tiny IIER run (MiniVPWiki tiny, 4 epochs: seconds), as chapter 26's tests train it."
    code = f"""
from vpmel.minivpwiki import build_minivpwiki
from vpmel.runs import preset, train_run
root = build_minivpwiki({str(work/'tiny')!r}, preset='tiny', seed=0, progress=False)
cfg = preset('tiny', data=str(root), name='explore-tiny'); cfg.train.epochs = 4
train_run(cfg, {str(work/'runs')!r}, progress=False)"""
    subprocess.run([sys.executable, '-c', code], check=True)
    return work/'runs'/'explore-tiny'

def pick_mention(run: Path, data, index=None) -> tuple[int, tuple, tuple]:
    "A test mention (`index`, or the first) whose top-5 and gold rank both change when the box moves to the top-left third."
    code = f"""
import json
from vpmel.explore import PromptExplorer
ex = PromptExplorer.from_run({str(run)!r}, {data!r})
for i in ([{index}] if {index is not None} else range(len(ex.ds.splits['test']))):
    ex.select('test', i); w, h = ex.item.image.size
    a = ex.rank(5); box = (1, 1, w // 3, h // 3); ex.set_box(box); b = ex.rank(5)
    if a.rows != b.rows and a.gold_rank != b.gold_rank: print(json.dumps([i, box, [w, h]])); break
else: print(json.dumps([0, [1, 1, w // 3, h // 3], [w, h]]))"""
    out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    i, box, size = json.loads(out)
    return i, tuple(box), tuple(size)

def state(page) -> dict:
    return page.evaluate("""() => ({
        box: document.querySelector('.vpmel-box')?.textContent || '',
        gold: document.querySelector('.vpmel-gold-rank')?.textContent || '',
        table: document.querySelector('.vpmel-topk table')?.textContent || '',
        message: document.querySelector('.vpmel-message')?.textContent || '',
        prompt: document.querySelector('.vpmel-prompt')?.textContent || '',
        image: document.querySelector('.vpmel-prompted')?.src || ''})""")

def drag_box(page, box, natural_size) -> None:
    "Drag from the box's top-left to its bottom-right corner on the bbox widget's image, with real mouse events."
    img = page.locator('.vpmel-bbox img').first
    img.scroll_into_view_if_needed()
    r = img.bounding_box()
    sx, sy = r['width'] / natural_size[0], r['height'] / natural_size[1]
    page.mouse.move(r['x'] + box[0] * sx, r['y'] + box[1] * sy)
    page.mouse.down()
    page.mouse.move(r['x'] + box[2] * sx, r['y'] + box[3] * sy, steps=8)
    page.mouse.up()

def check_drag(page, box, size, name: str, shots: Path) -> list[str]:
    "Drag `box` (in image pixels) and return what went wrong (empty: the box, the top-k and the gold rank changed)."
    page.wait_for_selector('.vpmel-bbox img', timeout=120_000)
    page.wait_for_selector('.vpmel-topk table', timeout=120_000)
    page.wait_for_function("() => { const i = document.querySelector('.vpmel-bbox img'); return i && i.naturalWidth > 0 }", timeout=60_000)
    nat = page.evaluate("() => { const i = document.querySelector('.vpmel-bbox img'); return [i.naturalWidth, i.naturalHeight] }")
    before = state(page)
    page.locator('.vpmel-app').first.screenshot(path=str(shots/f'explore-{name}-before.png'))
    k = nat[0] / size[0]   # the app shows small scenes enlarged: the box in the pixels of the image shown
    drag_box(page, tuple(v * k for v in box), nat)
    t0 = time.time()
    while time.time() - t0 < 20:
        after = state(page)
        if after['box'] != before['box'] and after['table'] != before['table']: break
        time.sleep(0.25)
    page.wait_for_timeout(500)
    after = state(page)
    page.locator('.vpmel-app').first.screenshot(path=str(shots/f'explore-{name}-after.png'))
    problems = []
    got = [int(v) for v in re.findall(r'-?\d+', after['box'])]
    if after['box'] == before['box']: problems.append(f'{name}: the box shown did not change ({before["box"]})')
    elif any(abs(g - b) > 2 for g, b in zip(got, box)): problems.append(f'{name}: drew {list(box)}, the app shows {got}')
    if after['table'] == before['table']: problems.append(f'{name}: the top-k table did not change')
    if after['gold'] == before['gold']: problems.append(f'{name}: the gold rank did not change ({before["gold"]})')
    if after['message']: problems.append(f'{name}: the app shows a message: {after["message"]}')
    print(f'{name}: box {before["box"]} -> {after["box"]}, gold rank {before["gold"]} -> {after["gold"]}', flush=True)
    return problems

def check_lasso(page, name: str, shots: Path) -> list[str]:
    "Pick 'lasso', draw a loop round the middle of the image on the stroke canvas; what went wrong (empty: all changed)."
    before = state(page)
    page.get_by_role('button', name='lasso', exact=True).first.click()
    cv = page.locator('.vpmel-stroke canvas').first
    cv.wait_for(state='visible', timeout=30_000)
    page.wait_for_function("() => document.querySelector('.vpmel-stroke canvas').width > 0", timeout=30_000)
    cv.scroll_into_view_if_needed()
    r = cv.bounding_box()
    loop = [(r['x'] + r['width'] * (0.5 + 0.3 * math.cos(t)), r['y'] + r['height'] * (0.5 + 0.3 * math.sin(t)))
            for t in [2 * math.pi * k / 24 for k in range(25)]]
    page.mouse.move(*loop[0]); page.mouse.down()
    for p in loop[1:]: page.mouse.move(*p, steps=2)
    page.mouse.up()
    t0 = time.time()
    while time.time() - t0 < 20:
        after = state(page)
        if 'lasso' in after['prompt'] and after['table'] != before['table']: break
        time.sleep(0.25)
    page.wait_for_timeout(500)
    after = state(page)
    page.locator('.vpmel-app').first.screenshot(path=str(shots/f'explore-{name}-lasso.png'))
    problems = []
    if 'lasso drawn' not in after['prompt']: problems.append(f'{name}: the prompt is not the lasso ({after["prompt"]!r})')
    if after['image'] == before['image']: problems.append(f'{name}: the prompted image did not change with the lasso')
    if after['table'] == before['table']: problems.append(f'{name}: the top-k table did not change with the lasso')
    if after['message']: problems.append(f'{name}: the app shows a message after the lasso: {after["message"]}')
    print(f'{name}: lasso: prompt {before["prompt"]!r} -> {after["prompt"]!r}, gold rank {before["gold"]} -> {after["gold"]}',
          flush=True)
    return problems

def lab_page(browser, work: Path, code: str, shots: Path, box, size) -> list[str]:
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'app', 'metadata': {}, 'outputs': [], 'source': code}],
          'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}
    (work/'explore_test.ipynb').write_text(json.dumps(nb))
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(work, port, token)
    try:
        page = browser.new_page(viewport={'width': 1400, 'height': 1700})
        t0 = time.time()
        problem, _ = open_and_run_all(page, f'http://127.0.0.1:{port}/lab/workspaces/explore/tree/explore_test.ipynb?reset&token={token}')
        if problem: return [f'lab: {problem}']
        page.add_style_tag(content='.Toastify { display: none !important; }')   # JupyterLab's "news?" toast, over the app
        problems = check_drag(page, box, size, 'lab', shots)
        problems += check_lasso(page, 'lab', shots)
        tb = page.evaluate("() => Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent).filter(t => /Traceback/.test(t))")
        if tb: problems.append('lab: a traceback: ' + tb[0][:300])
        print(f'lab: {time.time() - t0:.1f} s', flush=True)
        page.close()
        return problems
    finally: lab.terminate(); lab.wait(timeout=30)

@contextlib.contextmanager
def voila_server(cmd: list[str], port: int):
    "Run a `vpmel explore|review` command (it execs into Voilà) until the block ends; TimeoutError if its page never answers."
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=5) as r:
                    if r.status == 200: break
            except OSError: time.sleep(0.5)
        else: raise TimeoutError('voila: the server did not answer')
        yield proc
    finally:
        proc.terminate()          # Voilà shuts its kernels down on SIGTERM
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill()

def voila_page(browser, run: Path, data, shots: Path, index: int, box, size) -> list[str]:
    port = free_port()
    cmd = [str(Path(sys.executable).parent/'vpmel'), 'explore', str(run), '--port', str(port)] + (['--data', str(data)] if data else [])
    try:
        with voila_server(cmd, port):
            page = browser.new_page(viewport={'width': 1400, 'height': 1700})
            t0 = time.time()
            page.goto(f'http://127.0.0.1:{port}/', timeout=180_000)
            page.wait_for_selector('.vpmel-bbox img', timeout=180_000)
            # Voilà shows mention 0 of test: pick the chosen one through the widgets, as a person would
            page.locator('.widget-inline-hbox:has(label:text("mention")) input').first.fill(str(index))
            page.keyboard.press('Enter')
            page.wait_for_timeout(1500)
            problems = check_drag(page, box, size, 'voila', shots)
            problems += check_lasso(page, 'voila', shots)
            page.screenshot(path=str(shots/'explore-voila.png'), full_page=True)
            print(f'voila: {time.time() - t0:.1f} s', flush=True)
            page.close()
            return problems
    except TimeoutError as e: return [str(e)]

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--run', default=None, help='a run folder written by vpmel train (default: train a tiny one)')
    ap.add_argument('--data', default=None, help="the run's dataset folder, if not where its run_config.json says")
    ap.add_argument('--shots', default='/tmp/vpmel-browser')
    ap.add_argument('--chromium', default='/usr/bin/chromium')
    ap.add_argument('--skip-voila', action='store_true')
    ap.add_argument('--index', type=int, default=None, help='the test mention to show (default: the first whose ranking the drag changes)')
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright
    work, shots = Path(tempfile.mkdtemp(prefix='vpmel-explore-')), Path(a.shots)
    shots.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run = Path(a.run).resolve() if a.run else train_tiny(work)
    data = str(Path(a.data).resolve()) if a.data else None
    index, box, size = pick_mention(run, data, a.index)
    print(f'run {run}, test mention {index}, box {list(box)} (prepared in {time.time() - t0:.1f} s)', flush=True)
    problems = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, args=['--no-sandbox', '--disable-gpu'])
            problems += lab_page(browser, work, NOTEBOOK_CODE.format(run=str(run), data=data, index=index), shots, box, size)
            if not a.skip_voila: problems += voila_page(browser, run, data, shots, index, box, size)
            browser.close()
    finally: shutil.rmtree(work, ignore_errors=True)
    for p in problems: print('FAILED:', p)
    print(f"explorer in the browser: {'OK' if not problems else 'FAILED'} ({time.time() - t0:.1f} s); screenshots in {shots}")
    return 1 if problems else 0

if __name__ == '__main__':
    sys.exit(main())
