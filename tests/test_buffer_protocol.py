"""Contract line 8: every PyBUF_* request is answered the way CPython's own
exporters answer it -- `bytes`/`bytearray` for plain 1-D unsigned-byte
Buffers, memoryview / _testbuffer.ndarray for typed, shaped or strided ones.

Written in the style of CPython's Lib/test/test_buffer.py (test_ndarray_getbuf
/ verify_getbuf): a matrix of layouts x request flags, with CPython's
`_testbuffer` module as the oracle.  For every request the oracle exporter
and the membuf.Buffer over the same layout must both refuse (BufferError) or
both answer, and then answer the same -- seen by a consumer (`ndarray(obj,
getbuf=flags)`) and field by field in the raw Py_buffer (fakelib.getbuffer).
Every successful export must point at the C library's memory itself.

`_testbuffer` is imported unconditionally: without it this module fails to
import, which is a failure, not a skip.
"""

import ctypes
import struct
from dataclasses import dataclass

import pytest
from _testbuffer import (
    ND_WRITABLE,
    PyBUF_ANY_CONTIGUOUS,
    PyBUF_C_CONTIGUOUS,
    PyBUF_CONTIG,
    PyBUF_CONTIG_RO,
    PyBUF_F_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_FULL,
    PyBUF_FULL_RO,
    PyBUF_INDIRECT,
    PyBUF_ND,
    PyBUF_RECORDS,
    PyBUF_RECORDS_RO,
    PyBUF_SIMPLE,
    PyBUF_STRIDED,
    PyBUF_STRIDED_RO,
    PyBUF_STRIDES,
    PyBUF_WRITABLE,
    ndarray,
)

# --------------------------------------------------------------------------
# Request flags: {SIMPLE, ND, STRIDES, INDIRECT, C/F/ANY_CONTIGUOUS}
#                x {0, WRITABLE} x {0, FORMAT}
# --------------------------------------------------------------------------

BASE_REQUESTS = [
    ("SIMPLE", PyBUF_SIMPLE),
    ("ND", PyBUF_ND),
    ("STRIDES", PyBUF_STRIDES),
    ("INDIRECT", PyBUF_INDIRECT),
    ("C_CONTIGUOUS", PyBUF_C_CONTIGUOUS),
    ("F_CONTIGUOUS", PyBUF_F_CONTIGUOUS),
    ("ANY_CONTIGUOUS", PyBUF_ANY_CONTIGUOUS),
]

COMPOSITES = {
    "CONTIG": PyBUF_CONTIG,
    "CONTIG_RO": PyBUF_CONTIG_RO,
    "STRIDED": PyBUF_STRIDED,
    "STRIDED_RO": PyBUF_STRIDED_RO,
    "RECORDS": PyBUF_RECORDS,
    "RECORDS_RO": PyBUF_RECORDS_RO,
    "FULL": PyBUF_FULL,
    "FULL_RO": PyBUF_FULL_RO,
}


def _request_matrix():
    requests = []
    for base_name, base in BASE_REQUESTS:
        for w_name, w in (("", 0), ("|WRITABLE", PyBUF_WRITABLE)):
            for f_name, f in (("", 0), ("|FORMAT", PyBUF_FORMAT)):
                flags = base | w | f
                name = base_name + w_name + f_name
                aliases = [n for n, v in COMPOSITES.items() if v == flags]
                if aliases:
                    name += "=" + "=".join(aliases)
                requests.append((name, flags))
    return requests


REQUESTS = _request_matrix()
REQUEST_FLAGS = [flags for _, flags in REQUESTS]
REQUEST_IDS = [name for name, _ in REQUESTS]
WRITABLE_REQUESTS = [(n, f) for n, f in REQUESTS if f & PyBUF_WRITABLE]


def match(req, flag):
    return (req & flag) == flag


# --------------------------------------------------------------------------
# Layouts: each built through fakelib.from_spec and, identically, as oracle
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    id: str
    memlen: int  # bytes the C library hands out (fakelib fills byte i with i % 251)
    format: str | None = None  # None: the spec's format stays NULL ("B")
    shape: tuple | None = None  # None: the spec's shape stays NULL
    strides: tuple | None = None  # None: the spec's strides stay NULL
    null: bool = False  # ptr NULL (len 0)
    plain: bool = False  # plain 1-D unsigned bytes: answered like bytes
    oracles: tuple = ("ndarray", "memoryview")

    @property
    def fmt(self):
        return self.format or "B"

    @property
    def itemsize(self):
        return struct.calcsize(self.fmt)

    @property
    def empty(self):
        return self.memlen == 0 or (self.shape is not None and 0 in self.shape)

    @property
    def native(self):
        """memoryview can read and write items of this format."""
        return self.fmt in ("B", "h", "i", "d")


