"""The Python face of membuf: from_address() over ctypes memory, the Buffer
type's attributes, repr, sequence behaviour, comparisons, and the package
around it (get_include, python -m membuf, version, typing stubs)."""

import array
import ast
import ctypes
import gc
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import weakref

import pytest

import membuf
from conftest import libc

MAX_POINTER = 2 ** (8 * ctypes.sizeof(ctypes.c_void_p)) - 1

# No byte value repeats in a way that matters, and some values are absent
# (so `in` has both answers).
DATA = bytes((i * 7 + 3) % 256 for i in range(100))
ABSENT = next(v for v in range(256) if v not in DATA)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


LIBC = libc()


class Recorder:
    """A release callback counting its calls and the arguments it got."""

    def __init__(self, exc=None):
        self.calls = []
        self.exc = exc

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.exc is not None:
            raise self.exc

    @property
    def count(self):
        return len(self.calls)


def block(data=DATA):
    """ctypes memory holding data: (the ctypes object, its address)."""
    cbuf = ctypes.create_string_buffer(data, len(data))
    return cbuf, ctypes.addressof(cbuf)


def wrap(data=DATA, **kwargs):
    """A Buffer over a fresh ctypes copy of data, the ctypes object as owner."""
    cbuf, address = block(data)
    return membuf.from_address(address, len(data), owner=cbuf, **kwargs), cbuf, address


@pytest.fixture
def unraisable(monkeypatch):
    """Everything sent to sys.unraisablehook during the test, as
    (exc_type, str(exc_value), object, err_msg)."""
    seen = []

    def hook(args):
        seen.append((args.exc_type, str(args.exc_value), args.object, args.err_msg))

    monkeypatch.setattr(sys, "unraisablehook", hook)
    return seen


def raw_bytes(n):
    """What fakelib puts in a block of n bytes."""
    return bytes(i % 251 for i in range(n))


# ---------------------------------------------------------------------------
# from_address: zero-copy and the release callback
# ---------------------------------------------------------------------------


def test_from_address_is_zero_copy():
    cbuf, address = block()
    buf = membuf.from_address(address, len(DATA), owner=cbuf)
    assert isinstance(buf, membuf.Buffer)
    assert buf.address == address
    assert buf.nbytes == len(DATA)
    assert membuf.address_of(buf) == address
    view = memoryview(buf)
    assert membuf.address_of(view) == address
    assert view.obj is buf
    assert view.tobytes() == DATA
    # a change of the foreign memory is seen through the Buffer: no copy
    ctypes.memset(address, 0xAB, 3)
    assert buf[0] == 0xAB and buf[2] == 0xAB
    assert view[1] == 0xAB
    assert bytes(buf[:4]) == b"\xab\xab\xab" + DATA[3:4]
    view.release()


def test_from_address_accepts_keywords_and_index_objects():
    cbuf, address = block()

    class Index:
        def __init__(self, value):
            self.value = value

        def __index__(self):
            return self.value

    buf = membuf.from_address(address=Index(address), size=Index(len(DATA)), owner=cbuf)
    assert buf.address == address and buf.nbytes == len(DATA)
    assert bytes(buf) == DATA


def test_from_address_over_malloc_with_free_on_release():
    size = 4096
    address = LIBC.malloc(size)
    assert address
    ctypes.memset(address, 0x5A, size)
    freed = []

    def on_release(*args):
        freed.append(args)
        LIBC.free(address)

    buf = membuf.from_address(address, size, on_release=on_release)
    assert buf.address == address
    assert bytes(buf) == b"\x5a" * size
    assert freed == []
    buf.release()
    assert freed == [()]  # called exactly once, with no arguments
    buf.release()
    del buf
    gc.collect()
    assert freed == [()]


def test_on_release_called_once_at_release():
    cb = Recorder()
    buf, _, _ = wrap(on_release=cb)
    assert cb.count == 0
    assert buf.release() is None
    assert cb.calls == [((), {})]
    assert buf.release() is None  # no-op
    assert buf.release(defer=True) is None
    assert cb.count == 1
    del buf
    assert cb.count == 1


def test_on_release_called_once_at_with_exit():
    cb = Recorder()
    buf, _, _ = wrap(on_release=cb)
    with buf as entered:
        assert entered is buf
        assert cb.count == 0
        assert entered[0] == DATA[0]
    assert buf.released
    assert cb.calls == [((), {})]
    del buf, entered
    assert cb.count == 1


def test_on_release_called_once_at_with_exit_by_exception():
    cb = Recorder()
    buf, _, _ = wrap(on_release=cb)
    with pytest.raises(KeyError):
        with buf:
            raise KeyError("inside")
    assert buf.released
    assert cb.count == 1


def test_on_release_called_once_at_dealloc():
    cb = Recorder()
    buf, _, _ = wrap(on_release=cb)
    assert cb.count == 0
    del buf
    gc.collect()  # the Buffer is GC-tracked (it holds a Python callable)
    assert cb.calls == [((), {})]


