"""Run All of every chapter in JupyterLab, in a real browser (Debian's chromium through playwright), as a reader would.

Usage (from the repository root, in the project's environment):
    apt-get install -y chromium && pip install playwright && python .ci/browser_run_all.py [--only 01_vpwiki ...]

A copy of the repository (without .git, .venv, data and runs) is served by JupyterLab on 127.0.0.1 with a token, so
the browser never saves outputs into the real notebooks. Two browser tabs of one JupyterLab serve the chapters, two
at a time (--tabs), as `nbdev_test --n_workers 2` runs them: a free tab opens the next chapter (docmanager:open),
waits for its kernel, runs all cells, waits until no cell is running; any error output or a "Select Kernel" dialog
fails the chapter.
Prints seconds per chapter and writes a screenshot of each under --shots (default /tmp/vpmel-browser). With --save DIR,
each chapter is saved by JupyterLab once it has run (in the copy) and copied to DIR with its outputs: the executed
notebooks `.ci/build_book.py --executed DIR` renders as the HTML edition, without running the chapters again."""
import argparse, json, os, secrets, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def start_lab(nbs: Path, port: int, token: str, threads: int | None = None) -> subprocess.Popen:
    "JupyterLab serving `nbs`; with `threads`, its kernels (and what they start) use that many torch/OpenMP threads."
    env = {**os.environ, **({'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)} if threads else {})}
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={nbs}', '--LabApp.expose_app_in_browser=True',
           '--allow-root']
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(120):
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/status?token={token}', timeout=2) as r:
                if r.status == 200: return proc
        except OSError: time.sleep(0.5)
    proc.kill(); raise RuntimeError('JupyterLab did not start')


def open_and_run_all(page, url: str) -> tuple[str, float]:
    """Open a notebook in JupyterLab, wait for its kernel, run all cells; returns (a problem or '', the time Run All
    started). The command's promise, which `evaluate` awaits, settles once the cells have run."""
    page.goto(url)
    page.wait_for_selector('.jp-Notebook', timeout=60_000)
    page.wait_for_function('() => window.jupyterapp !== undefined', timeout=60_000)
    if page.query_selector('.jp-Dialog'): return 'a dialog opened (no kernelspec?)', time.time()
    page.wait_for_function("() => /Idle/.test(document.querySelector('#jp-main-statusbar')?.textContent || '')", timeout=120_000)
    t0 = time.time()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    return '', t0

JS_OPEN = """async (path) => {
    const app = window.jupyterapp;
    const w = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
    await w.context.ready;
    window.vpmelChapter = w;
    return w.id;
}"""
JS_KERNEL_IDLE = """() => { const s = window.vpmelChapter?.sessionContext;
    return !!(s && s.session && s.session.kernel && s.session.kernel.status === 'idle'); }"""
JS_CHAPTER_ERRORS = """() => Array.from(window.vpmelChapter.node.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent)
    .filter(t => /Traceback|Error:/.test(t) && /Traceback/.test(t))"""
# From the notebook's model, not the page: JupyterLab renders only the cells in view (windowing), so the prompts of the
# page can all show a number while cells further down have not run yet.
JS_CHAPTER_STATE = """() => { const w = window.vpmelChapter, cells = w.content.model.cells; let pending = 0, errors = [];
    for (let i = 0; i < cells.length; i++) { const c = cells.get(i);
        if (c.type !== 'code' || !c.sharedModel.getSource().trim()) continue;
        if (c.executionCount === null) pending++;
        for (let k = 0; k < c.outputs.length; k++) { const o = c.outputs.get(k).toJSON();
            if (o.output_type === 'error') errors.push(`${o.ename}: ${o.evalue}`); } }
    const k = w.sessionContext.session && w.sessionContext.session.kernel;
    return {pending, errors, idle: !!(k && k.status === 'idle')}; }"""
JS_SAVE = "async () => { await window.vpmelChapter.context.save(); }"
JS_CLOSE = """async () => { const w = window.vpmelChapter; await w.sessionContext.shutdown(); w.dispose(); }"""

# a tab in the background must run its chapter as fast as the one in front
NO_THROTTLING = ['--disable-background-timer-throttling', '--disable-backgrounding-occluded-windows',
                 '--disable-renderer-backgrounding', '--disable-features=IntensiveWakeUpThrottling']

class Chapter:
    """One chapter's Run All in a JupyterLab page of its own (`start`, then `poll` until it returns a result). One page
    serves chapter after chapter, as a reader's JupyterLab does: opening a notebook there shows the same "Select
    Kernel" dialog as a fresh one would."""
    def __init__(self, page, name: str, timeout: float):
        self.page, self.name, self.timeout, self.t0, self.result = page, name, timeout, 0.0, None

    def start(self):
        "Open the notebook, wait for its kernel, run all its cells."
        self.page.evaluate(JS_OPEN, f'{self.name}.ipynb')
        try: self.page.wait_for_function(JS_KERNEL_IDLE, timeout=120_000)
        except Exception:
            dialog = ' (a dialog opened)' if self.page.query_selector('.jp-Dialog') else ''
            self.result = (0.0, 'the kernel did not start' + dialog); return
        if self.page.query_selector('.jp-Dialog'): self.result = (0.0, 'a dialog opened (no kernelspec?)'); return
        self.t0 = time.time()   # not awaited: the command's promise settles only once every cell has run
        self.page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

    def poll(self) -> tuple[float, str] | None:
        "(seconds of Run All, problem or '') once no cell is running (or on an error, or past the timeout); else None."
        if self.result is not None: return self.result
        secs = time.time() - self.t0
        if secs > self.timeout: return secs, f'still running after {self.timeout:.0f} s'
        state = self.page.evaluate(JS_CHAPTER_STATE)
        if not (state['idle'] and (state['pending'] == 0 or state['errors'])): return None
        if self.page.query_selector('.jp-Dialog'): return secs, 'a dialog opened'
        errors = state['errors'] or self.page.evaluate(JS_CHAPTER_ERRORS)
        return secs, (errors[0][:500] if errors else '')

def unexecuted(path: Path) -> str:
    "A problem if the saved notebook has code cells without an execution count (it was not saved after Run All)."
    cells = json.loads(path.read_text())['cells']
    n = sum(c['cell_type'] == 'code' and ''.join(c['source']).strip() != '' and c.get('execution_count') is None
            for c in cells)
    return f'the saved notebook has {n} code cells that did not run' if n else ''

def open_lab_page(browser, port: int, token: str, workspace: str):
    "A browser tab with JupyterLab started in a workspace of its own."
    page = browser.new_page(viewport={'width': 1400, 'height': 1000})
    page.goto(f'http://127.0.0.1:{port}/lab/workspaces/{workspace}?reset&token={token}')
    page.wait_for_function('() => window.jupyterapp !== undefined && window.jupyterapp.started !== undefined',
                           timeout=60_000)
    page.evaluate('() => window.jupyterapp.started')
    return page

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--only', nargs='*', default=None, help='chapter names (e.g. 01_vpwiki); default: all')
    ap.add_argument('--timeout', type=float, default=300, help='seconds a chapter may take')
    ap.add_argument('--tabs', type=int, default=2, help='chapters run at once, each in a browser tab of its own '
                    '(two on two cores, as `nbdev_test --n_workers 2` runs them)')
    ap.add_argument('--shots', default='/tmp/vpmel-browser', help='folder for screenshots')
    ap.add_argument('--chromium', default='/usr/bin/chromium')
    ap.add_argument('--save', default=None, help='folder for the executed notebooks (as JupyterLab saves them)')
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright
    work = Path(tempfile.mkdtemp(prefix='vpmel-browser-'))
    shutil.copytree(ROOT, work/'repo', ignore=shutil.ignore_patterns('.git', '.venv', 'data', 'runs', '__pycache__', '_proc'))
    nbs, shots = work/'repo'/'nbs', Path(a.shots)
    shots.mkdir(parents=True, exist_ok=True)
    chapters = sorted(p.stem for p in nbs.glob('[0-9][0-9]_*.ipynb') if a.only is None or p.stem in a.only)
    if a.save: Path(a.save).mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    # two chapters at once share the cores: one thread each (two threads each would wait on one another)
    lab, results = start_lab(nbs, port, token, threads=max(1, (os.cpu_count() or 1) // a.tabs)), {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, args=['--no-sandbox', '--disable-gpu', *NO_THROTTLING])
            pages = [open_lab_page(browser, port, token, f'ci{i}') for i in range(a.tabs)]
            todo, running = list(chapters), {}
            while todo or running:
                for page in pages:                      # a free tab takes the next chapter
                    if page not in running and todo:
                        running[page] = Chapter(page, todo.pop(0), a.timeout); running[page].start()
                time.sleep(1)
                for page, ch in list(running.items()):
                    res = ch.poll()
                    if res is None: continue
                    page.screenshot(path=str(shots/f'{ch.name}.png'))
                    secs, problem = res
                    if a.save:   # this tab's chapter, not whichever widget has the focus; settles once written
                        page.evaluate(JS_SAVE)
                        shutil.copy(nbs/f'{ch.name}.ipynb', Path(a.save)/f'{ch.name}.ipynb')
                        problem = problem or unexecuted(Path(a.save)/f'{ch.name}.ipynb')
                    page.evaluate(JS_CLOSE)
                    del running[page]
                    results[ch.name] = {'seconds': round(secs, 1), 'problem': problem}
                    print(f"{ch.name:<18} {secs:7.1f} s  {'OK' if not problem else 'FAILED: ' + problem}", flush=True)
            browser.close()
    finally:
        lab.terminate(); lab.wait(timeout=30); shutil.rmtree(work, ignore_errors=True)
    bad = [c for c, r in results.items() if r['problem']]
    print(json.dumps({'chapters': len(results), 'failed': bad, 'total_seconds': round(sum(r['seconds'] for r in results.values()), 1)}))
    print(f'{len(results) - len(bad)} passed, {len(bad)} failed')
    return 1 if bad else 0

if __name__ == '__main__': sys.exit(main())
