"""The Python front door: `with buf:` never hides the block's exception; every
error of an operation on a Buffer names membuf.Buffer (never memoryview, to
which element access delegates) and has the type memoryview raises for the
same operation; methods carry text signatures; boolean switches are strict."""

import ctypes
import inspect
import sys

import pytest

import membuf

N = 8


class Recorder:
    """An on_release that counts its calls, and raises exc if given."""

    def __init__(self, exc=None):
        self.count = 0
        self.exc = exc

    def __call__(self):
        self.count += 1
        if self.exc is not None:
            raise self.exc


def wrap(n=N, on_release=None, readonly=False):
    cbuf = ctypes.create_string_buffer(bytes(range(n)), n)
    buf = membuf.from_address(ctypes.addressof(cbuf), n, readonly=readonly, owner=cbuf,
                              on_release=on_release)
    return buf


@pytest.fixture
def unraisable(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook",
                        lambda args: seen.append((args.exc_type, str(args.exc_value), args.object)))
    return seen


class Boom(Exception):
    pass


# ---------------------------------------------------------------------------
# with buf: -- item 4
# ---------------------------------------------------------------------------


def test_clean_exit_with_view_alive_is_strict():
    cb = Recorder()
    buf = wrap(on_release=cb)
    with pytest.raises(BufferError, match=r"^membuf.Buffer has 1 exported buffer"):
        with buf:
            view = memoryview(buf)
    assert buf.released is False and cb.count == 0
    view.release()
    assert buf.released is False and cb.count == 0  # strict: nothing was deferred
    buf.release()
    assert buf.released is True and cb.count == 1


def test_exception_with_view_alive_propagates_and_defers():
    cb = Recorder()
    buf = wrap(on_release=cb)
    err = Boom("the user's")
    with pytest.raises(Boom) as info:
        with buf:
            view = memoryview(buf)
            raise err
    assert info.value is err
    assert err.__context__ is None and err.__cause__ is None  # nothing raised over it
    assert buf.released is False and cb.count == 0
    assert "release pending on 1 export" in repr(buf)
    assert view[1] == 1  # the memory is still there for the view
    with pytest.raises(ValueError, match="pending"):
        memoryview(buf)  # but no new views
    view.release()
    assert buf.released is True and cb.count == 1
    buf.release()
    assert cb.count == 1


def test_exception_with_numpy_array_alive_defers():
    np = pytest.importorskip("numpy")
    cb = Recorder()
    buf = wrap(on_release=cb)
    with pytest.raises(KeyError):
        with buf:
            arr = np.frombuffer(buf, dtype=np.uint8)
            raise KeyError("k")
    assert buf.released is False and cb.count == 0
    assert arr[2] == 2
    del arr
    assert buf.released is True and cb.count == 1


def test_exception_without_view_releases_at_once():
    cb = Recorder()
    buf = wrap(on_release=cb)
    with pytest.raises(Boom):
        with buf:
            raise Boom()
    assert buf.released is True and cb.count == 1


def test_exception_and_raising_on_release_goes_to_unraisablehook(unraisable):
    cb = Recorder(exc=RuntimeError("from on_release"))
    buf = wrap(on_release=cb)
    err = Boom("the user's")
    with pytest.raises(Boom) as info:
        with buf:
            raise err
    assert info.value is err and err.__context__ is None
    assert buf.released is True and cb.count == 1
    assert [(t, m) for t, m, _ in unraisable] == [(RuntimeError, "from on_release")]
    assert unraisable[0][2] is buf


def test_deferred_by_exception_then_raising_on_release_at_view_end(unraisable):
    cb = Recorder(exc=RuntimeError("later"))
    buf = wrap(on_release=cb)
    with pytest.raises(Boom):
        with buf:
            view = memoryview(buf)
            raise Boom()
    assert unraisable == [] and cb.count == 0
    view.release()  # the deferred release runs here: nobody to raise to
    assert buf.released is True and cb.count == 1
    assert [(t, m) for t, m, _ in unraisable] == [(RuntimeError, "later")]


