"""Build the executed HTML edition of the book: every chapter run as "Run All" runs it, rendered with its outputs.

Usage (from the repository root, in the project's environment):
    python .ci/build_book.py [--out _book] [--only 05_synth ...] [--timeout 900] [--workers 2]

Each chapter nbs/[0-9]*.ipynb runs in a real Jupyter kernel (nbclient; working directory nbs/, as in JupyterLab), every
cell in order, `#| slow` and `#| gpu` cells included (the chapters guard those themselves with RUN_SLOW and a GPU
check), stopping at the first error as Run All does. It is rendered to OUT/<chapter>.html with nbconvert's JupyterLab
template, figures and markdown images embedded, as nbdev renders a book: `#| hide` cells left out (unless they hold an
error), `#|` directive lines dropped, links to chapters pointed at their pages, and contents / previous / next links
on top and at the bottom. OUT/index.html is the front page: nbs/index.ipynb's prose with every chapter in the book's
parts, each with its title (its first `# ` heading) and summary (its `> ` line) read from the notebook.

At most --workers (<= 2) chapters run at once, each in a subprocess with a fresh TMPDIR under one temporary folder
that is removed at the end; a chapter over --timeout seconds is stopped and rendered as far as it got. Prints each
chapter's seconds and the total, writes OUT/build.json, and exits 1 if a chapter failed, ran out of time, or left
files behind (in the temporary folder or in the repository)."""
import argparse, concurrent.futures, datetime, html, json, os, re, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'

# The book's parts by chapter number, for when nbs/index.ipynb has no `<!-- chapters: NN ... -->` cells to take them
# from (titles and summaries always come from the notebooks)
PARTS = [('Data', range(0, 8)), ('The model', range(8, 12)), ('Training', (12, 13)), ('Detective-VLM', range(14, 19)),
         ('IIER runs', range(19, 24)), ('Using a trained model', range(24, 28)), ('Building VP-MEL data', range(28, 37)),
         ('Benchmarks and the command line', (37, 38)), ('Experiments', (39,))]
OTHER_PART = 'More chapters'

def chapters() -> list[Path]: return sorted(NBS.glob('[0-9]*.ipynb'))

def heading(nb) -> tuple[str, str]:
    "(title, summary): the notebook's first `# ` heading and its first `> ` line."
    title = summary = ''
    for cell in nb['cells']:
        if cell['cell_type'] != 'markdown': continue
        for line in ''.join(cell['source']).splitlines():
            if not title and line.startswith('# '): title = line[2:].strip()
            elif not summary and line.startswith('> '): summary = line[2:].strip()
        if title and summary: break
    return title, summary

def part_of(name: str) -> str:
    num = int(re.match(r'\d+', name).group())
    return next((p for p, nums in PARTS if num in nums), OTHER_PART)

# --- one chapter (runs in its own subprocess) ---

DIRECTIVE = re.compile(r'\s*#\s*\|\s*(.*)')

def directives(src: str) -> tuple[dict, str]:
    "The nbdev directives leading a code cell ({'hide': '', 'echo': 'false', ...}) and the source without them."
    lines, found = src.splitlines(), {}
    while lines and (m := DIRECTIVE.match(lines[0])):
        key, _, val = m.group(1).partition(':')
        if key.strip(): found[key.strip().split()[0]] = val.strip() or key.strip().partition(' ')[2]
        lines.pop(0)
    return found, '\n'.join(lines)

def has_error(cell) -> bool: return any(o.get('output_type') == 'error' for o in cell.get('outputs', []))

def as_book(nb):
    "The executed notebook as nbdev's docs show it: hidden cells out (errors stay visible), directive lines dropped."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == 'code':
            found, src = directives(cell.source)
            if 'hide' in found and not has_error(cell): continue
            if found.get('echo') == 'false' or not src.strip():
                cell.metadata.setdefault('transient', {})['remove_source'] = True
            if found.get('output') == 'false' and not has_error(cell): cell.outputs = []
            if not src.strip() and not cell.outputs: continue
            cell.source = src
        cells.append(cell)
    nb.cells = cells
    return nb

