"""docs/recipes.md is tested as written (tests/mdblocks.py reads and runs the blocks).

Every ```python and ```pycon block runs, in order, in one namespace per `## `
section (pycon blocks are doctests: printed results and exception messages
must match).  A python block annotated as a build script is built for real.
Every ```cython block is either a verbatim part of a module in tests/cython/
(which test_cython.py compiles strictly and tests) or marked as the "before"
picture.  A block of any other kind, or with an unknown annotation, fails.
"""

import contextlib
import importlib
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import membuf
from mdblocks import parse, repo_links, run_blocks

# Loaded up front when installed, so that tools/refleak.py (which looks for
# release-ABI extensions before each test starts) knows that the sections
# running them are judged on memory blocks, not on refs.  cffi loads its C
# backend only when the first FFI() is made.
for _name in ("numpy", "_cffi_backend"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)

ROOT = pathlib.Path(__file__).parent.parent
DOC = ROOT / "docs" / "recipes.md"
CYTHON_DIR = pathlib.Path(__file__).parent / "cython"

VERBATIM = re.compile(r"<!-- test: verbatim in tests/cython/(\w+\.pyx) -->")
BUILT = "<!-- test: built by tests/test_recipes.py from tests/cython/cy_getbuf.pyx -->"
NOT_COMPILED = '<!-- test: not compiled (the "before" picture) -->'


BLOCKS = parse(DOC)
RUNNABLE = [b for b in BLOCKS if b.lang in ("python", "pycon") and b.note != BUILT]
SECTIONS = list(dict.fromkeys(b.section for b in RUNNABLE))


def run_section(section):
    """Run the section's python and pycon blocks in one namespace; return it."""
    blocks = [b for b in RUNNABLE if b.section == section]
    for module in ("cffi", "numpy"):
        if any(re.search(rf"^import {module}\b", b.code, re.M) for b in blocks):
            pytest.importorskip(module)
    ns = {"__name__": f"recipes_{section}"}
    examples = run_blocks(DOC, blocks, ns)
    return ns, examples


# --------------------------------------------------------------------------
# The document as a whole
# --------------------------------------------------------------------------


def test_every_block_is_tested_or_marked():
    assert BLOCKS, "no code blocks found in docs/recipes.md"
    for block in BLOCKS:
        where = f"recipes.md:{block.line}"
        if block.lang == "cython":
            assert VERBATIM.fullmatch(block.note) or block.note == NOT_COMPILED, where
        elif block.lang in ("python", "pycon"):
            assert block.note in ("", BUILT), f"{where}: unknown annotation {block.note!r}"
        else:
            pytest.fail(f"{where}: a ```{block.lang} block is neither run nor checked")


def test_the_expected_sections_run():
    assert SECTIONS == ["ctypes", "cffi", "Lifetime patterns", "NumPy"]


def test_cython_blocks_are_verbatim_parts_of_the_tested_modules():
    checked = 0
    for block in BLOCKS:
        match = VERBATIM.fullmatch(block.note)
        if match:
            source = (CYTHON_DIR / match.group(1)).read_text()
            assert block.code in source, f"recipes.md:{block.line} differs from {match.group(1)}"
            checked += 1
    assert checked == 2


def test_links_to_repository_files_exist():
    links = repo_links(DOC.read_text())
    assert "examples/sqlite_blobs" in links and "tests/cython/blobsource.c" in links
    for link in links:
        assert (ROOT / link).exists(), link
    for page in re.findall(r"\]\(([\w-]+\.md)[#)]", DOC.read_text()):
        assert (DOC.parent / page).exists(), page


# --------------------------------------------------------------------------
# The sections, run as printed
# --------------------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
def test_section_runs_as_printed(section):
    ns, examples = run_section(section)
    assert examples >= 4, f"{section}: only {examples} checked examples"


def test_ctypes_recipe_freed_and_kept_its_owner():
    ns, _ = run_section("ctypes")
    assert ns["buf"].released
    doubles = ns["doubles"]
    assert doubles.owner is not None and doubles.address == membuf.address_of(doubles.owner)


def test_lifetime_callbacks_ran_exactly_once_each():
    ns, _ = run_section("Lifetime patterns")
    assert len(ns["frees"]) == 3  # three Buffers, each freed once
    assert ns["buf"].released