def test_clean_exit_raising_on_release_still_propagates():
    cb = Recorder(exc=RuntimeError("at clean exit"))
    buf = wrap(on_release=cb)
    with pytest.raises(RuntimeError, match="at clean exit"):
        with buf:
            pass
    assert buf.released is True and cb.count == 1


def test_exception_in_slice_block_with_view_alive():
    cb = Recorder()
    buf = wrap(on_release=cb)
    with pytest.raises(Boom):
        with buf[2:6] as part:
            view = memoryview(part)
            raise Boom()
    assert part.released is False and buf.exports == 1
    view.release()
    assert part.released is True and buf.exports == 0
    buf.release()
    assert cb.count == 1


def test_exit_return_value_and_arguments():
    buf = wrap()
    assert buf.__exit__(KeyError, KeyError("x"), None) is None  # never true: the exception is not swallowed
    assert buf.released
    buf2 = wrap()
    with pytest.raises(TypeError, match=r"^membuf.Buffer.__exit__\(\) takes exactly 3 "
                                        r"arguments \(0 given\)$"):
        buf2.__exit__()
    assert buf2.released is False


# ---------------------------------------------------------------------------
# Error messages -- item 5
# ---------------------------------------------------------------------------


def typed(fakelib, fmt, shape, writable=True):
    import struct

    nbytes = struct.calcsize(fmt)
    for dim in shape:
        nbytes *= dim
    block_id = fakelib.alloc(nbytes)
    return fakelib.from_spec(block_id, format=fmt, ndim=len(shape), shape=shape,
                             flags=fakelib.WRITABLE if writable else 0)


KINDS = {
    "B": lambda f: wrap(),
    "B-readonly": lambda f: wrap(readonly=True),
    "d": lambda f: typed(f, "d", (4,)),
    "c": lambda f: typed(f, "c", (4,)),
    "i-2d": lambda f: typed(f, "i", (3, 4)),
    "d-0d": lambda f: typed(f, "d", ()),
    "<d": lambda f: typed(f, "<d" if sys.byteorder == "little" else ">d", (4,)),
}


def setitem(key, value):
    def op(b):
        b[key] = value
    op.__name__ = f"[{key!r}] = {value!r}"
    return op


def delitem(key):
    def op(b):
        del b[key]
    op.__name__ = f"del [{key!r}]"
    return op


def getitem(key):
    def op(b):
        return b[key]
    op.__name__ = f"[{key!r}]"
    return op


def call(name, *args, **kwargs):
    def op(b):
        return getattr(b, name)(*args, **kwargs)
    op.__name__ = f"{name}{args}{kwargs}"
    return op