def link_pages(page: str) -> str:
    "Links to notebooks (`05_synth.ipynb`, `./index.ipynb#x`) point at their pages."
    return re.sub(r'href="(\./)?([^"/:#]+)\.ipynb(#[^"]*)?"',
                  lambda m: f'href="{m.group(2)}.html{m.group(3) or ""}"', page)

NAV_CSS = ('<style>.book-nav{font:14px/1.6 system-ui,sans-serif;max-width:1100px;margin:12px auto;padding:6px 12px;'
           'display:flex;gap:18px;border-bottom:1px solid #ddd}'
           '.book-nav.bottom{border-top:1px solid #ddd;border-bottom:0}'
           '.book-nav a{text-decoration:none}.book-stopped{max-width:1100px;margin:12px auto;padding:10px 14px;'
           'background:#fdecea;border:1px solid #e57373;font:14px system-ui,sans-serif}</style>')

def nav(names: list[str], titles: dict, name: str, where: str) -> str:
    i, links = names.index(name), ['<a href="index.html">Contents</a>']
    if i > 0: links.append(f'<a href="{names[i-1]}.html">&larr; {html.escape(titles[names[i-1]])}</a>')
    if i + 1 < len(names): links.append(f'<a href="{names[i+1]}.html">{html.escape(titles[names[i+1]])} &rarr;</a>')
    return f'<nav class="book-nav {where}">' + ''.join(links) + '</nav>'

def render(nb, title: str, top: str = '', bottom: str = '') -> str:
    from nbconvert import HTMLExporter
    page, _ = HTMLExporter(template_name='lab', embed_images=True).from_notebook_node(
        nb, resources={'metadata': {'name': title, 'path': str(NBS)}})
    page = link_pages(page).replace('</head>', NAV_CSS + '</head>', 1)
    page = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + top, page, count=1)
    return page.replace('</body>', bottom + '</body>', 1) if bottom else page

def chapter_titles() -> tuple[list[str], dict[str, str]]:
    "Every chapter's name, in order, and its title (the name when it has none)."
    import nbformat
    names = [p.stem for p in chapters()]
    return names, {n: heading(nbformat.read(NBS/f'{n}.ipynb', as_version=4))[0] or n for n in names}

def render_executed(name: str, executed: Path, out: Path, toc: tuple[list[str], dict[str, str]]) -> dict:
    """Write the page of a chapter executed elsewhere (`browser_run_all.py --save`: Run All in JupyterLab), with the
    navigation of `toc` (`chapter_titles()`); its problem is a missing notebook, a cell that did not run, or an error
    output."""
    import nbformat
    f, problem = executed/f'{name}.ipynb', ''
    if not f.exists(): return {'chapter': name, 'seconds': 0.0, 'problem': f'no executed notebook {f}'}
    nb = nbformat.read(f, as_version=4)
    code = [c for c in nb.cells if c.cell_type == 'code' and c.source.strip()]
    if (bad := next((i for i, c in enumerate(code) if has_error(c)), None)) is not None:
        problem = f'error output in code cell {bad}'
    elif (todo := sum(c.get('execution_count') is None for c in code)):
        problem = f'{todo} code cells did not run'
    names, titles = toc
    top = nav(names, titles, name, 'top')
    if problem: top += f'<div class="book-stopped">Problem with this chapter: {html.escape(problem)}.</div>'
    (out/f'{name}.html').write_text(render(as_book(nb), titles[name], top, nav(names, titles, name, 'bottom')),
                                    encoding='utf-8')
    return {'chapter': name, 'seconds': 0.0, 'problem': problem}