def test_on_release_none_means_no_callback():
    buf, cbuf, address = wrap(on_release=None)
    assert buf.owner is cbuf
    buf.release()
    assert buf.released and buf.owner is None


def test_exception_from_on_release_propagates_from_release():
    cb = Recorder(exc=RuntimeError("boom from on_release"))
    buf, cbuf, _ = wrap(on_release=cb)
    owner_ref = weakref.ref(cbuf)
    del cbuf
    with pytest.raises(RuntimeError, match="boom from on_release"):
        buf.release()
    assert buf.released is True
    assert cb.count == 1
    assert buf.owner is None
    assert owner_ref() is None  # the owner is dropped all the same
    buf.release()  # second release: a no-op, no second call, no exception
    assert cb.count == 1
    with pytest.raises(ValueError, match="released"):
        memoryview(buf)


def test_exception_from_on_release_propagates_from_with_exit():
    cb = Recorder(exc=RuntimeError("boom at exit"))
    buf, _, _ = wrap(on_release=cb)
    with pytest.raises(RuntimeError, match="boom at exit"):
        with buf:
            pass
    assert buf.released
    assert cb.count == 1
    buf.release()
    assert cb.count == 1


def test_exception_from_on_release_at_dealloc_goes_to_unraisablehook(unraisable):
    cb = Recorder(exc=RuntimeError("boom at dealloc"))
    buf, _, _ = wrap(on_release=cb)
    del buf
    gc.collect()
    assert cb.count == 1
    assert len(unraisable) == 1
    exc_type, message, obj, _ = unraisable[0]
    assert exc_type is RuntimeError
    assert message == "boom at dealloc"
    assert obj is cb


def test_exception_from_on_release_at_dealloc_with_test_support():
    from test.support import catch_unraisable_exception

    cb = Recorder(exc=ZeroDivisionError("at dealloc"))
    buf, _, _ = wrap(on_release=cb)
    with catch_unraisable_exception() as caught:
        del buf
        gc.collect()
        assert caught.unraisable is not None
        assert caught.unraisable.exc_type is ZeroDivisionError
        assert caught.unraisable.object is cb
    assert cb.count == 1


@pytest.mark.parametrize("raising", [False, True])
def test_dealloc_while_an_exception_propagates(unraisable, raising):
    """A Buffer freed while an exception is set (stack unwinding) runs its
    callback and leaves the propagating exception intact."""
    cb = Recorder(exc=RuntimeError("callback error") if raising else None)

    def fail():
        # the Buffer sits on the evaluation stack when 1 / 0 raises
        return [wrap(on_release=cb)[0], 1 / 0]

    with pytest.raises(ZeroDivisionError):
        fail()
    assert cb.count == 1
    if raising:
        assert len(unraisable) == 1
        assert unraisable[0][0] is RuntimeError and unraisable[0][2] is cb
    else:
        assert unraisable == []


# ---------------------------------------------------------------------------
# from_address: bad arguments
# ---------------------------------------------------------------------------

NOT_AN_ADDRESS = (r"^address must be an int, a ctypes pointer, array or object, or a cffi "
                  r"pointer or array")

BAD_VALUES = [
    # (address, size, exception, message)
    (1.0, 5, TypeError, NOT_AN_ADDRESS + r", not float$"),
    ("1", 5, TypeError, NOT_AN_ADDRESS + r", not str$"),
    (None, 0, TypeError, NOT_AN_ADDRESS + r", not NoneType$"),
    (True, 0, TypeError, r"^address must be an int, not bool$"),
    (1, False, TypeError, r"^size must be an int, not bool$"),
    (1, 5.0, TypeError, r"^size must be an int, not float$"),
    (1, b"5", TypeError, r"^size must be an int, not bytes$"),
    (-1, 5, ValueError, r"^address must not be negative$"),
    (-(2**100), 5, ValueError, r"^address must not be negative$"),
    (1, -1, ValueError, r"^size must not be negative$"),
    (1, -(2**100), ValueError, r"^size must not be negative$"),
    (MAX_POINTER + 1, 0, OverflowError, r"^address is too large"),
    (2**200, 0, OverflowError, r"^address is too large"),
    (1, sys.maxsize + 1, OverflowError, r"^size is too large"),
    (1, 2**200, OverflowError, r"^size is too large"),
    (MAX_POINTER, 1, OverflowError, r"^address \+ size overflows the address space$"),
    (MAX_POINTER - 9, 10, OverflowError, r"^address \+ size overflows the address space$"),
    (0, 5, ValueError, r"^address is 0 \(NULL\) but size is 5$"),
    (0, 1, ValueError, r"^address is 0 \(NULL\) but size is 1$"),
]


@pytest.mark.parametrize("address, size, exc, message", BAD_VALUES)
def test_from_address_bad_values(address, size, exc, message):
    with pytest.raises(exc, match=message):
        membuf.from_address(address, size)