PLAIN = ("bytes",)

LAYOUTS = [
    # Plain 1-D unsigned bytes: answered like bytes (PyBuffer_FillInfo).
    Layout("bytes-1d", 16, plain=True, oracles=PLAIN),
    Layout("bytes-1d-B-shape", 16, "B", (16,), plain=True, oracles=PLAIN),
    Layout("bytes-1d-B-stride1", 16, "B", (16,), (1,), plain=True, oracles=PLAIN),
    Layout("bytes-empty", 0, None, (0,), plain=True, oracles=PLAIN),
    Layout("bytes-empty-null", 0, null=True, plain=True, oracles=PLAIN),
    # Typed, shaped or strided: answered like memoryview / ndarray.
    Layout("i-1d", 24, "i", (6,)),
    Layout("d-2d-C", 96, "d", (3, 4)),
    Layout("i-2d-C", 48, "i", (3, 4)),
    Layout("le-i-2d-C", 48, "<i", (3, 4)),
    Layout("d-2d-F", 96, "d", (3, 4), (8, 24)),
    Layout("h-1d-strided", 24, "h", (6,), (4,)),
    Layout("i-2d-strided", 96, "i", (2, 3), (48, 8)),
    Layout("d-2d-3x1-C-and-F", 24, "d", (3, 1), (8, 800)),
    Layout("h-3d-1x12x1", 24, "h", (1, 12, 1)),
    Layout("h-3d-C", 48, "h", (2, 3, 4)),
    Layout("i-3d-F", 96, "i", (4, 3, 2), (4, 16, 48)),
    Layout("i-3d-strided", 96, "i", (2, 2, 2), (48, 32, 8)),
    Layout("d-0dim", 8, "d", ()),
    Layout("d-empty", 0, "d", (0,)),
    Layout("d-empty-null", 0, "d", (0,), null=True),
    Layout("i-2d-empty", 0, "i", (0, 3)),
    # CPython disagrees with itself here: memoryview's 1-D contiguity test
    # (shape[0] == 1 or strides[0] == itemsize) calls an empty 1-D array with
    # stride 16 non-contiguous, PyBuffer_IsContiguous() and ndarray call it
    # contiguous.  membuf uses PyBuffer_IsContiguous(), so the request matrix
    # compares it with ndarray only (see test_empty_strided_1d_contiguity).
    Layout("d-empty-stride16", 0, "d", (0,), (16,), oracles=("ndarray",)),
    # Unsigned bytes that are not plain 1-D (shaped, strided, 0-dim): there is
    # no bytes equivalent, so they are answered like memoryview / ndarray.
    Layout("B-2d-C", 12, "B", (3, 4)),
    Layout("B-1d-strided", 12, "B", (6,), (2,)),
    Layout("B-0dim", 1, "B", ()),
]
LAYOUT_IDS = [layout.id for layout in LAYOUTS]
TYPED_LAYOUTS = [layout for layout in LAYOUTS if not layout.plain]
PLAIN_LAYOUTS = [layout for layout in LAYOUTS if layout.plain]
WRITE_LAYOUTS = [layout for layout in LAYOUTS if not layout.empty and layout.native]


def oracle_name(kind, writable):
    if kind == "bytes":
        return "bytearray" if writable else "bytes"
    return kind


# (layout, writable, oracle kind): every layout, read-only and writable,
# against each CPython exporter that applies to it.
CASES = [
    pytest.param(
        layout,
        writable,
        kind,
        id=f"{layout.id}-{'rw' if writable else 'ro'}-vs-{oracle_name(kind, writable)}",
    )
    for layout in LAYOUTS
    for writable in (False, True)
    for kind in layout.oracles
]
LAYOUT_RW = [
    pytest.param(layout, writable, id=f"{layout.id}-{'rw' if writable else 'ro'}")
    for layout in LAYOUTS
    for writable in (False, True)
]


def raw_bytes(layout):
    return bytes(i % 251 for i in range(layout.memlen))