ALL = slice(None)
# (kind, operation): each fails on a Buffer and on a memoryview of it.
CASES = [
    # plain bytes: indexing
    ("B", getitem(N)), ("B", getitem(-N - 1)), ("B", getitem(10**30)), ("B", getitem(-10**30)),
    ("B", getitem("a")), ("B", getitem(1.5)), ("B", getitem(None)), ("B", getitem([0])),
    ("B", getitem(...)), ("B", getitem((0, 0))), ("B", getitem((ALL,))),
    ("B", getitem((0, ALL))), ("B", getitem(("a",))), ("B", getitem((N,))),
    ("B", getitem(slice(None, None, 0))), ("B", getitem(slice("a", None))),
    ("B", getitem(slice(None, 2.5))),
    # plain bytes: assignment
    ("B", setitem(N, 1)), ("B", setitem(-N - 1, 1)), ("B", setitem(10**30, 1)),
    ("B", setitem(0, 256)), ("B", setitem(0, -1)), ("B", setitem(0, "x")),
    ("B", setitem(0, 1.5)), ("B", setitem(0, None)), ("B", setitem("a", 1)),
    ("B", setitem(..., 1)), ("B", setitem((0, 0), 1)), ("B", setitem((ALL,), b"x")),
    ("B", setitem(slice(0, 2), b"abc")), ("B", setitem(slice(0, 2), 5)),
    ("B", setitem(slice(0, 2), "ab")), ("B", setitem(slice(None, None, 0), b"")),
    ("B", setitem(slice("a", None), b"")),
    ("B", setitem(slice(0, 2), memoryview(b"abcdefgh").cast("d"))),
    ("B", delitem(0)), ("B", delitem(slice(0, 2))),
    ("B-readonly", setitem(0, 1)), ("B-readonly", setitem(slice(0, 1), b"x")),
    ("B-readonly", delitem(0)),
    # typed 1-D
    ("d", getitem(4)), ("d", getitem("a")), ("d", setitem(0, "x")), ("d", setitem(0, 10**400)),
    ("d", setitem(0, None)), ("d", setitem(4, 1.0)), ("d", setitem(slice(0, 2), bytes(16))),
    ("c", setitem(0, b"ab")), ("c", setitem(0, 1)), ("c", setitem(0, "a")),
    # typed 2-D
    ("i-2d", getitem(0)), ("i-2d", getitem(3)), ("i-2d", getitem(-1)), ("i-2d", getitem((0,))),
    ("i-2d", getitem(())), ("i-2d", getitem((3, 0))), ("i-2d", getitem((0, 4))),
    ("i-2d", getitem((0, -5))), ("i-2d", getitem((-4, 0))), ("i-2d", getitem((0, 0, 0))),
    ("i-2d", getitem((ALL, ALL))), ("i-2d", getitem((0, ALL))), ("i-2d", getitem(...)),
    ("i-2d", getitem((0, "a"))), ("i-2d", getitem("a")),
    ("i-2d", setitem(0, 1)), ("i-2d", setitem((0,), 1)), ("i-2d", setitem((0, 9), 1)),
    ("i-2d", setitem((0, 0, 0), 1)), ("i-2d", setitem(slice(0, 1), b"")),
    ("i-2d", setitem((0, 0), "x")), ("i-2d", setitem((0, 0), 2**40)),
    ("i-2d", setitem((ALL, ALL), 1)),
    # 0-dim
    ("d-0d", getitem(0)), ("d-0d", getitem(ALL)), ("d-0d", getitem("a")), ("d-0d", getitem((0,))),
    ("d-0d", setitem(0, 1.0)), ("d-0d", setitem(ALL, 1.0)), ("d-0d", setitem((), "x")),
    ("d-0d", setitem(..., None)),
    # a format memoryview cannot unpack or pack
    ("<d", getitem(0)), ("<d", getitem(-1)), ("<d", setitem(0, 1.0)),
    # hex(): the arguments
    ("B", call("hex", 1)), ("B", call("hex", "ab")), ("B", call("hex", "")),
    ("B", call("hex", "\xe9")), ("B", call("hex", b"\xff")), ("B", call("hex", ":", "x")),
    ("B", call("hex", ":", 1.0)), ("B", call("hex", ":", 2**40)), ("B", call("hex", ":", -2**40)),
    ("B", call("hex", ":", 2, 3)), ("B", call("hex", foo=1)),
]


def run(op, obj):
    try:
        op(obj)
    except Exception as exc:  # noqa: BLE001 -- compared below
        return exc
    return None


@pytest.mark.parametrize("kind,op", CASES, ids=[f"{k}:{op.__name__}" for k, op in CASES])
def test_error_names_buffer_with_memoryviews_type(fakelib, kind, op):
    buf = KINDS[kind](fakelib)
    before = buf.tobytes()
    ref = memoryview(buf)
    expected = run(op, ref)
    ref.release()
    got = run(op, buf)
    assert expected is not None, "the memoryview accepted it: not an error case"
    assert got is not None, f"the Buffer accepted what memoryview refuses: {expected!r}"
    assert type(got) is type(expected), (got, expected)
    assert "memoryview" not in str(got)
    assert "membuf.Buffer" in str(got)
    assert got.__context__ is None and got.__cause__ is None  # memoryview's error is not chained
    assert buf.tobytes() == before  # nothing was written
    assert buf.exports == 0  # the internal memoryview is gone