@pytest.mark.parametrize("address, size, exc, message", BAD_VALUES)
def test_from_address_bad_values_call_on_release_once(address, size, exc, message, unraisable):
    cb = Recorder()
    owner = object()
    refs = sys.getrefcount(owner)
    with pytest.raises(exc, match=message):
        membuf.from_address(address, size, owner=owner, on_release=cb)
    assert cb.calls == [((), {})]
    assert sys.getrefcount(owner) == refs  # the owner is untouched
    assert unraisable == []


def test_failing_on_release_during_failed_from_address(unraisable):
    """The argument error propagates; the callback's own error is unraisable."""
    cb = Recorder(exc=RuntimeError("callback failed too"))
    with pytest.raises(ValueError, match=r"^address must not be negative$"):
        membuf.from_address(-1, 5, on_release=cb)
    assert cb.count == 1
    assert len(unraisable) == 1
    assert unraisable[0][0] is RuntimeError
    assert unraisable[0][2] is cb


@pytest.mark.parametrize("bad", [None, 0, 1, "yes", []], ids=repr)
def test_readonly_must_be_a_bool_and_the_error_calls_on_release_once(bad):
    cbuf, address = block()
    cb = Recorder()
    with pytest.raises(TypeError, match=f"^readonly must be True or False, not {type(bad).__name__}$"):
        membuf.from_address(address, len(DATA), readonly=bad, on_release=cb)
    assert cb.count == 1


def test_index_error_calls_on_release_once():
    class Bad:
        def __index__(self):
            raise ArithmeticError("bad index")

    cb = Recorder()
    with pytest.raises(ArithmeticError, match="bad index"):
        membuf.from_address(Bad(), 1, on_release=cb)
    assert cb.count == 1


@pytest.mark.parametrize("on_release", [5, "free", b"", object()])
def test_on_release_not_callable(on_release):
    cbuf, address = block()
    with pytest.raises(TypeError, match=r"^on_release must be callable or None, not "):
        membuf.from_address(address, len(DATA), on_release=on_release)


def test_on_release_not_callable_is_checked_first():
    """Even with bad values, the non-callable on_release is what is reported."""
    with pytest.raises(TypeError, match=r"on_release must be callable or None, not int"):
        membuf.from_address(-1, 5, on_release=42)


def test_address_zero_size_zero_is_empty():
    cb = Recorder()
    buf = membuf.from_address(0, 0, on_release=cb)
    assert buf.nbytes == 0
    assert len(buf) == 0
    assert bytes(buf) == b""
    assert buf.tobytes() == b""
    assert buf.hex() == ""
    assert list(buf) == []
    assert buf == b""
    assert buf.shape == (0,)
    # what the attribute reports is what every export sees
    assert membuf.address_of(buf) == buf.address
    assert membuf.address_of(memoryview(buf)) == buf.address
    with pytest.raises(IndexError):
        buf[0]
    buf.release()
    assert cb.count == 1


def test_nonzero_address_size_zero_is_empty():
    cbuf, address = block()
    buf = membuf.from_address(address, 0, owner=cbuf)
    assert buf.nbytes == 0 and bytes(buf) == b"" and buf.address == address