def make_buffer(fakelib, layout, writable):
    """The layout as a membuf.Buffer over a fresh fakelib block: (buf, id)."""
    bid = fakelib.alloc(layout.memlen, null=layout.null)
    kwargs = {"flags": fakelib.WRITABLE if writable else 0}
    if layout.format is not None:
        kwargs["format"] = layout.format
    if layout.shape is not None:
        kwargs["ndim"] = len(layout.shape)
        kwargs["shape"] = layout.shape
    if layout.strides is not None:
        kwargs["strides"] = layout.strides
    buf = fakelib.from_spec(bid, **kwargs)
    return buf, bid


def make_ndarray(layout, writable):
    """The same layout over the same bytes as a _testbuffer.ndarray."""
    fmt = layout.fmt
    raw = raw_bytes(layout) or bytes(layout.itemsize)  # ndarray needs >= 1 item
    items = [t[0] for t in struct.iter_unpack(fmt, raw)]
    flags = ND_WRITABLE if writable else 0
    if layout.shape == ():
        return ndarray(items[0], shape=[], format=fmt, flags=flags)
    shape = list(layout.shape) if layout.shape is not None else [layout.memlen // layout.itemsize]
    kwargs = {"shape": shape, "format": fmt, "flags": flags}
    if layout.strides is not None:
        kwargs["strides"] = list(layout.strides)
    return ndarray(items, **kwargs)


def make_oracle(layout, writable, kind):
    if kind == "bytes":
        raw = raw_bytes(layout)
        return bytearray(raw) if writable else bytes(raw)
    nd = make_ndarray(layout, writable)
    return nd if kind == "ndarray" else memoryview(nd)


def outcome(fn):
    """("ok", value) or ("raises", exception type)."""
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - compared by type
        return ("raises", type(exc))


def cpython_getbuffer(fakelib, exporter, flags):
    """outcome(fakelib.getbuffer(exporter, flags)) for a CPython exporter.
    fakelib.getbuffer() asserts (C assert, abort) that a refused export leaves
    view.obj NULL; bytes/bytearray refuse through PyBuffer_FillInfo(), which
    does not touch view->obj.  So the refusal is learnt through ndarray()
    first, and fakelib.getbuffer() is only asked what CPython will answer."""
    probe = outcome(lambda: ndarray(exporter, getbuf=flags))
    if probe[0] == "raises":
        return probe
    del probe
    return ("ok", fakelib.getbuffer(exporter, flags))


def consumer_summary(nd):
    """What a consumer (an ndarray built from one export) sees."""
    return {
        "format": nd.format,
        "itemsize": nd.itemsize,
        "ndim": nd.ndim,
        "shape": nd.shape,
        "strides": nd.strides,
        "suboffsets": nd.suboffsets,
        "readonly": nd.readonly,
        "nbytes": nd.nbytes,
        "c_contiguous": nd.c_contiguous,
        "f_contiguous": nd.f_contiguous,
        "contiguous": nd.contiguous,
        "tolist": outcome(nd.tolist),
        "tobytes": outcome(nd.tobytes),
    }


def py_buffer_fields(d):
    """fakelib.getbuffer()'s dict without the address.  NULL (None) and an
    empty array (()) stay distinct: for ndim 0 CPython's exporters give NULL
    shape and strides, and Doc/c-api/buffer.rst says they MUST be NULL."""
    d = dict(d)
    del d["buf"]
    return d


def assert_well_formed_scalar(view):
    """Doc/c-api/buffer.rst, Py_buffer.ndim: "If it is 0, buf points to a
    single item representing a scalar.  In this case, shape, strides and
    suboffsets MUST be NULL."  Checked before a consumer walks the export:
    _testbuffer's ndarray.tolist() writes before a zero-length array (heap
    corruption, abort) when an ndim-0 export has a shape but no strides."""
    if view["ndim"] == 0:
        assert (view["shape"], view["strides"], view["suboffsets"]) == (None, None, None), view


def memoryview_summary(m):
    return {
        "format": m.format,
        "itemsize": m.itemsize,
        "ndim": m.ndim,
        "shape": m.shape,
        "strides": m.strides,
        "suboffsets": m.suboffsets,
        "readonly": m.readonly,
        "nbytes": m.nbytes,
        "c_contiguous": m.c_contiguous,
        "f_contiguous": m.f_contiguous,
        "contiguous": m.contiguous,
        "len": outcome(lambda: len(m)),
        "tolist": outcome(m.tolist),
        "tobytes": m.tobytes(),
    }


def last_index(shape):
    return tuple(n - 1 for n in shape)


WRITE_VALUES = {"B": 0xAB, "h": -321, "i": -123456, "d": -2.5}


# --------------------------------------------------------------------------
# The matrix itself
# --------------------------------------------------------------------------


def test_named_composites_are_in_the_matrix():
    for name, flags in COMPOSITES.items():
        assert flags in REQUEST_FLAGS, name
    assert len(set(REQUEST_FLAGS)) == len(REQUEST_FLAGS) == 28


@pytest.mark.parametrize("request_flags", REQUEST_FLAGS, ids=REQUEST_IDS)
@pytest.mark.parametrize("layout,writable,kind", CASES)
def test_consumer_sees_what_cpython_exporter_gives(fakelib, layout, writable, kind, request_flags):
    """ndarray(oracle, getbuf=flags) vs ndarray(buf, getbuf=flags)."""
    buf, _ = make_buffer(fakelib, layout, writable)
    oracle = make_oracle(layout, writable, kind)

    expected = outcome(lambda: ndarray(oracle, getbuf=request_flags))
    if expected[0] == "raises":
        assert expected[1] is BufferError  # the oracle refuses with BufferError only
        with pytest.raises(BufferError):
            ndarray(buf, getbuf=request_flags)
        assert buf.exports == 0  # a refused request leaves no export behind
        return

    assert_well_formed_scalar(fakelib.getbuffer(buf, request_flags))
    nd = ndarray(buf, getbuf=request_flags)
    assert nd.obj is buf
    assert buf.exports == 1
    assert nd.suboffsets == ()  # membuf never exports suboffsets
    assert consumer_summary(nd) == consumer_summary(expected[1])
    del nd
    assert buf.exports == 0


@pytest.mark.parametrize("request_flags", REQUEST_FLAGS, ids=REQUEST_IDS)
@pytest.mark.parametrize("layout,writable,kind", CASES)
def test_py_buffer_fields_match_cpython_exporter(fakelib, layout, writable, kind, request_flags):
    """The raw Py_buffer fields (len, readonly, itemsize, ndim, format, shape,
    strides, suboffsets) of one export, NULL-ness included."""
    buf, _ = make_buffer(fakelib, layout, writable)
    oracle = make_oracle(layout, writable, kind)

    expected = cpython_getbuffer(fakelib, oracle, request_flags)
    actual = outcome(lambda: fakelib.getbuffer(buf, request_flags))
    if expected[0] == "raises":
        assert expected[1] is BufferError
        assert actual == ("raises", BufferError)
    else:
        assert actual[0] == "ok", actual
        assert py_buffer_fields(actual[1]) == py_buffer_fields(expected[1])
        assert actual[1]["suboffsets"] is None
    assert buf.exports == 0


# --------------------------------------------------------------------------
# Zero-copy: addresses, not just contents
# --------------------------------------------------------------------------


def expected_address(fakelib, layout, buf, bid):
    if layout.null:
        # NULL memory: exports point at a non-NULL address (never buf == NULL)
        assert fakelib.address(bid) == 0
        assert buf.address != 0
        return buf.address
    assert buf.address == fakelib.address(bid)
    return fakelib.address(bid)


@pytest.mark.parametrize("request_flags", REQUEST_FLAGS, ids=REQUEST_IDS)
@pytest.mark.parametrize("layout,writable", LAYOUT_RW)
def test_every_export_points_at_the_memory(fakelib, layout, writable, request_flags):
    buf, bid = make_buffer(fakelib, layout, writable)
    address = expected_address(fakelib, layout, buf, bid)
    oracle = make_oracle(layout, writable, layout.oracles[0])

    result = outcome(lambda: fakelib.getbuffer(buf, request_flags))
    if result[0] == "raises":
        assert result[1] is BufferError
        # refused only where CPython refuses too
        assert cpython_getbuffer(fakelib, oracle, request_flags) == ("raises", BufferError)
        assert buf.exports == 0
        return
    view = result[1]
    assert view["buf"] == address
    if layout.memlen:
        # the bytes at the exported address are the C library's bytes
        assert ctypes.string_at(view["buf"], layout.memlen) == raw_bytes(layout)
    assert buf.exports == 0

    # A consumer built from the same request re-exports that very address.
    nd = ndarray(buf, getbuf=request_flags)
    reexport = outcome(lambda: fakelib.getbuffer(nd, PyBUF_FULL_RO))
    if reexport[0] == "raises":  # consumer without strides: ask for bytes
        reexport = outcome(lambda: fakelib.getbuffer(nd, PyBUF_SIMPLE))
    assert reexport[0] == "ok", reexport
    assert reexport[1]["buf"] == address
    assert buf.exports == 1
    del nd
    assert buf.exports == 0


@pytest.mark.parametrize("layout,writable", LAYOUT_RW)
def test_memoryview_points_at_the_memory(fakelib, layout, writable):
    buf, bid = make_buffer(fakelib, layout, writable)
    address = expected_address(fakelib, layout, buf, bid)
    with memoryview(buf) as m:
        assert m.obj is buf
        assert buf.exports == 1
        assert fakelib.getbuffer(m, PyBUF_FULL_RO)["buf"] == address
        assert m.tobytes() == memoryview(make_oracle(layout, writable, layout.oracles[0])).tobytes()
    assert buf.exports == 0


# --------------------------------------------------------------------------
# Export counting and strict release
# --------------------------------------------------------------------------


@pytest.mark.parametrize("request_flags", REQUEST_FLAGS, ids=REQUEST_IDS)
@pytest.mark.parametrize("layout,writable", LAYOUT_RW)
def test_live_export_blocks_strict_release(fakelib, layout, writable, request_flags):
    buf, bid = make_buffer(fakelib, layout, writable)
    oracle = make_oracle(layout, writable, layout.oracles[0])

    if outcome(lambda: ndarray(oracle, getbuf=request_flags))[0] == "raises":
        with pytest.raises(BufferError):
            ndarray(buf, getbuf=request_flags)
        # the refusal left no export: a strict release goes through at once
        assert buf.exports == 0
        buf.release()
        assert buf.released
        assert fakelib.releases(bid) == 1
        return

    nd = ndarray(buf, getbuf=request_flags)
    assert buf.exports == 1
    with pytest.raises(BufferError):
        buf.release()
    assert not buf.released
    assert fakelib.releases(bid) == 0
    assert nd.tobytes() == ndarray(oracle, getbuf=request_flags).tobytes()  # still usable
    del nd
    assert buf.exports == 0
    buf.release()
    assert buf.released
    assert fakelib.releases(bid) == 1


@pytest.mark.parametrize("layout,writable", LAYOUT_RW)
def test_simultaneous_exports_are_counted(fakelib, layout, writable):
    buf, _ = make_buffer(fakelib, layout, writable)
    consumers = [
        ndarray(buf, getbuf=PyBUF_FULL_RO),
        memoryview(buf),
        ndarray(buf, getbuf=PyBUF_RECORDS_RO),
    ]
    assert buf.exports == 3
    with pytest.raises(BufferError):
        buf.release()
    consumers[1].release()
    assert buf.exports == 2
    del consumers[0]
    assert buf.exports == 1
    consumers.clear()
    assert buf.exports == 0
    buf.release()
    assert buf.released


# --------------------------------------------------------------------------
# Writability
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_flags", [f for _, f in WRITABLE_REQUESTS], ids=[n for n, _ in WRITABLE_REQUESTS]
)
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_writable_request_on_readonly_buffer_raises(fakelib, layout, request_flags):
    buf, _ = make_buffer(fakelib, layout, False)
    with pytest.raises(BufferError):
        fakelib.getbuffer(buf, request_flags)
    with pytest.raises(BufferError):
        ndarray(buf, getbuf=request_flags)
    assert buf.exports == 0
    # the same request without WRITABLE is answered read-only where CPython answers it
    read_request = request_flags & ~PyBUF_WRITABLE
    oracle = make_oracle(layout, False, layout.oracles[0])
    if cpython_getbuffer(fakelib, oracle, read_request)[0] == "ok":
        assert fakelib.getbuffer(buf, read_request)["readonly"] == 1
    else:
        with pytest.raises(BufferError):
            fakelib.getbuffer(buf, read_request)