@pytest.mark.parametrize("op,exc,message", [
    (getitem(N), IndexError, r"^membuf.Buffer indexing: index 8 out of range on dimension 1 "
                             r"\(size 8\)$"),
    (getitem(-9), IndexError, r"^membuf.Buffer indexing: index -9 out of range on dimension 1 "
                              r"\(size 8\)$"),
    (getitem(10**30), IndexError, r"^membuf.Buffer indexing: index 10{30} out of range"),
    (getitem("a"), TypeError, r"^membuf.Buffer indexing: an index must be an int, a slice or a "
                              r"tuple of ints, not str$"),
    (getitem((0, 0)), TypeError, r"^membuf.Buffer indexing: 2 indices for 1 dimension$"),
    (getitem(slice(None, None, 0)), ValueError, r"^membuf.Buffer slicing: slice step cannot "
                                                r"be zero$"),
    (getitem(slice(None, "x")), TypeError, r"^membuf.Buffer slicing: slice stop must be an int, "
                                           r"None or have __index__, not str$"),
    (setitem(0, 256), ValueError, r"^membuf.Buffer item assignment: value out of range for "
                                  r"format 'B'$"),
    (setitem(0, "x"), TypeError, r"^membuf.Buffer item assignment: format 'B' takes an int, "
                                 r"not str$"),
    (setitem(slice(0, 2), b"abc"), ValueError,
     r"^membuf.Buffer slice assignment: the value \(format 'B', itemsize 1, shape \(3,\)\) does "
     r"not match the slice \(format 'B', itemsize 1, shape \(2,\)\)$"),
    (setitem(slice(0, 2), 5), TypeError, r"^membuf.Buffer slice assignment: a bytes-like object "
                                         r"is required, not int$"),
    (delitem(0), TypeError, r"^membuf.Buffer does not support item deletion"),
    (call("hex", "ab"), ValueError, r"^membuf.Buffer.hex\(\): sep must be one character, not 2$"),
    (call("hex", 1), TypeError, r"^membuf.Buffer.hex\(\): sep must be str, bytes or None, "
                                r"not int$"),
])
def test_exact_messages_of_a_byte_buffer(op, exc, message):
    buf = wrap()
    with pytest.raises(exc, match=message):
        op(buf)


def test_exact_messages_of_typed_buffers(fakelib):
    two = typed(fakelib, "i", (3, 4))
    with pytest.raises(IndexError, match=r"^membuf.Buffer indexing: index 4 out of range on "
                                         r"dimension 2 \(size 4\)$"):
        two[0, 4]
    with pytest.raises(NotImplementedError, match=r"^membuf.Buffer indexing: 1 index for 2 "
                                                  r"dimensions: sub-views are not implemented"):
        two[0]
    with pytest.raises(NotImplementedError, match=r"^membuf.Buffer slice assignment: only 1-D "
                                                  r"Buffers take slice assignment"):
        two[0:1] = b""
    with pytest.raises(NotImplementedError, match=r"^membuf.Buffer indexing: multi-dimensional "
                                                  r"slicing is not implemented"):
        two[:, :]
    zero = typed(fakelib, "d", ())
    with pytest.raises(TypeError, match=r"^len\(\) of a 0-dim membuf.Buffer: it has no length$"):
        len(zero)
    with pytest.raises(TypeError, match=r"^membuf.Buffer item assignment: a 0-dim membuf.Buffer "
                                        r"is indexed with \(\) or \.\.\., not int$"):
        zero[0] = 1.0
    with pytest.raises(TypeError, match=r"membuf.Buffer"):
        list(zero)
    other = typed(fakelib, "<d" if sys.byteorder == "little" else ">d", (4,))
    with pytest.raises(NotImplementedError, match=r"^membuf.Buffer indexing: format '[<>]d' is "
                                                  r"not supported"):
        other[0]
    with pytest.raises(NotImplementedError, match=r"^membuf.Buffer item assignment: format "
                                                  r"'[<>]d' is not supported"):
        other[0] = 1.0
    c = typed(fakelib, "c", (4,))
    with pytest.raises(ValueError, match=r"^membuf.Buffer item assignment: format 'c' takes a "
                                         r"bytes object of length 1, not of length 2$"):
        c[0] = b"ab"
    ro = wrap(readonly=True)
    with pytest.raises(TypeError, match=r"^membuf.Buffer item assignment: cannot modify "
                                        r"read-only memory"):
        ro[0] = 1
    with pytest.raises(TypeError, match=r"^membuf.Buffer slice assignment: cannot modify "
                                        r"read-only memory"):
        ro[0:1] = b"x"


