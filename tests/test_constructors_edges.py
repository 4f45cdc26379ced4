"""Edge cases of from_address() / from_buffer() and the held-export duty,
from an independent red-team review.  The ``test_bug_*`` tests pin defects
that review found (each docstring names the root cause; all are fixed); the
others pin edge cases checked to hold."""

import array
import ctypes
import gc
import mmap
import subprocess
import sys
import textwrap
import weakref

import pytest

import membuf

np = pytest.importorskip("numpy")
as_strided = np.lib.stride_tricks.as_strided


class Counter:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1


def _resizable(ba):
    try:
        ba.append(0)
    except BufferError:
        return False
    ba.pop()
    return True


# --------------------------------------------------------------------------
# Bugs
# --------------------------------------------------------------------------


def test_bug_from_buffer_span_computation_overflows():
    """constructors.c:membuf_from_exporter computes the exporter's span with
    unchecked signed arithmetic (reach = (shape-1)*stride; low += reach;
    high += reach; offset = -low; len = high - low).  Strides near 2**62
    (np.lib.stride_tricks.as_strided accepts them) overflow: UB (UBSan
    reports constructors.c:628/630/633/636/638), a wrapped `low` gives a
    *negative* offset and the debug/sanitizer build aborts on
    layout.c:135 assert(offset >= 0 && offset <= len).  Release builds are
    saved only because membuf_check_layout re-checks every dimension.
    Expected: a clean ValueError/OverflowError in every build."""
    code = textwrap.dedent(
        """
        import numpy as np, membuf
        from numpy.lib.stride_tricks import as_strided
        base = np.zeros(4, np.uint8)
        for shape, strides in [((2, 2, 2, 2), (-2**62, -2**62, -2**62, 2**62)),
                               ((2, 2, 2, 2), (2**62,) * 4),
                               ((3,), (2**62,))]:
            try:
                membuf.from_buffer(as_strided(base, shape, strides))
            except (ValueError, OverflowError):
                pass
            else:
                raise SystemExit("accepted a layout outside the memory")
        print("clean")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr[-2000:]
    assert "runtime error" not in proc.stderr, proc.stderr[-2000:]  # UBSan


def test_bug_ctypes_pointer_runs_element_init():
    """_address.py:_from_ctypes builds `obj._type_()` to learn a pointer's
    element format: that runs a Structure subclass's __init__ (user code with
    side effects), and any exception but TypeError makes from_address fail.
    Fix: read the format without constructing through __init__, e.g.
    `memoryview(obj._type_.from_buffer(bytearray(ctypes.sizeof(obj._type_))))`
    (or catch Exception)."""
    constructed = []

    class S(ctypes.Structure):
        _fields_ = [("a", ctypes.c_int)]

        def __init__(self, *args):
            constructed.append(1)
            raise ValueError("needs arguments")

    buf = membuf.from_address(ctypes.POINTER(S)(), 0)
    assert buf.nbytes == 0 and constructed == []


def test_bug_explicit_size_reaches_past_a_ctypes_object():
    """constructors.c:membuf_py_from_address: with a ctypes/cffi array or
    object as address (whose size membuf knows: converted[1]), an explicit
    size= larger than the object is accepted, so the Buffer reaches past the
    object's memory (a typed object refuses only because its default shape
    no longer matches; format='d' alone re-opens it).  The object is kept as
    the owner, which suggests the Buffer is over *its* memory.  Fix: when
    convert() gives a size, refuse size > that size (ValueError)."""
    obj = (ctypes.c_char * 4)()
    with pytest.raises(ValueError):
        membuf.from_address(obj, 1 << 20)
    typed = (ctypes.c_double * 2)()
    with pytest.raises(ValueError):
        membuf.from_address(typed, 64, format="d")


# --------------------------------------------------------------------------
# Exactly once, references, exports: what holds
# --------------------------------------------------------------------------

_BA = bytearray(16)
_ADDR = membuf.address_of(_BA)

FAILING_CALLS = [
    (membuf.from_address, (_ADDR,), dict(size=-1)),
    (membuf.from_address, (_ADDR,), dict(size=2**64)),
    (membuf.from_address, (-1, 4), {}),
    (membuf.from_address, (True, 4), {}),
    (membuf.from_address, (_ADDR, True), {}),
    (membuf.from_address, (0, 4), {}),
    (membuf.from_address, (_ADDR,), {}),
    (membuf.from_address, (2**64 - 1, 2), {}),
    (membuf.from_address, (_ADDR, 16), dict(format="d", shape=(3,))),
    (membuf.from_address, (_ADDR, 16), dict(format="\0")),
    (membuf.from_address, (_ADDR, 16), dict(format="zz")),
    (membuf.from_address, (_ADDR, 16), dict(readonly=1)),
    (membuf.from_address, (_ADDR,), dict(shape=(2,), strides=(-1,))),
    (membuf.from_address, (_ADDR,), dict(shape=(2**62, 4))),
    (membuf.from_address, (_ADDR,), dict(shape=[1] * 65)),
    (membuf.from_address, (_ADDR,), dict(shape=(1, True))),
    (membuf.from_address, (_ADDR,), dict(shape=(2,), strides=(1, 1))),
    (membuf.from_address, (object(), 4), {}),
    (membuf.from_buffer, (_BA,), dict(readonly=1)),
    (membuf.from_buffer, (b"abc",), dict(readonly=False)),
    (membuf.from_buffer, (object(),), {}),
    (membuf.from_buffer, (_BA,), dict(format="d", shape=(3,))),
    (membuf.from_buffer, (_BA,), dict(strides=(1,))),
    (membuf.from_buffer, (_BA,), dict(format="3d")),
]


@pytest.mark.parametrize("fn, args, kwargs", FAILING_CALLS)
def test_every_failure_calls_on_release_once(fn, args, kwargs):
    cb = Counter()
    before = sys.getrefcount(cb)
    with pytest.raises((TypeError, ValueError, OverflowError, BufferError)):
        fn(*args, on_release=cb, **kwargs)
    assert cb.n == 1
    assert sys.getrefcount(cb) == before
    assert _resizable(_BA)


def test_failures_of_exotic_exporters_call_on_release_once_and_end_the_export():
    base = bytearray(64)
    cases = [
        (np.zeros((3, 3))[:, ::2], dict(format="B")),  # not C-contiguous
        (np.zeros(3, dtype="g"), {}),                 # unknown format
        (np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), {}),
        (memoryview(base).cast("B", (8, 8)).toreadonly(), dict(readonly=False)),
    ]
    for obj, kwargs in cases:
        cb = Counter()
        with pytest.raises((ValueError, BufferError)):
            membuf.from_buffer(obj, on_release=cb, **kwargs)
        assert cb.n == 1
    del cases, obj
    assert _resizable(base)


def test_bad_call_before_on_release_is_accepted_does_not_call_it():
    cb = Counter()
    with pytest.raises(TypeError):
        membuf.from_address(_ADDR, 1, 2, on_release=cb)
    with pytest.raises(TypeError):
        membuf.from_buffer(_BA, bogus=1, on_release=cb)
    with pytest.raises(TypeError):
        membuf.from_buffer(_BA, readonly=True, on_release=5)
    assert cb.n == 0


def test_refcounts_and_calls_over_many_rounds():
    ba, a, own, cb = bytearray(64), np.arange(8.0), object(), Counter()
    arr = (ctypes.c_double * 4)()
    objs = (ba, a, own, cb, arr)
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(100):
        membuf.from_buffer(ba, on_release=cb).release()
        del_me = membuf.from_buffer(a, on_release=cb, format="B", shape=(64,))
        del del_me
        b = membuf.from_buffer(a[::-1], on_release=cb)
        mv = memoryview(b)
        b.release(defer=True)
        mv.release()
        del b, mv
        membuf.from_address(_ADDR, 8, owner=own, on_release=cb)
        membuf.from_address(_ADDR, format="d", shape=(2,), owner=own, on_release=cb).release()
        membuf.from_address(arr, on_release=cb)
        membuf.from_address(arr, shape=(2, 2), on_release=cb)
        with pytest.raises(ValueError):
            membuf.from_address(arr, owner=arr, on_release=cb)
    gc.collect()
    assert cb.n == 100 * 8
    assert [sys.getrefcount(o) for o in objs] == before
    assert _resizable(ba)


@pytest.mark.parametrize("end", ["release", "del", "gc"])
def test_export_ends_with_the_buffer(end):
    ba = bytearray(32)
    cb = Counter()
    b = membuf.from_buffer(ba, format="i", shape=(2, 4), on_release=cb)
    assert not _resizable(ba)
    if end == "release":
        b.release()
    elif end == "del":
        del b
    else:
        box = [b]
        box.append(box)
        del b, box
        gc.collect()
    assert cb.n == 1 and _resizable(ba)


def test_on_release_runs_after_the_export_ended():
    m = mmap.mmap(-1, 4096)
    b = membuf.from_buffer(m, on_release=m.close)  # close() fails while exported
    b.release()
    assert m.closed


# --------------------------------------------------------------------------
# Layouts of exotic exporters: what holds
# --------------------------------------------------------------------------

_base = np.arange(60, dtype=np.int32).reshape(3, 4, 5)
EXPORTERS = {
    "neg3d": lambda: _base[::-1, ::-2, ::-3],
    "neg1": lambda: _base.ravel()[::-1],
    "mv negstep": lambda: memoryview(bytearray(range(10)))[::-3],
    "mv cast": lambda: memoryview(bytearray(range(24))).cast("i", (2, 3)),
    "broadcast": lambda: np.broadcast_to(np.arange(3), (4, 3)),
    "broadcast 0-d": lambda: np.broadcast_to(np.float64(1.0), (5, 7)),
    "fortran": lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "0-dim": lambda: np.array(3.5),
    "zero-size": lambda: np.zeros((3, 0, 4)),
    "zero-size neg": lambda: np.zeros((3, 0, 4))[::-1],
    "zero-size huge strides": lambda: as_strided(np.zeros(1), (0, 5), (2**62, -2**62)),
    "bool": lambda: np.array([True, False]),
    "half neg": lambda: np.arange(4, dtype="e")[::-1],
    "big-endian": lambda: np.arange(4, dtype=">i8")[::-1],
    "complex neg": lambda: np.arange(3, dtype="c16")[::-1],
    "S3": lambda: np.array([b"abc", b"de"]),
    "transposed": lambda: np.arange(24.0).reshape(2, 3, 4).transpose(2, 0, 1),
    "array": lambda: array.array("d", [1, 2, 3]),
    "ctypes 2d": lambda: ((ctypes.c_int * 3) * 2)(),
    "bytes": lambda: b"xyz",
    "empty bytes": lambda: b"",
    "membuf slice": lambda: membuf.from_buffer(bytearray(b"abcdef"))[::-2],
}


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_from_buffer_keeps_the_exporters_layout(name):
    obj = EXPORTERS[name]()
    b = membuf.from_buffer(obj)
    with memoryview(obj) as expected, memoryview(b) as got:
        assert got.shape == expected.shape
        assert got.strides == expected.strides
        assert got.format == expected.format
        assert got.tobytes() == expected.tobytes()
        assert membuf.address_of(b) == membuf.address_of(obj)
    b.release()


def test_huge_strides_that_do_not_overflow_are_checked():
    big = as_strided(np.zeros(1), (1, 1), (2**62, -2**62))
    assert membuf.from_buffer(big).shape == (1, 1)
    with pytest.raises((ValueError, OverflowError)):
        membuf.from_buffer(as_strided(np.zeros(4, np.uint8), (2, 2), (2**62, 2**62)))


def test_cffi_objects_as_address():
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    for decl, init, fmt, shape, nbytes in [
        ("int[2][3]", None, "i", (2, 3), 24),
        ("char[]", 5, "B", (5,), 5),
        ("_Bool[3]", None, "?", (3,), 3),
        ("long double[2]", None, "B", (2 * ffi.sizeof("long double"),), None),
    ]:
        o = ffi.new(decl, init) if init is not None else ffi.new(decl)
        b = membuf.from_address(o)
        assert (b.format, b.shape) == (fmt, shape) and b.owner is o
        assert b.address == int(ffi.cast("uintptr_t", o))
        if nbytes is not None:
            assert b.nbytes == nbytes
    p = ffi.new("double *")
    b = membuf.from_address(p, 8)
    assert b.format == "d" and b.shape == (1,) and b.owner is p


# --------------------------------------------------------------------------
# Re-entrancy and GC: what holds
# --------------------------------------------------------------------------


def test_index_of_a_shape_entry_releasing_another_buffer():
    ba = bytearray(16)
    victim = membuf.from_buffer(ba)

    class Idx:
        def __index__(self):
            victim.release()
            return 16

    b = membuf.from_buffer(ba, shape=(Idx(),))
    assert victim.released and b.shape == (16,)
    b.release()
    assert _resizable(ba)


def test_index_of_the_address_releasing_the_owner_buffer():
    owner = membuf.from_buffer(bytearray(8))

    class Addr:
        def __index__(self):
            owner.release()
            return _ADDR

    b = membuf.from_address(Addr(), 8, owner=owner)
    assert b.owner is owner and owner.released  # from_address trusts the address: documented


def test_buffer_of_a_buffer_cycle_through_on_release_is_collected():
    calls = []
    box = []
    outer_ba = bytearray(8)
    inner = membuf.from_buffer(outer_ba, on_release=lambda box=box: calls.append("inner"))
    outer = membuf.from_buffer(inner, on_release=lambda: calls.append("outer"))
    box.append(outer)  # inner -> on_release -> box -> outer -> inner (held export)
    w = weakref.ref(outer)
    del inner, outer, box
    gc.collect()
    assert w() is None and sorted(calls) == ["inner", "outer"]
    assert _resizable(outer_ba)


def test_cycle_through_on_release_and_a_memoryview_is_kept_alive_documented_limitation():
    """design.md 'Garbage collection': a memoryview in the cycle ends its
    export only when cleared, finalize untracks on_release, so the cycle is
    immortal (on_release never runs, the exporter stays locked).  Holds for
    from_buffer as for from_address: documented, not a bug."""
    cb = Counter()
    ba = bytearray(16)

    class Holder:
        pass

    h = Holder()

    def onrel(h=h):
        cb()

    h.b = membuf.from_buffer(ba, on_release=onrel)
    h.mv = memoryview(h.b)
    del h, onrel
    gc.collect()
    gc.collect()
    assert cb.n == 0 and not _resizable(ba)


def test_weakref_callbacks_run_before_the_release_and_on_release_after_it():
    """The documented order (docs/design.md): a dying Buffer's weakref
    callbacks run first, while its memory is still held (so no callback can
    reach the dying object through a weak reference after its memory went
    back), then the release: on_release is the hook that runs after the
    export of the source has ended.  (memoryview does the opposite; with
    membuf, put what needs the source unlocked in on_release.)"""
    ba = bytearray(8)
    src = membuf.from_buffer(ba)
    calls = []
    b = membuf.from_buffer(src, on_release=lambda: calls.append(("on_release", src.exports)))
    weakref.finalize(b, lambda: calls.append(("finalize", src.exports)))
    del b
    gc.collect()
    assert calls == [("finalize", 1), ("on_release", 0)]
    src.release()
    assert _resizable(ba)


# --------------------------------------------------------------------------
# Behaviour vs docs
# --------------------------------------------------------------------------


def test_shape_accepts_only_tuple_or_list_though_the_stub_says_sequence():
    """membuf.pyi types shape/strides as Sequence[SupportsIndex]; the runtime
    (constructors.c:ssize_list_arg) takes only tuple or list and says "must
    be a tuple of ints" (also for a list's bad entries).  Documents the
    mismatch (range, array.array, numpy shapes-as-arrays are refused)."""
    with pytest.raises(TypeError, match="tuple of ints"):
        membuf.from_address(_ADDR, shape=range(2))
    assert membuf.from_address(_ADDR, shape=[2]).shape == (2,)


def test_readme_example():
    grid = (ctypes.c_double * 12)()
    typed = membuf.from_address(grid, shape=(3, 4), readonly=False)
    np.asarray(typed)[2, 3] = 1.5
    assert grid[11] == 1.5 and typed.owner is grid and typed.format == "d"
    data = bytearray(16)
    held = membuf.from_buffer(data, format="d", shape=(2,))
    with pytest.raises(BufferError):
        data.append(0)
    held.release()
    data.append(0)


def test_keywords_not_interned_and_duplicates():
    size_kw = "".join(["si", "ze"])
    assert membuf.from_address(_ADDR, **{size_kw: 4}).nbytes == 4
    with pytest.raises(TypeError, match="multiple values"):
        membuf.from_address(_ADDR, 4, **{size_kw: 4})
    with pytest.raises(TypeError, match="unexpected keyword"):
        membuf.from_buffer(_BA, obj=1)
