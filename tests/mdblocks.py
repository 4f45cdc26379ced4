"""The code blocks of a Markdown page, and running them as printed.

Shared by tests/test_recipes.py (docs/recipes.md, one namespace per `## `
section) and tests/test_docs_pages.py (README.md, the docs pages and the
example READMEs: one namespace per page, in a fresh interpreter).

A block's *note* is the HTML comment on the last non-blank line before its
fence (`<!-- ... -->`), or "".  The only note that keeps a block from being
run or compiled is `<!-- not run: REASON -->`, and REASON must say why.

    python tests/mdblocks.py PAGE

runs every ```python block and ```pycon session of PAGE in order, in one
namespace, in this interpreter (pycon sessions are doctests: printed results
and exception messages must match), and prints what it ran.
"""

import doctest
import pathlib
import re
import sys
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOT_RUN = re.compile(r"<!-- not run: (.*?) ?-->")

# Where README.md and the pages link to files of this repository (absolute, so
# that a package index renders them): mapped back to the checkout by repo_links().
REPO_URL = "https://github.com/membuf/membuf"
REPO_FILE = re.compile(re.escape(REPO_URL) + r"/(?:blob|tree)/main/([^)#\s]*)")


@dataclass
class Block:
    section: str
    lang: str
    code: str
    line: int  # line of the first code line in the page (1-based)
    note: str  # the HTML comment right above the fence, or ""

    def not_run_reason(self):
        """The reason of a `<!-- not run: ... -->` note; None if it has none."""
        match = NOT_RUN.fullmatch(self.note)
        return match.group(1).strip() if match else None


def parse(path):
    """Every fenced block of the page, with its `## ` section and its note.
    Fences of MyST directives (```{c:function} ...) are not code blocks."""
    path = pathlib.Path(path)
    blocks, section, note = [], "", ""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("```"):
            fence = re.match(r"`{3,}", line).group(0)
            lang, start = line[len(fence):].strip(), i + 1
            end = start
            while end < len(lines) and lines[end] != fence:
                end += 1
            assert end < len(lines), f"{path.name}:{i + 1}: the code block never closes"
            if not lang.startswith("{"):
                code = "\n".join(lines[start:end]) + "\n"
                blocks.append(Block(section, lang, code, start + 1, note))
            i, note = end + 1, ""
            continue
        if line.strip():
            note = line.strip() if line.startswith("<!--") else ""
        i += 1
    return blocks


def run_blocks(path, blocks, ns):
    """Run python blocks and pycon sessions in ns, in order; return the
    number of checked `>>>` examples.  Tracebacks name the page's lines."""
    examples = 0
    for block in blocks:
        if block.lang == "python":
            padded = "\n" * (block.line - 1) + block.code
            exec(compile(padded, str(path), "exec"), ns)
            continue
        assert block.lang == "pycon", block
        test = doctest.DocTestParser().get_doctest(
            block.code, ns, f"{path.name}:{block.line}", str(path), block.line - 1
        )
        test.globs = ns  # DocTest copies globs; the page (or section) shares one namespace
        report = []
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        result = runner.run(test, out=report.append, clear_globs=False)
        assert result.failed == 0, "".join(report)
        examples += result.attempted
    return examples


def runnable(blocks):
    return [b for b in blocks if b.lang in ("python", "pycon") and b.not_run_reason() is None]


def repo_links(text):
    """Repository paths that the text links to with absolute URLs."""
    return [m.group(1).rstrip("/") for m in REPO_FILE.finditer(text)]


def main(argv):
    (page,) = argv
    path = pathlib.Path(page).resolve()
    blocks = runnable(parse(path))
    ns = {"__name__": "__main__"}
    examples = run_blocks(path, blocks, ns)
    print(f"{path.name}: ran {len(blocks)} blocks, {examples} checked examples")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
