"""The proposal review widget in a real browser (Debian's chromium through playwright): draw a box, accept, read the log.

Usage (from the repository root, in the project's environment):
    apt-get install -y chromium && pip install playwright && python .ci/browser_review.py

In a temporary folder: MiniVPWiki `tiny` (a second), and a one-cell notebook that opens `ReviewApp` (chapter 33) on
its first three test mentions with stand-in proposals and a decisions log in that folder. JupyterLab (127.0.0.1, with
a token) runs it; then, as a person would:
1. drag a new box on the first mention's image with real mouse events and press Enter (the box widget's Submit key);
2. click Accept on the second mention, leaving its proposals as they are.
The log must then hold a `redraw` of the first mention with the drawn box (within 3 image pixels) and an `accept` of
the second one's proposal 0; the progress must read 2 of 3 decided, and no cell may show a traceback or the app a red
message. Then `vpmel review OUT` (Voilà) on a construction of chapter 28's tiny MEL source waiting for review: a click
on Accept must write the first pending mention's suggested proposal to OUT's log (auto false). Screenshots go to --shots
(default /tmp/vpmel-browser): review-before.png, review-after.png, review-voila.png."""
import argparse, json, secrets, shutil, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser_run_all import free_port, start_lab, open_and_run_all  # noqa: E402
from browser_explore import drag_box, voila_server  # noqa: E402

NOTEBOOK_CODE = """\
from vpmel.decisions import DecisionLog
from vpmel.review import ReviewSession, dataset_items, stand_in_proposals
from vpmel.review_app import ReviewApp
items = dataset_items({root!r}, 'test', stand_in_proposals, limit=3)
app = ReviewApp(ReviewSession(items, DecisionLog({log!r})))
app.widget"""

BOX = (10, 12, 70, 80)   # drawn on the first mention, in image pixels (its scenes are 128 px; the stand-ins lie elsewhere)

def text(page, sel: str) -> str:
    return page.evaluate(f"() => document.querySelector({sel!r})?.textContent || ''")

