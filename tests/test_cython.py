"""membuf's Cython declarations (src/membuf/__init__.pxd), used by Cython
modules compiled here the way a downstream user compiles them: Cython 3 with
its extra warnings (cython -Wextra) and every warning shown, where any warning
about the modules or the .pxd fails the build; then the C compiler with
-Wall -Wextra -Werror, against the installed membuf.get_include().

tests/cython/: cy_getbuf.pyx is the motivating question (malloc'ed
`const void *` + size_t, wrapped with a free callback), cy_typed.pyx typed
memoryviews both ways, cy_capi.pyx every declaration through `cimport membuf`,
cy_noimport.pyx a module that has not called import_membuf() yet.
blobsource.c is the C library they call; it counts what it hands out and gets
back.
"""

import contextlib
import gc
import importlib.util
import io
import pathlib
import re
import subprocess
import sys
import sysconfig
import weakref

import pytest

import membuf
from conftest import STRICT_FLAGS

Cython = pytest.importorskip("Cython")

CYTHON_DIR = pathlib.Path(__file__).parent / "cython"
MODULES = ["cy_getbuf", "cy_capi", "cy_typed", "cy_noimport"]

# Cython's own utility code (the memoryview support: "View.MemoryView",
# "TestClass") warns about itself when every warning is shown, depending on
# the Cython version; its locations are bare (dotted) names, not files.  Our
# .pyx files and membuf's .pxd are reported by path and always count.
CYTHON_INTERNAL = re.compile(
    r"^(warning|performance hint): (?![^:]*\.(pyx|pxd|pxi):)[A-Za-z_][\w.]*:\d+:\d+: "
)


def cythonize_strict(extensions, build_dir):
    """cythonize with `cython -Wextra` and all warnings shown; fail on any
    warning or performance hint about our .pyx files or membuf's .pxd."""
    from Cython.Build import cythonize
    from Cython.Compiler import Options

    directives = {"language_level": 3, **Options.extra_warnings}
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        # The test modules share no mutable state of their own: they may run
        # without the GIL (Cython 3.1+), as membuf itself does.
        directives["freethreading_compatible"] = True
    output = io.StringIO()
    with contextlib.redirect_stderr(output):
        result = cythonize(
            extensions,
            build_dir=str(build_dir),
            compiler_directives=directives,
            show_all_warnings=True,
            quiet=True,
            force=True,
        )
    complaints = [
        line
        for line in output.getvalue().splitlines()
        if line.strip() and not CYTHON_INTERNAL.match(line)
    ]
    assert not complaints, "Cython warned:\n" + "\n".join(complaints)
    return result


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


@pytest.fixture(scope="session")
def cy(tmp_path_factory):
    """The four modules, compiled once per session from any working directory."""
    from setuptools import Distribution, Extension

    build_dir = tmp_path_factory.mktemp("cython")
    extensions = [
        Extension(
            name,
            [str(CYTHON_DIR / f"{name}.pyx"), str(CYTHON_DIR / "blobsource.c")],
            include_dirs=[membuf.get_include(), str(CYTHON_DIR)],
            extra_compile_args=STRICT_FLAGS,
        )
        for name in MODULES
    ]
    extensions = cythonize_strict(extensions, build_dir / "c")
    dist = Distribution({"name": "membuf_cython_tests", "ext_modules": extensions})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = str(build_dir)
    cmd.build_temp = str(build_dir / "tmp")
    cmd.ensure_finalized()
    cmd.run()

    class Modules:
        pass

    mods = Modules()
    mods.build_dir = build_dir
    for name in MODULES[:-1]:  # cy_noimport runs in a fresh interpreter
        (path,) = build_dir.glob(f"{name}*.so")
        setattr(mods, name.removeprefix("cy_"), load(name, path))
    return mods


# --------------------------------------------------------------------------
# The build is strict
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def planted_warning(tmp_path_factory):
    """What cythonize_strict says about a module with an unused variable
    (once per session: Cython keeps per-file caches)."""
    tmp = tmp_path_factory.mktemp("cython-canary")
    source = tmp / "warns.pyx"
    source.write_text("def f():\n    cdef int never_used\n    return 1\n")
    try:
        cythonize_strict([str(source)], tmp / "c")
    except AssertionError as exc:
        return str(exc)
    return None


def test_strict_build_fails_on_a_cython_warning(planted_warning):
    assert planted_warning is not None
    assert re.search(r"warns\.pyx:2:\d+: Unused entry 'never_used'", planted_warning)


