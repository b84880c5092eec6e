#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb, the book's front page, as `nbdev_readme` does, without Quarto.

    python .ci/make_readme.py           # fill the chapter tables of nbs/index.ipynb, then write README.md from it
    python .ci/make_readme.py --check   # exit 1, with a short diff, when either file is not what it would write

The chapter tables of nbs/index.ipynb are made from the chapters themselves. In a markdown cell, a line
`<!-- chapters: 09 10 13 -->` opens the table of the notebooks whose names start with those numbers, in name order,
up to the line `<!-- end of chapters -->`; what is between the two lines is rewritten. A row is the chapter's name
(linked), its module (`#| default_exp`), its title (`# Title`) and summary (`> summary`), the commands it owns (the
COMMANDS and BENCH_COMMANDS tables of the chapter that exports the console script of settings.ini), and its Colab
badge (settings.ini's user, repo, branch and nbs_path). Every notebook of nbs/ but index.ipynb is in exactly one
table, or the script fails and says where to add it.

README.md is the filled notebook as nbconvert's markdown exporter (`jupyter nbconvert --to markdown`) renders it,
less what the book's pages do not show: `#| hide` (or `#| include: false`) cells, the input of `#| echo: false`
cells, the outputs of `#| output: false` cells, `#|` directive lines, raw cells and the table markers. Links and
images relative to nbs/ (`images/x.png`, `00_files.ipynb`) are made relative to the repository root
(`nbs/images/x.png`), where README.md is. Needs nbconvert (in `.[dev]`, with jupyterlab).
"""
import argparse, ast, configparser, copy, difflib, json, posixpath, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START = re.compile(r'^<!-- chapters:((?:\s+\d+)+)\s*-->\s*$')
END = '<!-- end of chapters -->'
HEADER = '<!-- Made from nbs/index.ipynb by `python .ci/make_readme.py`: edit the notebook, not this file. -->'
DIRECTIVE = re.compile(r'^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
BADGE = 'https://colab.research.google.com/assets/colab-badge.svg'


class Fail(Exception): "A reason the files cannot be made; printed as one line."


def settings():
    cfg = configparser.ConfigParser()
    if not cfg.read(ROOT/'settings.ini'): raise Fail('settings.ini not found at the repository root')
    s = cfg['DEFAULT']
    for k in ('user', 'repo', 'branch', 'lib_name', 'nbs_path'):
        if not s.get(k): raise Fail(f'settings.ini has no {k} (make_readme.py needs it)')
    return s

def read_nb(path):
    try: return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e: raise Fail(f'{path.relative_to(ROOT)}: cannot read the notebook: {e}')

def nb_str(nb): return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + '\n'  # as nbdev writes them
def src(cell): s = cell.get('source', ''); return s if isinstance(s, str) else ''.join(s)
def set_src(cell, text): cell['source'] = text.splitlines(keepends=True)

def directives(text):
    "The `#| name: value` lines at the top of a code cell, as {name: value}."
    d = {}
    for line in text.splitlines():
        m = DIRECTIVE.match(line)
        if m: d[m.group(1)] = m.group(2).lower()
        elif line.strip(): break
    return d


def chapter(path, lib):
    "A chapter's name, title, summary and module (None when it exports nothing), from its notebook."
    nb, rel = read_nb(path), path.relative_to(ROOT)
    first = next((src(c) for c in nb['cells'] if c['cell_type'] == 'markdown'), '')
    title = re.search(r'^#\s+(\S.*?)\s*$', first, flags=re.M)
    summary = re.search(r'^>\s*(\S.*)$(?:\n>.*$)*', first, flags=re.M)
    if not title or not summary:
        raise Fail(f'{rel}: its first markdown cell needs a "# Title" line and a "> summary" line')
    module = None
    for c in nb['cells']:
        if c['cell_type'] == 'code':
            exp = directives(src(c)).get('default_exp')
            if exp: module = f'{lib}.{exp}'
    summary = ' '.join(l.lstrip('>').strip() for l in summary.group(0).splitlines())
    return dict(name=path.stem, title=title.group(1), summary=summary, module=module, nb=nb, rel=rel)


def commands(chapters, s):
    "{module: ['`vpmel check`', ...]}: the command tables of the chapter that exports the console script."
    script = (s.get('console_scripts') or '').split()
    if not script: return {}
    prog, _, target = script[0].partition('=')
    cli = target.split(':')[0]
    owner = next((c for c in chapters if c['module'] == cli), None)
    if owner is None: raise Fail(f'settings.ini: console script {script[0]}: no chapter exports {cli}')
    tables = {}
    for cell in owner['nb']['cells']:
        if cell['cell_type'] != 'code': continue
        try: tree = ast.parse(src(cell))
        except SyntaxError: continue                                        # magics: not where the tables are
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id in ('COMMANDS', 'BENCH_COMMANDS')):
                tables[node.targets[0].id] = [
                    (k.value, v.elts[0].value) for k, v in zip(node.value.keys, node.value.values)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Tuple) and v.elts
                    and isinstance(v.elts[0], ast.Constant)]
    if 'COMMANDS' not in tables: raise Fail(f'{owner["rel"]}: no COMMANDS table (command: (module, function, help))')
    owned = {}
    for cmd, mod in tables['COMMANDS']: owned.setdefault(mod, []).append(f'`{prog} {cmd}`')
    for cmd, mod in tables.get('BENCH_COMMANDS', []): owned.setdefault(mod, []).append(f'`{prog} bench {cmd}`')
    return owned


def table(chs, s, owned):
    def cell(t): return t.replace('|', r'\|')
    rows = ['| chapter | module | what | commands | |', '|---|---|---|---|---|']
    for c in chs:
        colab = (f"https://colab.research.google.com/github/{s['user']}/{s['repo']}/blob/{s['branch']}/"
                 f"{s['nbs_path']}/{c['name']}.ipynb")
        rows.append(f"| [`{c['name']}`]({c['name']}.ipynb) | {'`'+c['module']+'`' if c['module'] else ''} "
                    f"| {cell('**'+c['title']+'** — '+c['summary'])} | {cell(', '.join(owned.get(c['module'], [])))} "
                    f"| [![Open in Colab]({BADGE})]({colab}) |")
    return rows


def fill_tables(index, chapters, s):
    "A copy of the index notebook with every chapter table made again from the chapters."
    nb, seen, owned = copy.deepcopy(index), {}, commands(chapters, s)
    for c in nb['cells']:
        if c['cell_type'] != 'markdown': continue
        lines, out, i = src(c).split('\n'), [], 0
        while i < len(lines):
            m = START.match(lines[i])
            if not m: out.append(lines[i]); i += 1; continue
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == END), None)
            if end is None: raise Fail(f'nbs/index.ipynb: "{lines[i].strip()}" has no "{END}" line after it')
            chs = []
            for num in m.group(1).split():
                these = [ch for ch in chapters if ch['name'].split('_')[0] == num]
                if not these: raise Fail(f'nbs/index.ipynb lists chapter {num}, but there is no nbs/{num}_*.ipynb')
                for ch in these:
                    if ch['name'] in seen: raise Fail(f'nbs/index.ipynb lists {ch["name"]} in two chapter tables')
                    seen[ch['name']] = True
                chs += these
            out += [lines[i], '', *table(sorted(chs, key=lambda ch: ch['name']), s, owned), '', END]
            i = end + 1
        set_src(c, '\n'.join(out))
    missing = [ch['name'] for ch in chapters if ch['name'] not in seen]
    if missing:
        raise Fail(f'nbs/{missing[0]}.ipynb is in no chapter table of nbs/index.ipynb: add its number to a '
                   f'"<!-- chapters: ... -->" line there (or a new table)')
    return nb


def rebase(text, nbs):
    "Links and images relative to nbs/ made relative to the repository root; code left alone."
    def fix(t):
        if re.match(r'^[a-zA-Z][\w+.-]*:', t) or t.startswith(('/', '#')): return t
        return posixpath.normpath(posixpath.join(nbs, t))
    def outside_code(part):
        part = re.sub(r'\]\(\s*<?([^)\s>]+)', lambda m: m.group(0)[:-len(m.group(1))] + fix(m.group(1)), part)
        return re.sub(r'''(\bsrc=["'])([^"']+)''', lambda m: m.group(1) + fix(m.group(2)), part)
    out, fence = [], None
    for line in text.split('\n'):
        f = re.match(r'^\s*(```+|~~~+)', line)
        if fence:
            out.append(line)
            if f and f.group(1)[0] == fence[0] and len(f.group(1)) >= len(fence): fence = None
            continue
        if f: fence = f.group(1); out.append(line); continue
        parts = re.split(r'(`+[^`]*?`+)', line)                              # inline code spans stay as they are
        out.append(''.join(p if i % 2 else outside_code(p) for i, p in enumerate(parts)))
    return '\n'.join(out)


def render(nb, s):
    "README.md's text: the notebook through nbconvert's markdown exporter, less what the book does not show."
    try:
        import nbformat
        from nbconvert import MarkdownExporter
        from traitlets.config import Config
    except ImportError: raise Fail('make_readme.py needs nbconvert: pip install -e ".[dev]" first')
    nb, cells = copy.deepcopy(nb), []
    for c in nb['cells']:
        if c['cell_type'] == 'raw': continue
        if c['cell_type'] == 'markdown' and any(START.match(l) or l.strip() == END for l in src(c).split('\n')):
            kept = [l for l in src(c).split('\n') if not (START.match(l) or l.strip() == END)]
            set_src(c, re.sub(r'\n{3,}', '\n\n', '\n'.join(kept)).strip('\n'))
        if c['cell_type'] == 'code':
            d = directives(src(c))
            if 'hide' in d or d.get('include') == 'false': continue
            set_src(c, '\n'.join(l for l in src(c).split('\n') if not DIRECTIVE.match(l)).strip('\n'))
            tags = c.setdefault('metadata', {}).setdefault('tags', [])             # nbconvert's TagRemovePreprocessor
            if d.get('echo') == 'false': tags.append('remove_input')
            if d.get('output') == 'false': tags.append('remove_output')
            for o in ([] if 'remove_output' in tags else c.get('outputs', [])):
                if set(o.get('data', {})) - {'text/plain', 'text/markdown'}:
                    raise Fail('nbs/index.ipynb: a shown code cell has an output README.md cannot hold (an image?): '
                               'hide the cell (#| hide) or save the figure in nbs/images and show it in markdown')
        cells.append(c)
    nb['cells'] = cells
    nb['metadata'].setdefault('language_info', {'name': 'python'})                 # ```python fences
    cfg = Config()
    cfg.TagRemovePreprocessor.update(enabled=True, remove_input_tags={'remove_input'},
                                     remove_all_outputs_tags={'remove_output'})
    body, _ = MarkdownExporter(config=cfg).from_notebook_node(nbformat.reads(json.dumps(nb), as_version=4))
    body = re.sub(r'\n{3,}', '\n\n', rebase(body, s['nbs_path']))
    return HEADER + '\n\n' + body.strip('\n') + '\n'


def make():
    "{path: text} for nbs/index.ipynb and README.md as they should be."
    s = settings()
    nbs = ROOT/s['nbs_path']
    paths = sorted(p for p in nbs.glob('*.ipynb') if p.name != 'index.ipynb' and not p.name.startswith(('_', '.')))
    chapters = [chapter(p, s['lib_name']) for p in paths]
    index = fill_tables(read_nb(nbs/'index.ipynb'), chapters, s)
    return {nbs/'index.ipynb': nb_str(index), ROOT/'README.md': render(index, s)}


def short_diff(old, new, name, limit=40):
    d = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f'{name} (now)', f'{name} (made)',
                                  lineterm='', n=1))
    return '\n'.join(d[:limit] + ([f'... {len(d) - limit} more diff lines'] if len(d) > limit else []))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--check', action='store_true', help='exit 1, with a short diff, when README.md or the chapter '
                                                        'tables of nbs/index.ipynb are not what the script makes')
    args = p.parse_args(argv)
    try: made = make()
    except Fail as e: print(f'make_readme.py: {e}', file=sys.stderr); return 1
    stale = {path: text for path, text in made.items()
             if not path.exists() or path.read_text(encoding='utf-8') != text}
    if args.check:
        for path, text in stale.items():
            old = path.read_text(encoding='utf-8') if path.exists() else ''
            print(short_diff(old, text, str(path.relative_to(ROOT))))
        if stale:
            names = ' and '.join('README.md' if p.name == 'README.md' else 'the chapter tables of nbs/index.ipynb'
                                 for p in stale)
            print(f'make_readme.py: {names} out of date: run python .ci/make_readme.py (edit nbs/index.ipynb and '
                  f'the chapters, never README.md)', file=sys.stderr)
            return 1
        print('README.md and the chapter tables of nbs/index.ipynb are up to date')
        return 0
    for path, text in stale.items():
        path.write_text(text, encoding='utf-8'); print(f'wrote {path.relative_to(ROOT)}')
    if not stale: print('README.md and nbs/index.ipynb already up to date')
    return 0


if __name__ == '__main__': sys.exit(main())