def test_numpy_recipe_freed_exactly_once():
    ns, _ = run_section("NumPy")
    assert ns["frees"] == [ns["p"]]
    assert ns["buf"].released and ns["out"].released


# --------------------------------------------------------------------------
# ffi.buffer versus membuf, spelled out
# --------------------------------------------------------------------------


def test_ffi_buffer_ignores_const_and_lifetime_membuf_does_not():
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef("void *malloc(size_t size); void free(void *ptr);")
    libc = ffi.dlopen(None)

    p = libc.malloc(16)
    plain = ffi.buffer(ffi.cast("const char *", p), 16)
    assert memoryview(plain).readonly is False  # writable view of const memory
    libc.free(p)
    assert len(plain) == 16  # still answers after free(); we do not read it

    p = libc.malloc(16)
    frees = []
    buf = membuf.from_address(
        int(ffi.cast("uintptr_t", p)), 16, on_release=lambda: frees.append(libc.free(p))
    )
    view = memoryview(buf)
    assert view.readonly
    with pytest.raises(TypeError, match="cannot modify read-only memory"):
        view[0:1] = b"x"
    with pytest.raises(BufferError, match="underlying memory is read-only"):
        ffi.from_buffer(buf, require_writable=True)  # a writable export is refused
    with pytest.raises(BufferError, match="1 exported buffer; release it first"):
        buf.release()
    assert frees == []
    view.release()
    buf.release()
    assert len(frees) == 1
    with pytest.raises(ValueError, match="operation forbidden on released membuf.Buffer"):
        bytes(buf)
    with pytest.raises(ValueError, match="operation forbidden on released membuf.Buffer"):
        memoryview(buf)


def test_cffi_new_owner_keeps_the_array_alive():
    cffi = pytest.importorskip("cffi")
    import weakref

    ffi = cffi.FFI()
    array = ffi.new("char[]", b"abc")
    alive = weakref.ref(array)
    buf = membuf.from_address(int(ffi.cast("uintptr_t", array)), 4, owner=array)
    del array
    assert alive() is not None and bytes(buf) == b"abc\x00"
    buf.release()
    assert alive() is None


# --------------------------------------------------------------------------
# The setup.py of the Cython recipe builds the recipe module
# --------------------------------------------------------------------------


def build_mylib_and_run(tmp_path, setup_py, check):
    """Build mylib.pyx (already in tmp_path) with the page's setup.py and
    tests/cython/blobsource.{c,h}, then run `check` there; its stdout."""
    (tmp_path / "setup.py").write_text(setup_py)
    for name in ("blobsource.c", "blobsource.h"):
        shutil.copy(CYTHON_DIR / name, tmp_path / name)
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_cython_setup_py_recipe_builds(tmp_path):
    # `python setup.py build_ext --inplace`, then use the module, as a user
    # would; in subprocesses, so that each run builds and loads a fresh module.
    pytest.importorskip("Cython")
    (script,) = [b for b in BLOCKS if b.note == BUILT]
    shutil.copy(CYTHON_DIR / "cy_getbuf.pyx", tmp_path / "mylib.pyx")
    out = build_mylib_and_run(tmp_path, script.code, (
        "import mylib\n"
        "buf = mylib.getbuf(5)\n"
        "print(memoryview(buf).tobytes(), buf.address == mylib.last_address(), mylib.freed())\n"
        "del buf\n"
        "print(mylib.freed())\n"
    ))
    assert out == "b'\\x00\\x01\\x02\\x03\\x04' True 0\n1\n"


def test_the_three_line_answer_builds_from_what_the_page_shows(tmp_path):
    # The page says: the block is mylib.pyx, the library is
    # tests/cython/blobsource.{c,h}, and the setup.py block builds it.
    pytest.importorskip("Cython")
    (recipe,) = [b for b in BLOCKS if b.note == "<!-- test: verbatim in tests/cython/cy_getbuf.pyx -->"]
    (script,) = [b for b in BLOCKS if b.note == BUILT]
    (tmp_path / "mylib.pyx").write_text(recipe.code)
    out = build_mylib_and_run(tmp_path, script.code, (
        "import membuf, mylib\n"
        "buf = mylib.getbuf(5)\n"
        "print(type(buf) is membuf.Buffer, buf.readonly, memoryview(buf).tobytes())\n"
        "buf.release()\n"
        "print(buf.released)\n"
    ))
    assert out == "True True b'\\x00\\x01\\x02\\x03\\x04'\nTrue\n"
