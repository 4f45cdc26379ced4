"""Every code block of README.md, of the docs pages and of the example
READMEs is run or compiled as printed (docs/recipes.md: tests/test_recipes.py).

* ```python blocks and ```pycon sessions run in order, in one namespace per
  page, in a fresh interpreter (`python tests/mdblocks.py PAGE`);
* ```c blocks compile with -std=c11 -Wall -Wextra -Werror against the
  installed membuf.h;
* ```sh blocks appear only where CI runs them: README.md's first block
  (.ci/run) and the example READMEs (.ci/examples.sh);
* the only way out is `<!-- not run: REASON -->` right above the block.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys
import sysconfig

import pytest

import membuf
from mdblocks import NOT_RUN, REPO_URL, parse, repo_links, runnable

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS_URL = "https://membuf.github.io/membuf/"
README = ROOT / "README.md"
EXAMPLE_READMES = sorted((ROOT / "examples").glob("*/README.md"))
DOC_PAGES = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "recipes.md")
PAGES = [README, *DOC_PAGES, *EXAMPLE_READMES]

pytestmark = pytest.mark.skipif(not README.exists(), reason="needs a source checkout (README.md)")


def page_id(path):
    return str(path.relative_to(ROOT))


def all_blocks():
    return [(page, block) for page in PAGES for block in parse(page)]


C_BLOCKS = [(p, b) for p, b in all_blocks() if b.lang == "c" and b.not_run_reason() is None]


def test_the_pages_are_found():
    names = {page_id(p) for p in PAGES}
    assert {"README.md", "docs/getting-started.md", "docs/c-api.md", "docs/interop.md",
            "examples/c_extension/README.md", "examples/sqlite_blobs/README.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_block_is_run_or_marked(page):
    for block in parse(page):
        where = f"{page_id(page)}:{block.line}"
        if block.note:
            match = NOT_RUN.fullmatch(block.note)
            assert match, f"{where}: the only note a block may carry is <!-- not run: REASON -->"
            assert len(match.group(1).strip()) >= 10, f"{where}: a not-run note needs a reason"
            continue
        if block.lang in ("python", "pycon", "c", "", "text"):
            continue
        if block.lang == "sh":
            ci_runs = page in EXAMPLE_READMES or (page == README and block.line == parse(page)[0].line)
            assert ci_runs, f"{where}: nothing runs this sh block (mark it <!-- not run: ... -->)"
            continue
        pytest.fail(f"{where}: a ```{block.lang} block is neither run nor compiled")


# --------------------------------------------------------------------------
# python and pycon: one fresh interpreter per page
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_modules(tmp_path_factory):
    """The example extensions a README imports, built as the tests build them."""
    from test_sqlite_example import build_sqlite_blobs

    build = tmp_path_factory.mktemp("example_modules")
    build_sqlite_blobs(build)
    return build


RUN_PAGES = [p for p in PAGES if runnable(parse(p))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=page_id)
def test_page_runs_as_printed(page, tmp_path, request):
    env = dict(os.environ)
    if page.parent.name == "sqlite_blobs":
        extra = str(request.getfixturevalue("example_modules"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra, env.get("PYTHONPATH")]))
    if any(re.search(r"^(>>> )?import numpy", b.code, re.M) for b in runnable(parse(page))):
        pytest.importorskip("numpy", reason=f"{page_id(page)} uses NumPy")
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "mdblocks.py"), str(page)],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = int(re.search(r"ran (\d+) blocks", result.stdout).group(1))
    assert ran == len(runnable(parse(page))) > 0, result.stdout


def test_readme_and_docs_pages_that_must_run_do():
    names = {page_id(p) for p in RUN_PAGES}
    assert {"README.md", "docs/getting-started.md", "docs/interop.md",
            "examples/sqlite_blobs/README.md"} <= names


# --------------------------------------------------------------------------
# C: compiled strictly
# --------------------------------------------------------------------------


def test_there_are_c_blocks_to_compile():
    assert len(C_BLOCKS) >= 2


@pytest.mark.parametrize("page,block", C_BLOCKS,
                         ids=[f"{page_id(p)}:{b.line}" for p, b in C_BLOCKS])
def test_c_block_compiles(page, block, tmp_path):
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    source = tmp_path / "block.c"
    source.write_text(f'#line {block.line} "{page_id(page)}"\n' + block.code)
    command = [*cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-c", str(source),
               "-o", str(tmp_path / "block.o"), f"-I{membuf.get_include()}",
               f"-I{sysconfig.get_paths()['include']}"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------
# Links: README's are absolute (a package index renders it); map them back
# --------------------------------------------------------------------------


def links(text):
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_readme_links_are_absolute():
    relative = [link for link in links(README.read_text())
                if not link.startswith(("https://", "http://", "#"))]
    assert not relative, relative


@pytest.mark.parametrize("page", [README, *EXAMPLE_READMES, *DOC_PAGES], ids=page_id)
def test_repository_links_point_at_files_that_exist(page):
    for path in repo_links(page.read_text()):
        assert (ROOT / path).exists(), f"{page_id(page)} links to {REPO_URL}/.../{path}"


def test_readme_links_to_repository_files_and_the_docs_site():
    text = README.read_text()
    assert "src/membuf/include/membuf.h" in repo_links(text)
    assert "LICENSE" in repo_links(text)
    pages = re.findall(re.escape(DOCS_URL) + r"([\w-]+)\.html", text)
    assert "c-api" in pages and "lifetime" in pages
    for name in pages:
        assert (ROOT / "docs" / f"{name}.md").exists(), f"README links to {DOCS_URL}{name}.html"