def run_chapter(name: str, out: Path, timeout: float) -> dict:
    "Execute one chapter in a kernel (stops at the first error, or when the time is up), write its page; a summary."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    nb = nbformat.read(NBS/f'{name}.ipynb', as_version=4)
    deadline, has_spec = time.time() + timeout, bool(nb.metadata.get('kernelspec', {}).get('name'))

    class Client(NotebookClient):
        async def async_execute_cell(self, cell, cell_index, *args, **kw):
            self.timeout = max(1, int(deadline - time.time()))   # what is left of the chapter's time, for this cell
            first = next((l for l in cell.source.splitlines() if l.strip() and not DIRECTIVE.match(l)), '')
            self.current = f'{cell_index} (`{first.strip()[:60]}`)'
            return await super().async_execute_cell(cell, cell_index, *args, **kw)

    # out of time, the kernel is interrupted (KeyboardInterrupt in the cell) and then shut down as usual, so the
    # chapter's scratch folders go away with it
    client, t0, problem = Client(nb, kernel_name='python3', resources={'metadata': {'path': str(NBS)}},
                                 interrupt_on_timeout=True), time.time(), ''
    client.current = None
    try: client.execute()
    except (CellExecutionError, CellTimeoutError) as e:
        if time.time() >= deadline - 1:
            problem = f'stopped after {timeout:.0f} s (the chapter time limit) in cell {client.current}'
        else: problem = f'error in cell {client.current}: ' + (str(e).strip().splitlines() or [''])[-1][:300]
    except DeadKernelError: problem = f'the kernel died in cell {client.current}'
    if not has_spec:   # nbclient was given a kernel; JupyterLab would not be
        problem = '; '.join(filter(None, [problem, 'no kernelspec in its metadata (JupyterLab asks "Select Kernel")']))
    secs = time.time() - t0
    names, titles = chapter_titles()
    top = nav(names, titles, name, 'top')
    if problem:
        top += f'<div class="book-stopped">Problem with this chapter: {html.escape(problem)}.</div>'
    page = render(as_book(client.nb), titles[name], top, nav(names, titles, name, 'bottom'))
    (out/f'{name}.html').write_text(page, encoding='utf-8')
    return {'chapter': name, 'seconds': round(secs, 1), 'problem': problem}

# --- the front page ---

MARKER = re.compile(r'<!--\s*chapters:\s*([\d\s]*?)\s*-->')

def strip_section(md: str, title: str) -> str:
    "Markdown without the section headed `title` (any level >= 2, up to the next heading of that level or above)."
    out, skip_level = [], None
    for line in md.splitlines():
        m = re.match(r'(#{1,6})\s+(.*)', line)
        if m and skip_level is not None and len(m.group(1)) <= skip_level: skip_level = None
        if m and len(m.group(1)) >= 2 and m.group(2).strip().lower() == title.lower(): skip_level = len(m.group(1))
        if skip_level is None: out.append(line)
    return '\n'.join(out).rstrip()

def part_md(title: str, names: list[str]) -> str:
    "A part of the book: its heading and a row per chapter (title and summary read from the notebook)."
    import nbformat
    rows = []
    for n in names:
        t, summary = heading(nbformat.read(NBS/f'{n}.ipynb', as_version=4))
        rows.append(f'| [`{n}`]({n}.html) | **{t or n}**' + (f' — {summary}' if summary else '') + ' |')
    return f'### {title}\n\n| chapter | what |\n|---|---|\n' + '\n'.join(rows)

