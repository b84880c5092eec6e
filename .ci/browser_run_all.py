"""Run All of every chapter in JupyterLab, in a real browser (Debian's chromium through playwright), as a reader would.

Usage (from the repository root, in the project's environment):
    apt-get install -y chromium && pip install playwright && python .ci/browser_run_all.py [--only 01_vpwiki ...]

A copy of the repository (without .git, .venv, data and runs) is served by JupyterLab on 127.0.0.1 with a token, so
the browser never saves outputs into the real notebooks. One JupyterLab page serves every chapter: open it there (docmanager:open), wait for its
kernel, run all cells, wait until no cell is running, and fail on any error output or a "Select Kernel" dialog.
Prints seconds per chapter and writes a screenshot of each under --shots (default /tmp/vpmel-browser). With --save DIR,
each chapter is saved by JupyterLab once it has run (in the copy) and copied to DIR with its outputs: the executed
notebooks `.ci/build_book.py --executed DIR` renders as the HTML edition, without running the chapters again."""
import argparse, json, secrets, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def start_lab(nbs: Path, port: int, token: str) -> subprocess.Popen:
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={nbs}', '--LabApp.expose_app_in_browser=True',
           '--allow-root']
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
JS_CHAPTER_PROMPTS = "() => Array.from(window.vpmelChapter.node.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')).map(e => e.textContent)"
JS_CHAPTER_ERRORS = """() => Array.from(window.vpmelChapter.node.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent)
    .filter(t => /Traceback|Error:/.test(t) && /Traceback/.test(t))"""
JS_CLOSE = """async () => { const w = window.vpmelChapter; await w.sessionContext.shutdown(); w.dispose(); }"""

def run_chapter(page, path: str, timeout: float) -> tuple[float, str]:
    """In a JupyterLab already open in `page`: open the notebook `path`, wait for its kernel, run all its cells and wait
    until none is running; returns (seconds of Run All, problem or ''). One page serves every chapter, as a reader's
    JupyterLab does: opening a notebook there shows the same "Select Kernel" dialog as a fresh one would."""
    page.evaluate(JS_OPEN, path)
    try: page.wait_for_function(JS_KERNEL_IDLE, timeout=120_000)
    except Exception: return 0.0, 'the kernel did not start' + (' (a dialog opened)' if page.query_selector('.jp-Dialog') else '')
    if page.query_selector('.jp-Dialog'): return 0.0, 'a dialog opened (no kernelspec?)'
    t0 = time.time()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    while time.time() - t0 < timeout:
        time.sleep(1)
        prompts = page.evaluate(JS_CHAPTER_PROMPTS)
        if prompts and not any('*' in p for p in prompts) and (all(any(c.isdigit() for c in p) for p in prompts)
                                                              or page.evaluate(JS_CHAPTER_ERRORS)): break
    else: return time.time() - t0, f'still running after {timeout:.0f} s'
    secs = time.time() - t0
    if page.query_selector('.jp-Dialog'): return secs, 'a dialog opened'
    errors = page.evaluate(JS_CHAPTER_ERRORS)
    return secs, (errors[0][:500] if errors else '')

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--only', nargs='*', default=None, help='chapter names (e.g. 01_vpwiki); default: all')
    ap.add_argument('--timeout', type=float, default=300, help='seconds a chapter may take')
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
    lab, results = start_lab(nbs, port, token), {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, args=['--no-sandbox', '--disable-gpu'])
            page = browser.new_page(viewport={'width': 1400, 'height': 1000})
            page.goto(f'http://127.0.0.1:{port}/lab/workspaces/ci?reset&token={token}')
            page.wait_for_function('() => window.jupyterapp !== undefined && window.jupyterapp.started !== undefined', timeout=60_000)
            page.evaluate('() => window.jupyterapp.started')
            for ch in chapters:
                secs, problem = run_chapter(page, f'{ch}.ipynb', a.timeout)
                page.screenshot(path=str(shots/f'{ch}.png'))
                if a.save:   # the command's promise settles once the file is written
                    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
                    shutil.copy(nbs/f'{ch}.ipynb', Path(a.save)/f'{ch}.ipynb')
                page.evaluate(JS_CLOSE)
                results[ch] = {'seconds': round(secs, 1), 'problem': problem}
                print(f"{ch:<18} {secs:7.1f} s  {'OK' if not problem else 'FAILED: ' + problem}", flush=True)
            browser.close()
    finally:
        lab.terminate(); lab.wait(timeout=30); shutil.rmtree(work, ignore_errors=True)
    bad = [c for c, r in results.items() if r['problem']]
    print(json.dumps({'chapters': len(results), 'failed': bad, 'total_seconds': round(sum(r['seconds'] for r in results.values()), 1)}))
    print(f'{len(results) - len(bad)} passed, {len(bad)} failed')
    return 1 if bad else 0

if __name__ == '__main__': sys.exit(main())