@pytest.mark.parametrize("layout", WRITE_LAYOUTS, ids=lambda lay: lay.id)
def test_readonly_buffer_cannot_be_written_through_memoryview(fakelib, layout):
    buf, bid = make_buffer(fakelib, layout, False)
    m = memoryview(buf)
    assert m.readonly
    with pytest.raises(TypeError):
        m[last_index(m.shape)] = m[last_index(m.shape)]
    m.release()
    assert ctypes.string_at(fakelib.address(bid), layout.memlen) == raw_bytes(layout)


@pytest.mark.parametrize("layout", WRITE_LAYOUTS, ids=lambda lay: lay.id)
def test_write_through_memoryview_is_visible_at_the_address(fakelib, layout):
    buf, bid = make_buffer(fakelib, layout, True)
    oracle = make_oracle(layout, True, layout.oracles[0])
    mo = memoryview(oracle)
    index = last_index(mo.shape)
    value = WRITE_VALUES[layout.fmt]

    with memoryview(buf) as m:
        assert not m.readonly
        m[index] = value
        assert m[index] == value
    mo[index] = value

    # read back through the Buffer itself ...
    item = buf[index[0]] if len(index) == 1 else buf[index]
    assert item == value
    assert buf.tobytes() == mo.tobytes()
    assert bytes(memoryview(buf)) == mo.tobytes()
    # ... and straight from the C library's memory
    expected = bytearray(raw_bytes(layout))
    offset = sum(i * s for i, s in zip(index, mo.strides))
    struct.pack_into(layout.fmt, expected, offset, value)
    assert ctypes.string_at(fakelib.address(bid), layout.memlen) == bytes(expected)