def index_cells(src_cells: list, names: list[str]) -> list[str]:
    """The front page's markdown: nbs/index.ipynb's prose with its chapter tables (cells marked
    `<!-- chapters: NN ... -->`, part title = the cell's heading) made again from the notebooks, linking the pages;
    without such cells, the prose (its "Chapters" section aside) and then the parts of PARTS. Chapters in no part
    come last, under OTHER_PART."""
    num = lambda n: int(re.match(r'\d+', n).group())
    md = [c.source for c in src_cells if c.cell_type == 'markdown']
    marked = [(i, m) for i, text in enumerate(md) if (m := MARKER.search(text))]
    out, placed = [], set()
    if marked:
        for i, text in enumerate(md):
            m = MARKER.search(text)
            if not m: out.append(text); continue
            nums = {int(x) for x in m.group(1).split()}
            title = next((h.group(1) for h in re.finditer(r'^#{2,6}\s+(.*)$', text, re.M)), 'Chapters')
            part = [n for n in names if num(n) in nums and n not in placed]
            placed.update(part)
            if part: out.append(part_md(title, part))
            if i == marked[-1][0] and (rest := [n for n in names if n not in placed]):
                out.append(part_md(OTHER_PART, rest)); placed.update(rest)
    else:
        out = [strip_section(text, 'Chapters') for text in md] or ['# vpmel']
        parts = [(title, [n for n in names if num(n) in nums]) for title, nums in PARTS]
        parts.append((OTHER_PART, [n for n in names if part_of(n) == OTHER_PART]))
        out.append('## Chapters\n\n' + '\n\n'.join(part_md(t, ns) for t, ns in parts if ns))
    return out

def build_index(out: Path, names: list[str]) -> None:
    import nbformat
    from nbformat.v4 import new_markdown_cell, new_notebook
    src = nbformat.read(NBS/'index.ipynb', as_version=4) if (NBS/'index.ipynb').exists() else None
    cells = [new_markdown_cell(t) for t in index_cells(src.cells if src else [], names)]
    when = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    cells.append(new_markdown_cell(f'---\n\n*This edition of the book was built on {when} by '
                                   '`python .ci/build_book.py`: '
                                   'every chapter was run top to bottom (Run All) and is shown with its outputs. The '
                                   'long experiments (`#| slow`, `#| gpu`) print that they were skipped unless '
                                   '`RUN_SLOW = True` (and a GPU); interactive widgets need a running kernel.*'))
    nb = new_notebook(cells=cells, metadata=src.metadata if src else {})
    (out/'index.html').write_text(render(nb, heading(nb)[0] or 'vpmel'), encoding='utf-8')

# --- the whole book ---

def tree(root: Path) -> set:
    skip = {'.git', '.venv', '_book', '__pycache__', '.ipynb_checkpoints'}
    found = set()
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in skip and not x.endswith('.egg-info')]
        found.update(str(Path(d, f).relative_to(root)) for f in files)
    return found