def test_the_pxd_is_installed_next_to_the_package():
    pxd = pathlib.Path(membuf.__file__).with_name("__init__.pxd")
    assert pxd.is_file()
    assert 'cdef extern from "membuf.h"' in pxd.read_text()


# --------------------------------------------------------------------------
# The motivating question: const void * + size_t from malloc, freed once
# --------------------------------------------------------------------------


def test_getbuf_is_zero_copy_and_frees_exactly_once(cy):
    handed_out, freed = cy.getbuf.handed_out(), cy.getbuf.freed()
    buf = cy.getbuf.getbuf(300)
    assert cy.getbuf.handed_out() == handed_out + 1
    assert buf.address == cy.getbuf.last_address()
    assert membuf.address_of(memoryview(buf)) == buf.address
    assert memoryview(buf).tobytes() == bytes(i % 256 for i in range(300))
    assert buf.readonly
    assert cy.getbuf.freed() == freed
    buf.release()
    assert cy.getbuf.freed() == freed + 1
    buf.release()
    del buf
    gc.collect()
    assert cy.getbuf.freed() == freed + 1


def test_getbuf_frees_when_the_last_reference_goes(cy):
    freed = cy.getbuf.freed()
    buf = cy.getbuf.getbuf(16)
    view = memoryview(buf)
    del buf
    assert cy.getbuf.freed() == freed  # the view keeps the Buffer
    assert view[15] == 15
    view.release()
    assert cy.getbuf.freed() == freed + 1


def test_getbuf_of_nothing_is_an_empty_buffer(cy):
    freed = cy.getbuf.freed()
    buf = cy.getbuf.getbuf(0)
    assert buf.nbytes == 0
    assert memoryview(buf).tobytes() == b""
    del buf
    assert cy.getbuf.freed() == freed + 1


def test_a_read_only_buffer_refuses_a_writable_memoryview(cy):
    buf = cy.getbuf.getbuf(4)
    with pytest.raises(BufferError, match="read-only"):
        cy.typed.zero_first(buf)
    assert bytes(buf) == b"\x00\x01\x02\x03"


# --------------------------------------------------------------------------
# Every declaration, through `cimport membuf`
# --------------------------------------------------------------------------


def test_constants_match_the_installed_membuf(cy):
    assert cy.capi.constants() == {
        "MEMBUF_CAPSULE_NAME": "membuf._membuf._C_API",
        "MEMBUF_ABI_VERSION": membuf.ABI_VERSION,
        "MEMBUF_API_VERSION": membuf.API_VERSION,
        "MEMBUF_TARGET_API_VERSION": membuf.API_VERSION,
        "MEMBUF_WRITABLE": 1,
        "MEMBUF_DEFER": 1,
        "MEMBUF_MAX_NDIM": 64,
    }


def test_cimport_and_import_of_membuf_share_one_name(cy):
    assert cy.capi.buffer_type() is membuf.Buffer


def test_from_memory_writable(cy):
    freed = cy.capi.freed()
    buf = cy.capi.from_memory(8, 1)  # MEMBUF_WRITABLE
    assert buf.address == cy.capi.last_address()
    assert not buf.readonly
    view = memoryview(buf)
    view[0] = 0xAB
    assert buf[0] == 0xAB
    assert membuf.address_of(view) == buf.address
    view.release()
    buf.release()
    assert cy.capi.freed() == freed + 1


@pytest.mark.parametrize(
    ("call", "exc", "message"),
    [
        (lambda c: c.from_memory(8, 0x8), ValueError, r"unknown creation flags 0x8"),
        (lambda c: c.from_null(3), ValueError, r"ptr is NULL but len is 3"),
        (lambda c: c.from_spec("d", [3, 4], size=8), ValueError, r"covers 96 bytes, but len is 8"),
        (lambda c: c.from_spec("Zz", [2], size=2), ValueError, r"invalid format 'Zz'"),
        (lambda c: c.from_spec("B", [1] * 65), ValueError, r"ndim"),
        (lambda c: c.from_spec("B", None, ndim=2, size=4), ValueError, r"shape"),
        (lambda c: c.from_spec("B", [-1], size=4), ValueError, r"negative"),
        (
            lambda c: c.from_spec("B", [4], strides=[2], size=4),
            ValueError,
            r"reaches outside the 4 bytes",
        ),
    ],
    ids=["flags", "null", "layout", "format", "ndim", "shape-null", "negative", "strides"],
)
def test_constructor_errors_propagate_after_the_callback_ran(cy, call, exc, message):
    callbacks, freed = cy.capi.callback_count(), cy.capi.freed()
    with pytest.raises(exc, match=message):
        call(cy.capi)
    assert cy.capi.callback_count() == callbacks + 1  # ownership passed on entry
    null = message.startswith("ptr is NULL")
    assert cy.capi.freed() == freed + (0 if null else 1)  # blobsource ignores NULL