@pytest.mark.release_abi("numpy")  # NumPy scalars as indices
def test_what_still_works(fakelib):
    """The checks on the way in do not refuse what memoryview accepts."""
    np = pytest.importorskip("numpy")
    buf = wrap()
    assert buf[np.int64(3)] == 3 and buf[(3,)] == 3 and buf[True] == 1
    buf[np.int64(2)] = 9
    buf[(1,)] = 8
    buf[-1] = 7
    buf[0:2] = bytearray(b"xy")
    buf[::4] = b"AB"
    assert buf.tobytes() == b"Ay\x09\x03B\x05\x06\x07"
    assert buf.hex() == buf.hex(None) == buf.tobytes().hex()
    assert buf.hex(":", 2) == buf.tobytes().hex(":", 2)
    assert buf.hex(sep=b"-", bytes_per_sep=-3) == buf.tobytes().hex(b"-", -3)
    two = typed(fakelib, "i", (3, 4))
    two[np.int32(2), -1] = -5
    assert two[2, 3] == -5 and two[-1, np.int8(3)] == -5
    zero = typed(fakelib, "d", ())
    zero[...] = 2.5
    assert zero[()] == 2.5
    assert zero[...] is zero  # memoryview's m[...] is m
    zero[()] = -1.0
    assert zero[()] == -1.0
    assert buf.exports == two.exports == zero.exports == 0


def test_user_errors_pass_through_unchanged():
    """An exception raised by the user's own __index__ is not rewritten."""
    class BadIndex:
        def __index__(self):
            raise LookupError("mine")

    buf = wrap()
    for op in (getitem(BadIndex()), setitem(BadIndex(), 1), getitem((BadIndex(),)),
               getitem(slice(BadIndex(), None)), setitem(slice(BadIndex(), None), b"")):
        with pytest.raises(LookupError, match="^mine$"):
            op(buf)
    assert buf.exports == 0


def test_released_buffer_messages_name_buffer():
    buf = wrap()
    buf.release()
    for op in (getitem(0), getitem((0,)), getitem(ALL), setitem(0, 1), setitem(ALL, b""),
               delitem(0), call("hex"), call("tobytes"), len):
        exc = run(op, buf)
        assert type(exc) is ValueError, op
        assert str(exc) == "operation forbidden on released membuf.Buffer object"


def test_comparisons_never_raise(fakelib):
    other = typed(fakelib, "<d" if sys.byteorder == "little" else ">d", (4,))
    two = typed(fakelib, "i", (3, 4))
    assert (other == b"\0" * 32) in (True, False)
    assert (two == other) is False
    assert (two != "a") is True


# ---------------------------------------------------------------------------
# Text signatures
# ---------------------------------------------------------------------------

SIGNATURES = {
    "release": "(self, /, defer=False)",
    "tobytes": "(self, /)",
    "hex": "(self, /, sep=None, bytes_per_sep=1)",
    "__enter__": "(self, /)",
    "__exit__": "(self, exc_type, exc_value, traceback, /)",
    "__reduce_ex__": "(self, protocol, /)",
    "__dlpack__": "(self, /, *, stream=None, max_version=None, dl_device=None, copy=None)",
    "__dlpack_device__": "(self, /)",
}