def spawn(name: str, out: Path, timeout: float, tmp: Path) -> dict:
    "Run one chapter in a subprocess (its own session, so a hung kernel goes with it)."
    path = f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}'   # the kernel's `python`: this one
    env = dict(os.environ, TMPDIR=str(tmp), PATH=path)
    for k in ('IN_TEST', 'MPLBACKEND'): env.pop(k, None)   # a reader's Run All: no test flags, inline figures
    tmp.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, __file__, '--chapter', name, '--out', str(out), '--timeout', str(timeout)],
                         cwd=NBS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    t0 = time.time()
    try: log, _ = p.communicate(timeout=timeout + 180)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); log, _ = p.communicate()
        return {'chapter': name, 'seconds': round(time.time() - t0, 1), 'problem': 'killed: over the time limit',
                'log': log}
    last = (log.strip().splitlines() or [''])[-1]
    try: res = json.loads(last)
    except json.JSONDecodeError:
        res = {'chapter': name, 'seconds': round(time.time() - t0, 1), 'problem': f'exit {p.returncode}'}
    res['wall'] = round(time.time() - t0, 1)
    if res['problem']: res['log'] = log[-3000:]
    return res

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default='_book', help='folder for the pages (default _book)')
    ap.add_argument('--only', nargs='*', default=None, help='chapter names (e.g. 05_synth); default: all')
    ap.add_argument('--timeout', type=float, default=900, help='seconds a chapter may run (default 900)')
    ap.add_argument('--workers', type=int, default=2, help='chapters run (or rendered) at once (at most 2)')
    ap.add_argument('--executed', default=None,
                    help='render the notebooks of this folder (executed by browser_run_all.py --save) instead of running')
    ap.add_argument('--chapter', help=argparse.SUPPRESS)   # internal: run this one chapter
    a = ap.parse_args()
    out = Path(a.out).resolve()
    if a.chapter:
        print(json.dumps(run_chapter(a.chapter, out, a.timeout)), flush=True); return 0

    names = [p.stem for p in chapters()]
    todo = [n for n in names if a.only is None or n in a.only]
    if a.only and (unknown := set(a.only) - set(names)): print(f'no such chapter: {sorted(unknown)}'); return 1
    out.mkdir(parents=True, exist_ok=True)
    if a.executed:
        t0, n = time.time(), len(todo)   # rendering is CPU-bound: the workers' processes share it
        with concurrent.futures.ProcessPoolExecutor(max(1, min(2, a.workers))) as pool:
            done = list(pool.map(render_executed, todo, [Path(a.executed)] * n, [out] * n, [chapter_titles()] * n))
        build_index(out, names)
        bad = [r['chapter'] + ': ' + r['problem'] for r in done if r['problem']]
        print('\n'.join(bad) + ('\n' if bad else '') +
              f'{len(todo)} executed chapters + index.html rendered into {out} in {time.time() - t0:.0f} s, {len(bad)} with problems')
        return 1 if bad else 0
    for n in todo: (out/f'{n}.html').unlink(missing_ok=True)
    previous = {}
    if (out/'build.json').exists():
        previous = {r['chapter']: r['seconds'] for r in json.loads((out/'build.json').read_text())['chapters']}
    todo.sort(key=lambda n: -previous.get(n, 0))   # longest first (the last build's times): the workers finish together
    tmp, before, start = Path(tempfile.mkdtemp(prefix='vpmel-book-')), tree(ROOT), time.time()
    results = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, min(2, a.workers))) as pool:
            futs = {pool.submit(spawn, n, out, a.timeout, tmp/n): n for n in todo}
            for f in concurrent.futures.as_completed(futs):
                r = results[futs[f]] = f.result()
                status = 'FAILED: ' + r['problem'] if r['problem'] else 'OK'
                print(f"{r['chapter']:<18} {r['seconds']:7.1f} s ({r.get('wall', 0):5.1f} s with kernel start and "
                      f"page)  {status}", flush=True)
                if r['problem'] and r.get('log'):
                    print('  | ' + r['log'].strip()[-1500:].replace('\n', '\n  | '), flush=True)
        build_index(out, names)
    finally:
        failed = {n for n, r in results.items() if r['problem']}   # a stopped chapter's failure is reported already
        left = sorted(str(p.relative_to(tmp)) for p in tmp.glob('*/*')
                      if not p.name.startswith('torchinductor_') and p.parent.name not in failed)
        shutil.rmtree(tmp, ignore_errors=True)
    new = sorted(tree(ROOT) - before)
    total = time.time() - start
    merged = {**{r['chapter']: r for r in (json.loads((out/'build.json').read_text())['chapters'] if previous else [])},
              **{n: {k: v for k, v in r.items() if k != 'log'} for n, r in results.items()}}
    (out/'build.json').write_text(json.dumps({'total_seconds': round(total, 1),
                                              'chapters': [merged[n] for n in names if n in merged]}, indent=1))
    bad = [n for n in todo if results[n]['problem']]
    if left: print('the chapters left temporary files behind (use scratch_dir):\n  ' + '\n  '.join(left))
    if new: print('the build left files in the repository:\n  ' + '\n  '.join(new))
    print(f'{len(todo)} chapters + index.html in {out}: {len(todo) - len(bad)} ran to the end, {len(bad)} did not'
          + (f' ({", ".join(bad)})' if bad else '') + f'; total {total:.0f} s')
    return 1 if bad or left or new else 0

if __name__ == '__main__': sys.exit(main())