def test_from_null_with_zero_length_is_an_empty_buffer(cy):
    callbacks = cy.capi.callback_count()
    buf = cy.capi.from_null(0)
    assert buf.nbytes == 0
    buf.release()
    assert cy.capi.callback_count() == callbacks + 1


def test_from_spec_typed_with_strides_and_owner(cy):
    class Owner:
        pass

    owner = Owner()
    alive = weakref.ref(owner)
    freed = cy.capi.freed()
    # 2 x 3 int32 in Fortran order: strides (4, 8) over 24 bytes
    buf = cy.capi.from_spec("i", [2, 3], strides=[4, 8], flags=1, owner=owner)
    del owner
    assert alive() is not None and buf.owner is alive()
    assert buf.address == cy.capi.last_address()
    assert (buf.format, buf.shape, buf.strides, buf.nbytes) == ("i", (2, 3), (4, 8), 24)
    assert buf.f_contiguous and not buf.c_contiguous
    view = memoryview(buf)
    view[1, 2] = 7
    assert membuf.address_of(view) == buf.address
    assert int.from_bytes(bytes(buf)[20:24], sys.byteorder) == 7  # offset 1*4 + 2*8
    view.release()
    buf.release()
    assert cy.capi.freed() == freed + 1
    assert alive() is None  # the owner is dropped right after the callback


def test_from_spec_null_format_means_bytes(cy):
    buf = cy.capi.from_spec(None, [5])
    assert (buf.format, buf.shape, buf.itemsize) == ("B", (5,), 1)
    assert bytes(buf) == b"\x00\x01\x02\x03\x04"


def test_check(cy):
    buf = cy.capi.from_memory(4)
    assert cy.capi.check(buf) is True
    assert cy.capi.check(buf[1:]) is True
    assert cy.capi.check(membuf.from_address(0, 0)) is True
    for other in (b"abcd", bytearray(4), memoryview(buf), None, 3):
        assert cy.capi.check(other) is False


def test_release_strict_refuses_while_a_view_lives(cy):
    freed = cy.capi.freed()
    buf = cy.capi.from_memory(4)
    view = memoryview(buf)
    with pytest.raises(BufferError, match="1 exported buffer; release it first"):
        cy.capi.release(buf)
    assert not buf.released and cy.capi.freed() == freed
    view.release()
    assert cy.capi.release(buf) == 0
    assert buf.released and cy.capi.freed() == freed + 1
    assert cy.capi.release(buf) == 0  # releasing twice is a no-op
    assert cy.capi.freed() == freed + 1
    with pytest.raises(ValueError, match="released membuf.Buffer"):
        memoryview(buf)


def test_release_defer_waits_for_the_last_view(cy):
    freed = cy.capi.freed()
    buf = cy.capi.from_memory(4)
    view = memoryview(buf)
    assert cy.capi.release_defer(buf) == 0
    assert not buf.released and cy.capi.freed() == freed
    with pytest.raises(ValueError, match="pending release"):
        memoryview(buf)
    view.release()
    assert buf.released and cy.capi.freed() == freed + 1


def test_release_errors(cy):
    buf = cy.capi.from_memory(4)
    with pytest.raises(ValueError, match=r"unknown flags 0x4 \(known: MEMBUF_DEFER\)"):
        cy.capi.release(buf, 4)
    with pytest.raises(TypeError, match="expected a membuf.Buffer, not int"):
        cy.capi.release(3)
    assert not buf.released


def test_a_callback_holding_a_python_reference_through_ctx(cy):
    data = bytes(bytearray(b"kept alive by ctx"))  # not a constant: constants may be immortal
    refs = sys.getrefcount(data)
    buf = cy.capi.wrap_bytes(data)
    assert sys.getrefcount(data) == refs + 1
    assert buf.address == membuf.address_of(data)
    assert buf == data
    del buf
    assert sys.getrefcount(data) == refs
    with pytest.raises(ValueError, match="unknown creation flags 0x8"):
        cy.capi.wrap_bytes(data, 0x8)
    assert sys.getrefcount(data) == refs  # the failed call ran the callback