STRIDED_WRITE_REQUESTS = [
    (n, f) for n, f in REQUESTS if match(f, PyBUF_STRIDES | PyBUF_WRITABLE | PyBUF_FORMAT)
]


@pytest.mark.parametrize(
    "request_flags",
    [f for _, f in STRIDED_WRITE_REQUESTS],
    ids=[n for n, _ in STRIDED_WRITE_REQUESTS],
)
@pytest.mark.parametrize("layout", WRITE_LAYOUTS, ids=lambda lay: lay.id)
def test_write_through_consumer_export_is_visible(fakelib, layout, request_flags):
    """A writable export handed to a consumer (ndarray), written through a
    memoryview of that consumer: the write lands in the C library's memory."""
    buf, bid = make_buffer(fakelib, layout, True)
    oracle = make_oracle(layout, True, layout.oracles[0])

    expected = outcome(lambda: ndarray(oracle, getbuf=request_flags))
    if expected[0] == "raises":
        with pytest.raises(BufferError):
            ndarray(buf, getbuf=request_flags)
        assert buf.exports == 0
        return

    nd = ndarray(buf, getbuf=request_flags)
    assert not nd.readonly
    value = WRITE_VALUES[layout.fmt]
    m, mo = memoryview(nd), memoryview(expected[1])
    index = last_index(mo.shape)
    m[index] = value
    mo[index] = value
    offset = sum(i * s for i, s in zip(index, mo.strides))
    m.release()
    del nd
    assert buf.exports == 0

    item = buf[index[0]] if len(index) == 1 else buf[index]
    assert item == value
    assert buf.tobytes() == memoryview(oracle).tobytes()
    expected_raw = bytearray(raw_bytes(layout))
    struct.pack_into(layout.fmt, expected_raw, offset, value)
    assert ctypes.string_at(fakelib.address(bid), layout.memlen) == bytes(expected_raw)