def test_largest_address_range_is_accepted():
    # [MAX_POINTER - 9, MAX_POINTER - 9 + 9) does not wrap; the memory is
    # never touched here
    buf = membuf.from_address(MAX_POINTER - 9, 9)
    assert buf.address == MAX_POINTER - 9
    assert buf.nbytes == 9
    buf.release()
    buf2 = membuf.from_address(MAX_POINTER, 0)
    assert buf2.nbytes == 0


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((), {}, r"^from_address\(\) missing required argument 'address'$"),
        ((1,), {}, r"^from_address\(\) needs a size, or a shape to derive it from$"),
        ((), {"size": 1}, r"^from_address\(\) missing required argument 'address'$"),
        ((1, 2, True), {},
         r"^from_address\(\) takes from 1 to 2 positional arguments but 3 were given$"),
        ((1, 2), {"address": 1}, r"^from_address\(\) got multiple values for argument 'address'$"),
        ((1, 2), {"size": 2}, r"^from_address\(\) got multiple values for argument 'size'$"),
        ((1, 2), {"bogus": 1}, r"^from_address\(\) got an unexpected keyword argument 'bogus'$"),
        ((1, 2), {"on_relase": None}, r"unexpected keyword argument 'on_relase'$"),
    ],
)
def test_from_address_bad_call(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        membuf.from_address(*args, **kwargs)


# ---------------------------------------------------------------------------
# readonly / writable
# ---------------------------------------------------------------------------


def test_readonly_by_default():
    buf, cbuf, address = wrap()
    assert buf.readonly is True
    view = memoryview(buf)
    assert view.readonly
    with pytest.raises(TypeError, match="cannot modify read-only memory"):
        buf[0] = 1
    with pytest.raises(TypeError, match="cannot modify read-only memory"):
        buf[0:2] = b"xy"
    with pytest.raises(TypeError, match="cannot modify read-only memory"):
        view[0] = 1
    assert cbuf.raw == DATA  # nothing written
    view.release()


@pytest.mark.parametrize("readonly", [False])
def test_writable_buffer_writes_land_in_foreign_memory(readonly):
    buf, cbuf, address = wrap(readonly=readonly)
    assert buf.readonly is False
    view = memoryview(buf)
    assert not view.readonly
    view[0] = 65
    buf[1] = 66
    buf[-1] = 67
    buf[10:13] = b"xyz"
    expected = bytearray(DATA)
    expected[0], expected[1], expected[-1] = 65, 66, 67
    expected[10:13] = b"xyz"
    assert cbuf.raw == bytes(expected)
    assert ctypes.string_at(address, len(DATA)) == bytes(expected)
    assert bytes(buf) == bytes(expected)
    # a writable slice writes through to the same memory
    part = buf[20:30]
    assert part.readonly is False
    part[0] = 0
    assert cbuf.raw[20] == 0
    with pytest.raises(ValueError):
        buf[0] = 256
    with pytest.raises(TypeError):
        buf[0] = b"x"
    view.release()
    del part


def test_readonly_true_is_readonly():
    buf, _, _ = wrap(readonly=True)
    assert buf.readonly is True
    assert memoryview(buf).readonly is True


def test_item_deletion_refused_like_memoryview():
    buf, _, _ = wrap(readonly=False)
    with pytest.raises(TypeError):
        del buf[0]
    with pytest.raises(TypeError):
        del memoryview(bytearray(b"ab"))[0]
    assert bytes(buf) == DATA


# ---------------------------------------------------------------------------
# attributes and repr
# ---------------------------------------------------------------------------


def test_attributes_of_byte_buffer():
    buf, cbuf, address = wrap()
    assert buf.address == address
    assert buf.nbytes == len(DATA)
    assert buf.readonly is True
    assert buf.released is False
    assert buf.exports == 0
    assert buf.format == "B"
    assert buf.itemsize == 1
    assert buf.ndim == 1
    assert buf.shape == (len(DATA),)
    assert buf.strides == (1,)
    assert buf.owner is cbuf
    assert buf.c_contiguous is True
    assert buf.f_contiguous is True
    assert buf.contiguous is True


def test_attributes_are_read_only():
    buf, _, _ = wrap()
    for name in ("address", "nbytes", "readonly", "released", "exports", "format", "itemsize",
                 "ndim", "shape", "strides", "owner", "c_contiguous", "f_contiguous",
                 "contiguous"):
        with pytest.raises(AttributeError):
            setattr(buf, name, getattr(buf, name))
    with pytest.raises(AttributeError):
        buf.anything_else = 1


def test_owner_none_and_exports_count():
    cbuf, address = block()
    buf = membuf.from_address(address, len(DATA))
    assert buf.owner is None
    views = [memoryview(buf) for _ in range(3)]
    assert buf.exports == 3
    views.pop().release()
    assert buf.exports == 2
    del views
    assert buf.exports == 0


def test_attributes_of_typed_buffers(fakelib):
    block_id = fakelib.alloc(96)
    base = fakelib.address(block_id)
    c_order = fakelib.from_spec(block_id, format="d", ndim=2, shape=(3, 4), release=False)
    assert c_order.address == base
    assert c_order.nbytes == 96
    assert c_order.format == "d"
    assert c_order.itemsize == 8
    assert c_order.ndim == 2
    assert c_order.shape == (3, 4)
    assert c_order.strides == (32, 8)
    assert (c_order.c_contiguous, c_order.f_contiguous, c_order.contiguous) == (True, False, True)

    f_order = fakelib.from_spec(block_id, format="d", ndim=2, shape=(3, 4), strides=(8, 24),
                                release=False)
    assert f_order.strides == (8, 24)
    assert (f_order.c_contiguous, f_order.f_contiguous, f_order.contiguous) == (False, True, True)

    strided = fakelib.from_spec(block_id, format="i", ndim=2, shape=(3, 2), strides=(32, 8),
                                release=False)
    assert strided.nbytes == 24
    assert strided.itemsize == 4
    assert (strided.c_contiguous, strided.f_contiguous, strided.contiguous) == (
        False, False, False)

    scalar = fakelib.from_spec(block_id, format="q", ndim=0, shape=(), strides=(),
                                release=False)
    assert scalar.ndim == 0 and scalar.shape == () and scalar.strides == ()
    assert scalar.nbytes == 8 == scalar.itemsize
    del c_order, f_order, strided, scalar
    fakelib.from_memory(block_id).release()  # give the block back
    assert fakelib.releases(block_id) == 1


def test_repr_plain():
    buf, cbuf, address = wrap()
    assert repr(buf) == f"<membuf.Buffer address={address:#x} nbytes={len(DATA)} read-only>"
    wbuf, _, waddress = wrap(readonly=False)
    assert repr(wbuf) == f"<membuf.Buffer address={waddress:#x} nbytes={len(DATA)} writable>"


def test_repr_states():
    buf, cbuf, address = wrap()
    head = f"<membuf.Buffer address={address:#x} nbytes={len(DATA)} read-only"
    view = memoryview(buf)
    assert repr(buf) == head + ", 1 export>"
    view2 = memoryview(buf)
    assert repr(buf) == head + ", 2 exports>"
    buf.release(defer=True)
    assert repr(buf) == head + ", release pending on 2 exports>"
    view2.release()
    assert repr(buf) == head + ", release pending on 1 export>"
    view.release()
    assert repr(buf) == head + ", released>"
    assert str(buf) == repr(buf)


def test_repr_typed(fakelib):
    block_id = fakelib.alloc(96)
    base = fakelib.address(block_id)
    buf = fakelib.from_spec(block_id, format="d", ndim=2, shape=(3, 4))
    assert repr(buf) == (f"<membuf.Buffer address={base:#x} nbytes=96 format='d' "
                         f"shape=(3, 4) read-only>")
    buf.release()
    assert repr(buf).endswith(", released>")
    assert f"address={base:#x}" in repr(buf)


# ---------------------------------------------------------------------------
# the type
# ---------------------------------------------------------------------------


def test_buffer_cannot_be_created_directly():
    with pytest.raises(TypeError, match="from_address"):
        membuf.Buffer()
    with pytest.raises(TypeError, match="from_address"):
        membuf.Buffer(b"abc")
    buf, _, address = wrap()
    with pytest.raises(TypeError, match="from_address"):
        type(buf)(address, len(DATA))
    with pytest.raises(TypeError, match="from_address"):
        membuf.Buffer.__new__(membuf.Buffer)


def test_buffer_is_not_subclassable():
    with pytest.raises(TypeError, match="not an acceptable base type"):

        class Sub(membuf.Buffer):
            pass


def test_buffer_is_unhashable():
    buf, _, _ = wrap()
    with pytest.raises(TypeError, match="unhashable"):
        hash(buf)
    with pytest.raises(TypeError):
        {buf: 1}
    with pytest.raises(TypeError):
        {buf}
    assert membuf.Buffer.__hash__ is None


def test_buffer_is_weakrefable():
    buf, _, _ = wrap()
    called = []
    ref = weakref.ref(buf, called.append)
    assert ref() is buf
    del buf
    gc.collect()
    assert ref() is None
    assert called == [ref]


def test_module_namespace():
    assert set(membuf.__all__) == {"ABI_VERSION", "API_VERSION", "Buffer", "address_of",
                                   "from_address", "from_buffer", "get_include"}
    for name in membuf.__all__:
        assert hasattr(membuf, name)
    assert isinstance(membuf.ABI_VERSION, int) and isinstance(membuf.API_VERSION, int)


def test_introspection():
    import inspect

    assert membuf.Buffer.__module__ == "membuf"
    assert membuf.Buffer.__name__ == "Buffer"
    assert membuf.Buffer.__doc__
    assert str(inspect.signature(membuf.from_address)) == (
        "(address, size=None, *, format=None, shape=None, strides=None, readonly=True, "
        "owner=None, on_release=None)")
    assert str(inspect.signature(membuf.from_buffer)) == (
        "(obj, /, *, readonly=None, format=None, shape=None, strides=None, on_release=None)")
    assert str(inspect.signature(membuf.address_of)) == "(obj, /)"
    buf, _, _ = wrap()
    assert str(inspect.signature(buf.release)) == "(defer=False)"
    assert str(inspect.signature(buf.tobytes)) == "()"


def test_address_of_other_objects():
    data = bytearray(b"abc")
    c = (ctypes.c_char * 3).from_buffer(data)
    assert membuf.address_of(data) == ctypes.addressof(c)
    del c
    with pytest.raises(TypeError):
        membuf.address_of(42)
    with pytest.raises(TypeError):
        membuf.address_of("text")


# ---------------------------------------------------------------------------
# the package around the type
# ---------------------------------------------------------------------------


def test_get_include_has_the_header():
    include = membuf.get_include()
    assert os.path.isabs(include)
    header = pathlib.Path(include) / "membuf.h"
    assert header.is_file()
    text = header.read_text()
    assert "MemBuf_FromMemory" in text and "import_membuf" in text


def _run_module(*args, cwd):
    return subprocess.run([sys.executable, "-m", "membuf", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)


def test_python_m_membuf_include(tmp_path):
    result = _run_module("--include", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == membuf.get_include()
    assert (pathlib.Path(result.stdout.strip()) / "membuf.h").is_file()


def test_python_m_membuf_demo(tmp_path):
    result = _run_module("--size", "1MiB", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^OK\b", result.stdout, re.MULTILINE), result.stdout
    assert "FAILED" not in result.stdout


def test_python_m_membuf_bad_size(tmp_path):
    result = _run_module("--size", "lots", cwd=tmp_path)
    assert result.returncode != 0
    assert "cannot read size" in result.stderr


def test_version():
    assert isinstance(membuf.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", membuf.__version__)
    assert membuf.__version__ == importlib.metadata.version("membuf")


def _stub_path():
    return pathlib.Path(membuf.__file__).parent / "__init__.pyi"


def test_typing_stubs_are_installed():
    package = pathlib.Path(membuf.__file__).parent
    assert (package / "py.typed").is_file()
    assert _stub_path().is_file()


def test_typing_stubs_cover_the_runtime_api():
    tree = ast.parse(_stub_path().read_text())
    top = set()
    buffer_members = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
        if isinstance(node, ast.ClassDef) and node.name == "Buffer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    buffer_members.add(item.name)
    assert set(membuf.__all__) | {"__version__"} <= top
    runtime = {name for name in vars(membuf.Buffer) if not name.startswith("_")}
    assert runtime <= buffer_members, runtime - buffer_members


# ---------------------------------------------------------------------------
# byte buffers behave like bytes
# ---------------------------------------------------------------------------


def test_len_and_indexing_like_bytes():
    buf, _, _ = wrap()
    n = len(DATA)
    assert len(buf) == n
    for i in range(-n, n):
        item = buf[i]
        assert type(item) is int
        assert item == DATA[i]
    for i in (n, n + 1, -n - 1, 10**6):
        with pytest.raises(IndexError):
            buf[i]
    with pytest.raises(IndexError):
        buf[10**30]
    with pytest.raises(TypeError):
        buf[1.5]
    with pytest.raises(TypeError):
        buf["0"]


def test_indexing_with_index_objects():
    class Index:
        def __index__(self):
            return 3

    buf, _, _ = wrap()
    assert buf[Index()] == DATA[3]
    assert buf[True] == DATA[1]


SLICES = [
    slice(None),
    slice(2, 5),
    slice(5, 2),
    slice(-5, None),
    slice(None, -5),
    slice(None, None, -1),
    slice(1, None, 3),
    slice(90, 10, -2),
    slice(-1, -90, -13),
    slice(None, None, 7),
    slice(3, 4),
    slice(50, 10),
    slice(-1000, 1000),
    slice(1000, 2000),
    slice(None, None, 1000),
    slice(None, None, -1000),
]


@pytest.mark.parametrize("key", SLICES, ids=str)
def test_slicing_like_bytes_and_zero_copy(key):
    buf, cbuf, address = wrap()
    part = buf[key]
    assert isinstance(part, membuf.Buffer)
    expected = DATA[key]
    assert bytes(part) == expected
    assert part.tobytes() == expected
    assert list(part) == list(expected)
    assert len(part) == len(expected)
    assert part.nbytes == len(expected)
    assert part == expected
    assert part.readonly is True
    indexes = range(len(DATA))[key]
    if len(indexes):
        # the slice's first element is the parent's element indexes[0]
        assert part.address == address + indexes[0]
        assert membuf.address_of(memoryview(part)) == address + indexes[0]
        assert address <= part.address < address + len(DATA)
        for k, i in enumerate(indexes):
            assert part[k] == DATA[i]
        # zero-copy: a change of the memory shows in the slice
        ctypes.memset(address + indexes[0], (DATA[indexes[0]] + 1) % 256, 1)
        assert part[0] == (DATA[indexes[0]] + 1) % 256
    assert buf.exports == 1
    del part
    assert buf.exports == 0


def test_slice_of_slice_matches_bytes():
    buf, _, address = wrap()
    part = buf[10:90:2][5:30][::-3]
    assert bytes(part) == DATA[10:90:2][5:30][::-3]
    assert part.address == address + range(100)[10:90:2][5:30][::-3][0]


def test_iteration_membership_and_reversed():
    buf, _, _ = wrap()
    assert list(buf) == list(DATA)
    assert list(iter(buf)) == list(DATA)
    assert list(reversed(buf)) == list(reversed(DATA))
    assert DATA[0] in buf
    assert DATA[-1] in buf
    assert ABSENT not in buf
    assert sum(buf) == sum(DATA)


def test_equality_with_bytes_like_objects():
    buf, _, _ = wrap()
    other, _, _ = wrap()
    changed = bytearray(DATA)
    changed[50] ^= 1
    assert buf == DATA
    assert DATA == buf
    assert buf == bytearray(DATA)
    assert bytearray(DATA) == buf
    assert buf == memoryview(DATA)
    assert memoryview(DATA) == buf
    assert buf == other
    assert buf == buf
    assert buf == array.array("B", DATA)
    assert not (buf != DATA)
    assert buf != DATA[:-1]
    assert buf != DATA + b"\0"
    assert buf != bytes(changed)
    assert buf != changed
    assert not (buf == changed)
    assert buf != b""
    # an equal prefix is not enough
    assert buf[:10] == DATA[:10]
    assert buf[:10] != DATA[:11]


@pytest.mark.parametrize(
    "other",
    [
        array.array("b", [d - 256 if d > 127 else d for d in DATA]),
        array.array("b", [d for d in DATA if d < 128][:10]),
        array.array("H", [1, 2]),
        array.array("d", [float(d) for d in DATA]),
        memoryview(DATA).cast("B", (10, 10)),
        memoryview(DATA * 8).cast("Q")[:100],
        memoryview(DATA)[::2],
    ],
    ids=["b-signed", "b-short", "H", "d", "2d", "Q", "strided"],
)
def test_equality_with_typed_objects_follows_memoryview(other):
    buf, _, _ = wrap()
    assert (buf == other) is (memoryview(DATA) == other)
    assert (buf != other) is (memoryview(DATA) != other)
    assert (other == buf) is (other == memoryview(DATA))


@pytest.mark.parametrize("other", [5, None, "text", 1.5, [1, 2], object()], ids=repr)
def test_comparison_with_non_buffers(other):
    buf, _, _ = wrap()
    assert buf.__eq__(other) is NotImplemented
    assert buf.__ne__(other) is NotImplemented
    assert (buf == other) is False
    assert (other == buf) is False
    assert (buf != other) is True


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_ordering_is_refused(op):
    buf, _, _ = wrap()
    other, _, _ = wrap()
    for rhs in (DATA, other, buf, 5):
        with pytest.raises(TypeError, match="not supported between instances"):
            eval(f"buf {op} rhs")


def test_tobytes_hex_and_copies():
    buf, _, _ = wrap()
    assert buf.tobytes() == DATA
    assert type(buf.tobytes()) is bytes
    assert bytes(buf) == DATA
    assert bytearray(buf) == bytearray(DATA)
    assert buf.hex() == DATA.hex()
    assert buf.hex(":") == DATA.hex(":")
    assert buf.hex(":", 2) == DATA.hex(":", 2)
    assert buf.hex("-", -3) == DATA.hex("-", -3)
    assert buf.hex(b"|", 4) == DATA.hex(b"|", 4)
    assert buf.hex(sep="_", bytes_per_sep=5) == DATA.hex(sep="_", bytes_per_sep=5)
    with pytest.raises(ValueError):
        buf.hex("::")
    with pytest.raises(TypeError):
        buf.hex(1)


def test_hex_of_slices():
    buf, _, _ = wrap()
    assert buf[::-1].hex(":", 3) == DATA[::-1].hex(":", 3)
    assert buf[5:9].hex() == DATA[5:9].hex()


def test_tobytes_is_a_copy():
    buf, cbuf, address = wrap(readonly=False)
    copy = buf.tobytes()
    copy2 = bytes(buf)
    buf[0] = (DATA[0] + 1) % 256
    assert copy == DATA and copy2 == DATA
    assert membuf.address_of(copy) != address


# ---------------------------------------------------------------------------
# typed buffers behave like memoryview
# ---------------------------------------------------------------------------


@pytest.fixture
def typed(fakelib):
    """factory(format, shape, strides=None, writable=False) ->
    (Buffer, reference memoryview over a bytes copy, raw bytes, base address)."""
    def make(fmt, shape, nbytes=None, strides=None, writable=False):
        itemsize = struct_size(fmt)
        if nbytes is None:
            nbytes = itemsize
            for dim in shape:
                nbytes *= dim
        block_id = fakelib.alloc(nbytes)
        buf = fakelib.from_spec(block_id, format=fmt, ndim=len(shape), shape=shape,
                                strides=strides, flags=fakelib.WRITABLE if writable else 0)
        raw = raw_bytes(nbytes)
        return buf, raw, fakelib.address(block_id)

    return make


def struct_size(fmt):
    import struct

    return struct.calcsize(fmt)


def test_typed_1d_follows_memoryview(typed):
    buf, raw, base = typed("d", (12,))
    ref = memoryview(raw).cast("d")
    assert len(buf) == 12 == len(ref)
    for i in range(-12, 12):
        assert buf[i] == ref[i]
        assert type(buf[i]) is float
    with pytest.raises(IndexError):
        buf[12]
    with pytest.raises(IndexError):
        buf[-13]
    assert list(buf) == ref.tolist()
    assert memoryview(buf).tolist() == ref.tolist()
    assert buf.tobytes() == ref.tobytes() == raw
    assert bytes(buf) == raw
    assert buf.hex() == ref.hex()
    assert buf == ref
    assert (buf == raw) is (ref == raw)
    assert ref[3] in buf


def test_typed_1d_slices(typed):
    buf, raw, base = typed("d", (12,))
    ref = memoryview(raw).cast("d")
    part = buf[2:8:2]
    assert isinstance(part, membuf.Buffer)
    assert part.format == "d" and part.itemsize == 8
    assert part.shape == (3,) and part.strides == (16,)
    assert part.address == base + 16
    assert list(part) == ref[2:8:2].tolist()
    assert part.tobytes() == ref[2:8:2].tobytes()
    back = buf[::-1]
    assert back.address == base + 11 * 8
    assert back.strides == (-8,)
    assert list(back) == ref[::-1].tolist()
    assert back.tobytes() == ref[::-1].tobytes()
    assert buf.exports == 2


def test_typed_2d_follows_memoryview(typed):
    buf, raw, base = typed("i", (4, 6))
    ref = memoryview(raw).cast("i", (4, 6))
    assert len(buf) == 4
    for i in range(4):
        for j in range(6):
            assert buf[i, j] == ref[i, j]
    assert buf[-1, -1] == ref[-1, -1]
    with pytest.raises(IndexError):
        buf[4, 0]
    # sub-views of a multi-dimensional buffer: what memoryview does
    with pytest.raises(NotImplementedError):
        ref[0]
    with pytest.raises(NotImplementedError):
        buf[0]
    assert buf.tobytes() == ref.tobytes() == raw
    assert memoryview(buf).tolist() == ref.tolist()
    assert buf == ref


def test_typed_2d_slicing_first_dimension(typed):
    buf, raw, base = typed("i", (4, 6))
    ref = memoryview(raw).cast("i", (4, 6))
    part = buf[1:3]
    assert isinstance(part, membuf.Buffer)
    assert part.format == "i"
    assert part.shape == (2, 6)
    assert part.strides == (24, 4)
    assert part.address == base + 24
    assert part.tobytes() == ref[1:3].tobytes()
    assert memoryview(part).tolist() == ref[1:3].tolist()
    assert part[1, 2] == ref[2, 2]
    rev = buf[::-2]
    assert rev.shape == (2, 6)
    assert rev.tobytes() == ref[::-2].tobytes()
    assert memoryview(rev).tolist() == ref[::-2].tolist()


def test_typed_0d(typed):
    buf, raw, base = typed("d", ())
    ref = memoryview(raw).cast("d", ())
    # memoryview's rule since 3.12, on every version (3.11's memoryview said 1)
    with pytest.raises(TypeError, match="^0-dim memory has no length$"):
        len(buf)
    with pytest.raises(TypeError, match="^0-dim memory has no length$"):
        bool(buf)
    assert buf[()] == ref[()]
    with pytest.raises(TypeError, match="invalid indexing of 0-dim memory"):
        buf[0]
    with pytest.raises(TypeError):
        buf[0:1]
    assert buf.tobytes() == ref.tobytes() == raw
    assert buf == ref


def test_fortran_order_tobytes_is_c_order(typed):
    # shape (3, 4) of 'h', Fortran strides (2, 6): element [i, j] at 2*i + 6*j
    buf, raw, base = typed("h", (3, 4), strides=(2, 6))
    expected = b"".join(raw[2 * i + 6 * j: 2 * i + 6 * j + 2] for i in range(3) for j in range(4))
    assert buf.tobytes() == expected
    assert bytes(buf) == expected
    assert buf.tobytes() == memoryview(buf).tobytes()
    import struct

    for i in range(3):
        for j in range(4):
            assert buf[i, j] == struct.unpack_from("h", raw, 2 * i + 6 * j)[0]


def test_strided_byte_buffer(typed):
    buf, raw, base = typed("B", (5,), nbytes=20, strides=(4,))
    assert buf.contiguous is False
    assert len(buf) == 5
    assert list(buf) == list(raw[::4])
    assert buf.tobytes() == raw[::4]
    assert bytes(buf) == raw[::4]
    assert buf == raw[::4]
    assert buf[1:4].address == base + 4
    assert bytes(buf[1:4]) == raw[4:16:4]


def test_typed_item_assignment(typed):
    buf, raw, base = typed("d", (12,), writable=True)
    buf[3] = 1.5
    buf[-1] = -2.25
    assert buf[3] == 1.5 and buf[-1] == -2.25
    view = memoryview(buf)
    assert view[3] == 1.5
    assert ctypes.c_double.from_address(base + 24).value == 1.5
    view.release()
    with pytest.raises(TypeError):
        buf[0] = "x"
    ro, _, _ = typed("d", (12,))
    with pytest.raises(TypeError, match="cannot modify read-only memory"):
        ro[0] = 1.0


def test_typed_2d_item_assignment(typed):
    buf, raw, base = typed("i", (4, 6), writable=True)
    buf[2, 3] = -7
    assert buf[2, 3] == -7
    assert ctypes.c_int.from_address(base + 2 * 24 + 3 * 4).value == -7


def test_the_version_has_one_source():
    """meson.build's project(version:) reaches the package metadata and
    membuf.__version__ (through the C module) alike."""
    import importlib.metadata
    import pathlib
    import re

    assert membuf.__version__ == membuf._membuf.__version__
    assert membuf.__version__ == importlib.metadata.version("membuf")
    meson = pathlib.Path(__file__).parent.parent / "meson.build"
    if meson.exists():  # a source checkout
        declared = re.search(r"version: '([^']+)'", meson.read_text()).group(1)
        assert membuf.__version__ == declared