# --------------------------------------------------------------------------
# Typed memoryviews
# --------------------------------------------------------------------------


def test_const_unsigned_char_view_of_a_read_only_buffer(cy):
    buf = cy.capi.from_memory(200)
    assert buf.readonly
    assert cy.typed.checksum(buf) == sum(range(200))
    assert cy.typed.first_address(buf) == buf.address
    assert cy.typed.first_address(buf[10:]) == buf.address + 10
    assert cy.typed.checksum(b"\x01\x02") == 3  # any bytes-like object


def test_writable_double_matrix(cy):
    m = cy.typed.zeros(3, 4)
    assert (m.format, m.shape, m.strides, m.readonly) == ("d", (3, 4), (32, 8), False)
    assert cy.typed.total(m) == 0.0
    cy.typed.fill(m)
    assert cy.typed.matrix_address(m) == m.address
    assert memoryview(m).tolist() == [[i * 1000.0 + j for j in range(4)] for i in range(3)]
    assert cy.typed.total(m) == sum(i * 1000.0 + j for i in range(3) for j in range(4))
    m.release()
    with pytest.raises(ValueError, match="released membuf.Buffer"):
        cy.typed.fill(m)


def test_empty_matrix(cy):
    m = cy.typed.zeros(0, 5)
    assert (m.shape, m.nbytes) == ((0, 5), 0)
    cy.typed.fill(m)
    assert cy.typed.total(m) == 0.0


def test_writable_view_of_a_read_only_matrix_is_refused(cy):
    m = cy.capi.from_spec("d", [2, 2])
    with pytest.raises(BufferError, match="read-only"):
        cy.typed.fill(m)
    assert cy.typed.total(m) == cy.typed.total(memoryview(m))  # const views are fine


def test_wrong_item_type_is_refused(cy):
    doubles = cy.capi.from_spec("d", [4])
    with pytest.raises(ValueError, match="Buffer dtype mismatch, expected 'const unsigned char'"):
        cy.typed.checksum(doubles)
    with pytest.raises(ValueError, match=r"wrong number of dimensions \(expected 1, got 2\)"):
        cy.typed.checksum(cy.typed.zeros(2, 2))


# --------------------------------------------------------------------------
# import_membuf
# --------------------------------------------------------------------------


NOIMPORT_SCRIPT = """
import importlib.util, sys
import membuf

spec = importlib.util.spec_from_file_location("cy_noimport", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
try:
    mod.wrap()
except RuntimeError as exc:
    print("RuntimeError:", exc, "| callbacks", mod.callback_count())
api = sys.modules["membuf._membuf"]._C_API
del sys.modules["membuf._membuf"]._C_API
try:
    mod.do_import()
except ImportError as exc:
    print("ImportError:", exc, "| cause", type(exc.__cause__).__name__)
sys.modules["membuf._membuf"]._C_API = api
print("import:", mod.do_import())
buf = mod.wrap()
print("nbytes", buf.nbytes, "readonly", buf.readonly)
del buf
print("callbacks", mod.callback_count())
"""


def test_import_membuf(cy):
    # A fresh interpreter: a module imports the API once per process.
    (path,) = cy.build_dir.glob("cy_noimport*.so")
    run = subprocess.run(
        [sys.executable, "-c", NOIMPORT_SCRIPT, str(path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        # before import_membuf(): RuntimeError, and the callback has run
        "RuntimeError: membuf C API used before import_membuf() was called in this module"
        " | callbacks 1",
        # a broken membuf: ImportError naming the capsule, the cause attached
        "ImportError: could not import the membuf C API membuf._membuf._C_API:"
        " module 'membuf._membuf' has no attribute '_C_API' | cause AttributeError",
        "import: 0",
        "nbytes 16 readonly True",
        "callbacks 2",
    ]


def test_numpy_reads_a_typed_buffer_with_its_format_and_shape(cy):
    np = pytest.importorskip("numpy")
    m = cy.typed.zeros(3, 4)
    cy.typed.fill(m)
    arr = np.asarray(m)
    assert (arr.shape, arr.dtype, arr.flags.writeable) == ((3, 4), np.float64, True)
    assert arr.ctypes.data == m.address
    arr[2, 3] = -1.0
    assert memoryview(m)[2, 3] == -1.0
    with pytest.raises(BufferError, match="1 exported buffer"):
        m.release()
    del arr
    m.release()
    assert m.released
