"""Check the built HTML book (.ci/build_book.py) in a real browser: links, images, error outputs, figures.

Usage (from the repository root, in the project's environment, after `python .ci/build_book.py`):
    python .ci/browser_book.py [--book _book] [--chromium /usr/bin/chromium]

The book is served by a local http.server on 127.0.0.1 and every page is opened in Debian's chromium through
playwright (requests that leave 127.0.0.1, such as the CDN scripts of nbconvert's template, are blocked, so the check
is the same offline). Fails (exit 1, one line per problem) on
- a broken link: an <a href> to a page or file of the book that does not exist, or to an anchor (#id) that the target
  page does not have (links out of the book are counted, not followed);
- a missing image: an <img> of the book (embedded or served from it) that did not load (naturalWidth 0);
- an error output: an error or stderr output that says Error or Traceback;
- a chapter without any figure (no <img> or <svg> in its cells, no widget output other than a progress bar), unless
  NO_FIGURES lists it;
- a chapter page missing, or not linked from index.html.
Prints the number of pages, images and links checked."""
import argparse, functools, http.server, socket, sys, threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

ROOT = Path(__file__).resolve().parent.parent

# Chapters with no picture by design (the check fails on any other chapter without one, and on a listed chapter that
# has one, so the list stays true)
NO_FIGURES = {
    '00_files': 'folders, atomic writes and records: files, nothing to look at',
    '01_vpwiki': 'the on-disk format: JSON records (pictures start in 03)',
    '02_check': 'validation: fault reports, one line per problem',
    '08_encoders': 'feature extractors: tensor shapes and layer choices, checked by numbers',
    '10_rank': 'whole-KB ranking and metrics: formulas and tables',
    '11_iier': 'the units of 09 put together into one model with its loss: scores and losses',
    '15_detective_training': 'training, saving and running the Detective: losses and answers as text',
    '17_crossfit': "cross-fitting: folds, folders and their records",
    '18_detective_cli': 'the vpmel detective command: one-line messages and resumed caches',
    '19_config': 'run configs, presets, ablations and run names',
    '20_towers': 'data, model and the frozen towers\' caches: tensors',
    '22_runs': 'one run end to end: metrics JSON, resumed runs, several processes',
    '23_official': 'the official code re-implemented: equality tests',
    '25_widgets': 'widget plumbing; the widgets themselves are chapters 27 and 33',
    '26_explore': "the explorer's logic; its pictures and widgets are chapter 27",
    '31_decisions': 'the decision log: JSON lines, a torn last line, undo lines',
    '32_review': 'the review session as plain methods; the widget is chapter 33',
    '34_proposals': 'proposals files, claims and the grounding table',
    '35_construct': "the construction pipeline; what was built is pictured in chapter 36",
    '38_cli': 'the command dispatcher: commands and one-line messages',
}

PAGE_JS = """() => {
  const stderr = 'application/vnd.jupyter.stderr';
  const cells = '.jp-Cell';
  // widget outputs (their views, with the saved widget state), progress bars (tqdm's HBox of a progress model) aside
  const saved = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
  const state = saved ? (JSON.parse(saved.textContent).state || {}) : {};
  const name = id => (state[id] || {}).model_name || '';
  const progress = id => /Progress/.test(name(id)) || ((state[id] || {}).state?.children || [])
                           .some(c => /Progress/.test(name(String(c).replace('IPY_MODEL_', ''))));
  const widgets = Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'))
                       .map(s => { try { return JSON.parse(s.textContent).model_id; } catch (e) { return ''; } })
                       .filter(id => !progress(id));
  return {
    images: Array.from(document.images).map(i => ({src: i.getAttribute('src') || '', abs: i.src,
                                                   ok: i.complete && i.naturalWidth > 0})),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => ({raw: a.getAttribute('href'), abs: a.href})),
    ids: Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name')),
    errors: Array.from(document.querySelectorAll(`.jp-RenderedText[data-mime-type="${stderr}"]`))
              .map(e => e.textContent).filter(t => /Error|Traceback/.test(t)),
    figures: document.querySelectorAll(`${cells} img, ${cells} svg`).length + widgets.length,
  };
}"""

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