# --------------------------------------------------------------------------
# memoryview(buf) vs memoryview(oracle)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("layout,writable", LAYOUT_RW)
def test_memoryview_matches_cpython(fakelib, layout, writable):
    buf, _ = make_buffer(fakelib, layout, writable)
    kind = "bytes" if layout.plain else "ndarray"
    with memoryview(buf) as m, memoryview(make_oracle(layout, writable, kind)) as mo:
        summary, expected = memoryview_summary(m), memoryview_summary(mo)
        if layout.id == "d-empty-stride16":
            # memoryview computes its own flags for both: same quirk on both sides
            assert (summary["c_contiguous"], expected["c_contiguous"]) == (False, False)
        assert summary == expected
        assert m == mo


@pytest.mark.parametrize("layout,writable", LAYOUT_RW)
def test_memoryview_cast_to_unsigned_bytes(fakelib, layout, writable):
    """memoryview.cast() works on C-contiguous views only, and not on
    multi-dimensional views with a zero in the shape (CPython's rules): every
    such layout casts to 'B' and shows the raw bytes; the others are refused
    exactly as the oracle's memoryview refuses."""
    buf, _ = make_buffer(fakelib, layout, writable)
    kind = "bytes" if layout.plain else "ndarray"
    oracle = make_oracle(layout, writable, kind)
    with memoryview(buf) as m, memoryview(oracle) as mo:
        expected = outcome(lambda: mo.cast("B").tolist())
        actual = outcome(lambda: m.cast("B").tolist())
        assert actual == expected
        if mo.c_contiguous and 0 not in mo.shape:
            assert expected[0] == "ok"
        if expected[0] == "ok":
            assert bytes(actual[1]) == mo.tobytes()
            with m.cast("B") as flat:
                assert flat.obj is buf
                assert flat.nbytes == buf.nbytes
                assert flat.readonly == (not writable)
        else:
            # CPython refuses casts of non-C-contiguous views and of views
            # with zeros in the shape
            assert expected == ("raises", TypeError)
            assert not mo.c_contiguous or 0 in mo.shape
    assert buf.exports == 0