def read_log(log: Path) -> list[dict]:
    return [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []

def wait_for(fn, timeout: float = 20):
    "Poll `fn` until it returns something true (returned) or `timeout` seconds pass (returns the last value)."
    t0 = time.time()
    while True:
        v = fn()
        if v or time.time() - t0 > timeout: return v
        time.sleep(0.25)

def review(page, log: Path, items: list[dict], shots: Path) -> list[str]:
    "Draw + Enter on the first mention, Accept on the second; what went wrong (empty: nothing)."
    problems = []
    page.wait_for_selector('.vpmel-review .vpmel-bbox img', timeout=120_000)
    page.wait_for_function("() => { const i = document.querySelector('.vpmel-bbox img'); return i && i.naturalWidth > 0 }", timeout=60_000)
    page.wait_for_function("() => /Accept saves proposal/.test(document.querySelector('.vpmel-choice')?.textContent || '')", timeout=60_000)
    nat = page.evaluate("() => { const i = document.querySelector('.vpmel-bbox img'); return [i.naturalWidth, i.naturalHeight] }")
    page.locator('.vpmel-review').first.screenshot(path=str(shots/'review-before.png'))
    k = nat[0] / items[0]['size'][0]    # small scenes are shown enlarged: the box in the pixels of the image shown
    drag_box(page, tuple(v * k for v in BOX), nat)
    if not wait_for(lambda: 'your box' in text(page, '.vpmel-choice')):
        problems.append(f'after the drag the app does not offer the drawn box: {text(page, ".vpmel-choice")!r}')
    print(f'drew {list(BOX)}: {text(page, ".vpmel-choice")}', flush=True)
    # Enter on the box widget (it has the keyboard after the drag; focusing it again does no harm)
    page.evaluate("() => document.querySelector('.vpmel-bbox [tabindex]')?.focus()")
    page.keyboard.press('Enter')
    if not wait_for(lambda: len(read_log(log)) >= 1): problems.append('Enter on the image saved nothing')
    else:
        d = read_log(log)[0]
        if d['id'] != items[0]['id'] or d['decision'] != 'redraw' or d['box'] is None or any(abs(a - b) > 3 for a, b in zip(d['box'], BOX)):
            problems.append(f'expected a redraw of mention {items[0]["id"]} with a box near {list(BOX)}, the log holds {d}')
        print(f'log after Enter: {d}', flush=True)
    # the second mention: Accept, with the proposals left as they are
    if not wait_for(lambda: f'mention {items[1]["id"]}' in text(page, '.vpmel-review')):
        problems.append(f'mention {items[1]["id"]} was not shown after the first decision')
    wait_for(lambda: 'Accept saves proposal' in text(page, '.vpmel-choice'), 10)
    page.locator('.vpmel-review button.vpmel-accept').first.click()
    if not wait_for(lambda: len(read_log(log)) >= 2): problems.append('clicking Accept saved nothing')
    else:
        d = read_log(log)[1]
        want = {'id': items[1]['id'], 'decision': 'accept', 'box': items[1]['best'], 'proposal': 0, 'reason': None, 'auto': False, 'score': 0.9}
        if d != want: problems.append(f'expected {want}, the log holds {d}')
        print(f'log after Accept: {d}', flush=True)
    progress = wait_for(lambda: (lambda t: t if t.startswith('2 / 3 decided') else '')(text(page, '.vpmel-progress')), 10)
    if not progress: problems.append(f'the progress reads {text(page, ".vpmel-progress")!r}, not "2 / 3 decided ..."')
    page.wait_for_timeout(300)
    page.locator('.vpmel-review').first.screenshot(path=str(shots/'review-after.png'))
    if text(page, '.vpmel-error'): problems.append(f'the app shows an error: {text(page, ".vpmel-error")}')
    if len(read_log(log)) != 2: problems.append(f'the log holds {len(read_log(log))} lines, not 2: {read_log(log)}')
    return problems

def voila_review(browser, work: Path, shots: Path) -> list[str]:
    "`vpmel review OUT` served by Voilà: Accept on the first pending mention; what went wrong (empty: nothing)."
    from vpmel.mel import build_mel_source
    from vpmel.construct import construct, ConstructConfig, open_review
    from vpmel.grounding import LargestRegion
    src = build_mel_source(work/'mel', preset='tiny', workers=1, progress=False)
    out = work/'vp'
    construct([src], out, LargestRegion(), ConstructConfig(review='uncertain'), progress=False)
    log, cur = out/'work'/'decisions.jsonl', open_review(out).current
    k = 0 if cur.suggested is None else cur.suggested
    want = {'id': cur.id, 'decision': 'accept', 'box': list(cur.proposals[k].box), 'proposal': k, 'reason': None,
            'auto': False, 'score': cur.proposals[k].score}
    n0, port, t0 = len(read_log(log)), free_port(), time.time()
    try:
        with voila_server([str(Path(sys.executable).parent/'vpmel'), 'review', str(out), '--port', str(port)], port):
            page = browser.new_page(viewport={'width': 1400, 'height': 1400})
            page.goto(f'http://127.0.0.1:{port}/', timeout=180_000)
            page.wait_for_selector('.vpmel-review .vpmel-bbox img', timeout=180_000)
            if not wait_for(lambda: f'mention {cur.id}' in text(page, '.vpmel-review') and 'Accept saves proposal' in text(page, '.vpmel-choice'), 60):
                return [f'voila: mention {cur.id} with a proposal to accept was not shown: {text(page, ".vpmel-review")[:300]!r}']
            page.locator('.vpmel-review button.vpmel-accept').first.click()
            problems = []
            if not wait_for(lambda: len(read_log(log)) > n0): problems.append('voila: clicking Accept saved nothing')
            elif read_log(log)[-1] != want: problems.append(f'voila: expected {want}, the log holds {read_log(log)[-1]}')
            else: print(f'voila: Accept saved {read_log(log)[-1]} ({time.time() - t0:.1f} s)', flush=True)
            page.wait_for_timeout(300)
            page.screenshot(path=str(shots/'review-voila.png'), full_page=True)
            if text(page, '.vpmel-error'): problems.append(f'voila: the app shows an error: {text(page, ".vpmel-error")}')
            page.close()
            return problems
    except TimeoutError as e: return [str(e)]

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--shots', default='/tmp/vpmel-browser')
    ap.add_argument('--chromium', default='/usr/bin/chromium')
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright
    from vpmel.minivpwiki import build_minivpwiki
    from vpmel.review import dataset_items, stand_in_proposals
    work, shots = Path(tempfile.mkdtemp(prefix='vpmel-review-')), Path(a.shots)
    shots.mkdir(parents=True, exist_ok=True)
    t0, problems = time.time(), []
    try:
        root = build_minivpwiki(work/'tiny', preset='tiny', workers=1, progress=False)
        items = [{'id': it.id, 'size': it.size, 'best': list(it.best.box)} for it in dataset_items(root, 'test', stand_in_proposals, limit=3)]
        log = work/'decisions.jsonl'
        nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'review', 'metadata': {}, 'outputs': [],
                         'source': NOTEBOOK_CODE.format(root=str(root), log=str(log))}],
              'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}
        (work/'review_test.ipynb').write_text(json.dumps(nb))
        port, token = free_port(), secrets.token_hex(16)
        lab = start_lab(work, port, token)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=a.chromium, args=['--no-sandbox', '--disable-gpu'])
                page = browser.new_page(viewport={'width': 1400, 'height': 1400})
                problem, _ = open_and_run_all(page, f'http://127.0.0.1:{port}/lab/workspaces/review/tree/review_test.ipynb?reset&token={token}')
                if problem: problems.append(f'lab: {problem}')
                else:
                    page.add_style_tag(content='.Toastify { display: none !important; }')   # JupyterLab's "news?" toast
                    problems += review(page, log, items, shots)
                    tb = page.evaluate("() => Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent).filter(t => /Traceback/.test(t))")
                    if tb: problems.append('a traceback: ' + tb[0][:300])
                page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')")
                page.wait_for_timeout(500)
                problems += voila_review(browser, work, shots)
                browser.close()
        finally:
            lab.terminate(); lab.wait(timeout=30)
    finally: shutil.rmtree(work, ignore_errors=True)
    for p in problems: print('FAILED:', p)
    print(f"review widget in the browser: {'OK' if not problems else 'FAILED'} ({time.time() - t0:.1f} s); screenshots in {shots}")
    return 1 if problems else 0

if __name__ == '__main__':
    sys.exit(main())