def serve(book: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    port = free_port()
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', port), functools.partial(Quiet, directory=str(book)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f'http://127.0.0.1:{port}/'

def visit(page, url: str) -> dict:
    page.goto(url, wait_until='load', timeout=120_000)
    page.wait_for_function('() => Array.from(document.images).every(i => i.complete)', timeout=60_000)
    return page.evaluate(PAGE_JS)

def check(book: Path, base: str, pages: dict) -> tuple[list[str], int, int, int]:
    "Problems, images, local links and outside links counted, from what each page showed."
    problems, n_img, n_local, n_out = [], 0, 0, 0
    chapters = sorted(p for p in pages if p[:1].isdigit())
    for name, seen in pages.items():
        for img in seen['images']:
            if not img['src'].startswith('data:') and not img['abs'].startswith(base): n_out += 1; continue
            n_img += 1
            if not img['ok']: problems.append(f'{name}: image did not load: {img["src"][:80]}')
        for err in seen['errors']:
            problems.append(f'{name}: error output: ' + ' '.join(err.split())[:300])
        for link in seen['links']:
            if not link['abs'].startswith(base): n_out += 1; continue
            n_local += 1
            target, frag = urldefrag(link['abs'])
            path = unquote(urlparse(target).path).lstrip('/') or 'index.html'
            if not (book/path).is_file():
                problems.append(f'{name}: broken link {link["raw"]!r} (no {path} in the book)'); continue
            if frag and path.endswith('.html'):
                ids = pages.get(Path(path).stem, {}).get('ids', [])
                if frag not in ids and unquote(frag) not in ids:
                    problems.append(f'{name}: broken link {link["raw"]!r} ({path} has no #{unquote(frag)})')
    linked = {unquote(urlparse(l['abs']).path).lstrip('/') for l in pages.get('index', {}).get('links', [])}
    for ch in chapters:
        if f'{ch}.html' not in linked: problems.append(f'index: does not link chapter {ch}')
        figs = pages[ch]['figures']
        if not figs and ch not in NO_FIGURES:
            problems.append(f'{ch}: no figure (no <img>, <svg> or widget output); add one, or list the chapter in '
                            'NO_FIGURES with the reason')
        if figs and ch in NO_FIGURES: problems.append(f'{ch}: has {figs} figure(s) now: take it out of NO_FIGURES')
    return problems, n_img, n_local, n_out

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--book', default='_book', help='the folder build_book.py wrote (default _book)')
    ap.add_argument('--chromium', default='/usr/bin/chromium')
    a = ap.parse_args()
    book = Path(a.book).resolve()
    htmls = sorted(p.relative_to(book) for p in book.rglob('*.html'))
    problems = [f'{p.stem}.html: missing (run .ci/build_book.py)' for p in sorted((ROOT/'nbs').glob('[0-9]*.ipynb'))
                if not (book/f'{p.stem}.html').exists()]
    if not (book/'index.html').exists(): problems.append('index.html: missing (run .ci/build_book.py)')
    if not htmls: print('\n'.join(problems)); return 1
    from playwright.sync_api import sync_playwright
    srv, base = serve(book)
    pages = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, args=['--no-sandbox', '--disable-gpu'])
            page = browser.new_page(viewport={'width': 1400, 'height': 1000})
            page.route('**/*', lambda route: route.continue_() if route.request.url.startswith(base) else route.abort())
            for rel in htmls:
                pages[str(rel.with_suffix(''))] = visit(page, base + rel.as_posix())
            browser.close()
    finally:
        srv.shutdown(); srv.server_close()
    found, n_img, n_local, n_out = check(book, base, pages)
    problems += found
    counts = {}
    for p in problems: counts[p] = counts.get(p, 0) + 1   # a link in the top and bottom navigation: one line, x2
    problems = [p + (f' (x{n})' if n > 1 else '') for p, n in counts.items()]
    print('\n'.join(problems))
    print(f'{len(pages)} pages, {n_img} images and {n_local} links in the book checked ({n_out} links and images from '
          f'outside the book not followed): {len(problems)} problem(s)')
    return 1 if problems else 0

if __name__ == '__main__': sys.exit(main())