@pytest.mark.parametrize("layout,writable", LAYOUT_RW)
def test_buffer_metadata_matches_cpython(fakelib, layout, writable):
    buf, _ = make_buffer(fakelib, layout, writable)
    nd = make_ndarray(layout, writable)
    assert buf.format == nd.format
    assert buf.itemsize == nd.itemsize
    assert buf.ndim == nd.ndim
    assert buf.shape == nd.shape
    assert buf.strides == nd.strides
    assert buf.nbytes == nd.nbytes
    assert buf.readonly == nd.readonly
    assert (buf.c_contiguous, buf.f_contiguous, buf.contiguous) == (
        nd.c_contiguous,
        nd.f_contiguous,
        nd.contiguous,
    )


# --------------------------------------------------------------------------
# Where CPython's exporters disagree among themselves
# --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", PLAIN_LAYOUTS, ids=lambda lay: lay.id)
@pytest.mark.parametrize("writable", [False, True], ids=["ro", "rw"])
def test_plain_bytes_follow_bytes_where_ndarray_differs(fakelib, layout, writable):
    """bytes/bytearray (PyBuffer_FillInfo) answer PyBUF_SIMPLE|PyBUF_FORMAT
    (and its WRITABLE variant) with format "B"; memoryview and ndarray refuse
    any FORMAT request without ND.  That is the only disagreement for a plain
    1-D byte buffer, and membuf follows bytes there."""
    buf, _ = make_buffer(fakelib, layout, writable)
    as_bytes = make_oracle(layout, writable, "bytes")
    as_ndarray = make_ndarray(layout, writable)

    disagree = []
    for name, flags in REQUESTS:
        by_bytes = cpython_getbuffer(fakelib, as_bytes, flags)
        by_ndarray = cpython_getbuffer(fakelib, as_ndarray, flags)
        if by_bytes[0] != by_ndarray[0]:
            disagree.append(name)
            assert by_bytes[0] == "ok" and by_ndarray == ("raises", BufferError)
            ours = fakelib.getbuffer(buf, flags)
            assert py_buffer_fields(ours) == py_buffer_fields(by_bytes[1])
            assert ours["format"] == "B" and ours["shape"] is None
    expected = ["SIMPLE|FORMAT", "SIMPLE|WRITABLE|FORMAT"] if writable else ["SIMPLE|FORMAT"]
    assert disagree == expected


@pytest.mark.parametrize("writable", [False, True], ids=["ro", "rw"])
def test_empty_strided_1d_contiguity(fakelib, writable):
    """An empty 1-D layout with a stride other than the itemsize:
    PyBuffer_IsContiguous() (and ndarray) say contiguous, memoryview's 1-D
    shortcut says not.  membuf answers contiguity requests by
    PyBuffer_IsContiguous(), i.e. like ndarray."""
    (layout,) = [lay for lay in LAYOUTS if lay.id == "d-empty-stride16"]
    buf, _ = make_buffer(fakelib, layout, writable)
    nd = make_ndarray(layout, writable)
    mv = memoryview(nd)
    for flags in (PyBUF_C_CONTIGUOUS, PyBUF_F_CONTIGUOUS, PyBUF_ANY_CONTIGUOUS, PyBUF_CONTIG_RO):
        assert cpython_getbuffer(fakelib, nd, flags)[0] == "ok"
        assert cpython_getbuffer(fakelib, mv, flags) == ("raises", BufferError)
        ours = fakelib.getbuffer(buf, flags)
        assert py_buffer_fields(ours) == py_buffer_fields(fakelib.getbuffer(nd, flags))
    assert buf.exports == 0