def test_every_public_method_has_a_signature():
    public = {name for name, value in vars(membuf.Buffer).items()
              if callable(value) and (not name.startswith("_") or name in SIGNATURES)
              and type(value).__name__ == "method_descriptor"}
    assert public == set(SIGNATURES)


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_method_signature(name):
    method = getattr(membuf.Buffer, name)
    assert str(inspect.signature(method)) == SIGNATURES[name]
    bound = getattr(wrap(), name)
    assert str(inspect.signature(bound)) == SIGNATURES[name].replace("self, ", "").replace(
        "(/, ", "(").replace("(/)", "()")
    # the docstring's signature line became __text_signature__; the text remains
    assert method.__text_signature__.startswith("($self")
    assert method.__doc__ and not method.__doc__.startswith(name + "(")


def test_signatures_match_behaviour():
    buf = wrap()
    bound = inspect.signature(buf.hex).bind(sep=":", bytes_per_sep=2)
    assert buf.hex(*bound.args, **bound.kwargs) == buf.tobytes().hex(":", 2)
    with pytest.raises(TypeError):
        buf.__exit__(exc_type=None, exc_value=None, traceback=None)  # positional-only
    buf.release(defer=False)
    assert buf.released


@pytest.mark.parametrize("func", [membuf.from_address, membuf.from_buffer, membuf.address_of])
def test_module_function_signatures(func):
    sig = inspect.signature(func)
    assert func.__text_signature__ is not None and func.__doc__
    if func is membuf.from_address:
        assert list(sig.parameters) == ["address", "size", "format", "shape", "strides",
                                        "readonly", "owner", "on_release"]
        assert sig.parameters["readonly"].default is True
    elif func is membuf.from_buffer:
        assert list(sig.parameters) == ["obj", "readonly", "format", "shape", "strides",
                                        "on_release"]
        assert sig.parameters["obj"].kind is inspect.Parameter.POSITIONAL_ONLY
        assert sig.parameters["readonly"].default is None
    else:
        assert list(sig.parameters) == ["obj"]


# ---------------------------------------------------------------------------
# Strict booleans
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 1, None, "yes", 1.0, []])
def test_release_defer_takes_only_bools(bad):
    cb = Recorder()
    buf = wrap(on_release=cb)
    name = type(bad).__name__
    with pytest.raises(TypeError, match=rf"^defer must be True or False, not {name}$"):
        buf.release(defer=bad)
    with pytest.raises(TypeError, match=rf"^defer must be True or False, not {name}$"):
        buf.release(bad)
    assert buf.released is False and cb.count == 0
    buf.release(defer=True)
    assert buf.released is True and cb.count == 1


def test_release_defer_numpy_bool_is_refused():
    np = pytest.importorskip("numpy")
    buf = wrap()
    with pytest.raises(TypeError, match=r"^defer must be True or False, not (numpy\.)?bool_?$"):
        buf.release(defer=np.bool_(True))
    assert buf.released is False


@pytest.mark.parametrize("bad", [0, 1, None, "yes"])
def test_from_address_readonly_takes_only_bools(bad):
    cbuf = ctypes.create_string_buffer(4)
    with pytest.raises(TypeError, match=rf"^readonly must be True or False, not "
                                        rf"{type(bad).__name__}$"):
        membuf.from_address(ctypes.addressof(cbuf), 4, readonly=bad)


def test_release_argument_errors_name_buffer():
    buf = wrap()
    with pytest.raises(TypeError, match=r"^membuf.Buffer.release\(\) takes at most 1 argument "
                                        r"\(2 given\)$"):
        buf.release(True, True)
    with pytest.raises(TypeError, match=r"^membuf.Buffer.release\(\) got an unexpected keyword "
                                        r"argument 'deffer'$"):
        buf.release(deffer=True)
    assert buf.released is False
