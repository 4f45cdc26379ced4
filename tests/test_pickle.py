"""Pickling: every protocol round-trips a Buffer (format, shape, readonly,
contents); protocol 5 with a buffer_callback hands the memory out-of-band
without a copy; the loaded Buffer holds an export of what pickle gave it;
copy.copy / copy.deepcopy make independent copies, as for bytearray."""

import copy
import multiprocessing
import pickle
import struct

import pytest

import membuf
from membuf._membuf import _rebuild

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
_PATTERN = bytes(range(251))


def fakelib_bytes(n):
    """What fakelib puts in a block of n bytes: byte i is i % 251."""
    return (_PATTERN * (n // 251 + 1))[:n]


def released_cleanly(fakelib, buf, block_id):
    assert buf.exports == 0
    buf.release()
    return fakelib.releases(block_id) == 1


# (format, shape) of the Buffers every round trip is tried on
LAYOUTS = {
    "bytes": ("B", (96,)),
    "int32-2d": ("i", (4, 6)),
    "double-3d": ("d", (2, 3, 2)),
    "0-dim": ("q", ()),
    "complex": ("Zd", (3,)),
    "empty": ("h", (0, 5)),
}


def make(fakelib, layout, writable):
    fmt, shape = LAYOUTS[layout]
    size = 1
    for n in shape:
        size *= n
    itemsize = 16 if fmt == "Zd" else struct.calcsize(fmt)
    block_id = fakelib.alloc(size * itemsize)
    buf = fakelib.from_spec(block_id, format=fmt, ndim=len(shape), shape=shape,
                            flags=fakelib.WRITABLE if writable else 0)
    return buf, block_id


def same_layout(a, b):
    return (a.format, a.shape, a.itemsize, a.nbytes, a.readonly) == \
        (b.format, b.shape, b.itemsize, b.nbytes, b.readonly)


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("writable", [False, True], ids=["readonly", "writable"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_round_trip_every_protocol_in_band(fakelib, protocol, layout, writable):
    buf, block_id = make(fakelib, layout, writable)
    data = pickle.dumps(buf, protocol=protocol)
    loaded = pickle.loads(data)
    assert type(loaded) is membuf.Buffer
    assert same_layout(loaded, buf)
    assert loaded.c_contiguous
    assert loaded.tobytes() == buf.tobytes()
    if buf.nbytes:
        assert loaded.address != buf.address  # in-band: a copy
    # in-band: the copy is owned by the loaded Buffer; bytearray if writable
    assert type(loaded.owner) is (bytearray if writable else bytes)
    assert buf.exports == 0
    loaded.release()
    assert loaded.owner is None
    assert released_cleanly(fakelib, buf, block_id)


@pytest.mark.parametrize("writable", [False, True], ids=["readonly", "writable"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_of_band_is_zero_copy(fakelib, layout, writable):
    buf, block_id = make(fakelib, layout, writable)
    buffers = []
    data = pickle.dumps(buf, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1 and isinstance(buffers[0], pickle.PickleBuffer)
    assert buf.tobytes() not in data or buf.nbytes == 0  # the memory is not in the pickle
    assert len(data) < 200
    loaded = pickle.loads(data, buffers=buffers)
    assert type(loaded) is membuf.Buffer
    assert same_layout(loaded, buf)
    assert loaded.address == buf.address  # zero-copy
    assert loaded.tobytes() == buf.tobytes()
    # the PickleBuffer holds one export, the loaded Buffer (through it) another
    assert buf.exports == 2
    with pytest.raises(BufferError):
        buf.release()
    loaded.release()
    del buffers[:]
    assert released_cleanly(fakelib, buf, block_id)


def test_out_of_band_writes_are_shared(fakelib):
    block_id = fakelib.alloc(8 * 12)
    buf = fakelib.from_spec(block_id, format="d", ndim=2, shape=(3, 4), flags=fakelib.WRITABLE)
    buffers = []
    loaded = pickle.loads(pickle.dumps(buf, protocol=5, buffer_callback=buffers.append),
                          buffers=buffers)
    assert not loaded.readonly
    loaded[1, 2] = 2.5
    assert buf[1, 2] == 2.5
    buf[0, 0] = -1.0
    assert loaded[0, 0] == -1.0
    loaded.release()
    del buffers
    assert released_cleanly(fakelib, buf, block_id)


def test_protocol_5_without_callback_is_in_band(fakelib):
    ro, ro_id = make(fakelib, "int32-2d", writable=False)
    rw, rw_id = make(fakelib, "int32-2d", writable=True)
    for buf, kind in ((ro, bytes), (rw, bytearray)):
        data = pickle.dumps(buf, protocol=5)
        assert buf.tobytes() in data
        loaded = pickle.loads(data)
        assert type(loaded.owner) is kind  # pickle wrote bytes / bytearray in-band
        assert loaded.address == membuf.address_of(loaded.owner)  # wrapped, not copied again
        assert same_layout(loaded, buf) and loaded.tobytes() == buf.tobytes()
        assert buf.exports == 0
    assert released_cleanly(fakelib, ro, ro_id)
    assert released_cleanly(fakelib, rw, rw_id)


def test_callback_returning_true_keeps_the_buffer_in_band(fakelib):
    buf, block_id = make(fakelib, "bytes", writable=False)
    seen = []
    data = pickle.dumps(buf, protocol=5, buffer_callback=lambda pb: seen.append(pb) or True)
    assert len(seen) == 1
    loaded = pickle.loads(data)  # no buffers needed
    assert loaded == buf and loaded.address != buf.address
    del seen
    assert released_cleanly(fakelib, buf, block_id)


def test_out_of_band_without_buffers_fails_to_load(fakelib):
    buf, block_id = make(fakelib, "bytes", writable=False)
    buffers = []
    data = pickle.dumps(buf, protocol=5, buffer_callback=buffers.append)
    with pytest.raises(pickle.UnpicklingError, match="out-of-band"):
        pickle.loads(data)
    del buffers
    assert released_cleanly(fakelib, buf, block_id)


# ---------------------------------------------------------------------------
# what the loaded Buffer holds, and its writability
# ---------------------------------------------------------------------------


def test_writability_follows_the_memory_handed_back(fakelib):
    """NumPy's rule: a writable original comes back writable only over
    writable memory; a read-only original never comes back writable."""
    rw, rw_id = make(fakelib, "double-3d", writable=True)
    ro, ro_id = make(fakelib, "double-3d", writable=False)
    frames = []
    data_rw = pickle.dumps(rw, protocol=5, buffer_callback=frames.append)
    data_ro = pickle.dumps(ro, protocol=5, buffer_callback=frames.append)
    raw = frames[0].raw().tobytes()
    # received as bytes (e.g. off a socket): read-only, zero-copy over the bytes
    from_bytes = pickle.loads(data_rw, buffers=[raw])
    assert from_bytes.readonly and from_bytes.owner is raw
    assert from_bytes.address == membuf.address_of(raw)
    # received as bytearray: writable again
    received = bytearray(raw)
    from_bytearray = pickle.loads(data_rw, buffers=[received])
    assert not from_bytearray.readonly and from_bytearray.owner is received
    from_bytearray[0, 0, 1] = 7.0
    assert memoryview(received).cast("d")[1] == 7.0
    # a read-only original stays read-only over writable memory
    again = pickle.loads(data_ro, buffers=[bytearray(raw)])
    assert again.readonly
    with pytest.raises(TypeError):
        again[0, 0, 0] = 1.0
    for b in (from_bytes, from_bytearray, again):
        assert b.shape == (2, 3, 2) and b.format == "d"
    del frames
    assert released_cleanly(fakelib, rw, rw_id)
    assert released_cleanly(fakelib, ro, ro_id)


def test_loaded_buffer_pins_the_received_memory():
    """The loaded Buffer holds an export of what it wraps: a bytearray cannot
    be resized (moved) under it until it is released."""
    received = bytearray(b"0123456789")
    loaded = _rebuild(received, "B", (10,), False)
    assert loaded.address == membuf.address_of(received)
    with pytest.raises(BufferError):
        received.extend(b"more")
    loaded.release()
    received.extend(b"more")  # the export has ended
    assert received == b"0123456789more"


def test_loaded_buffer_keeps_a_deferred_original_alive(fakelib):
    buf, block_id = make(fakelib, "bytes", writable=False)
    buffers = []
    loaded = pickle.loads(pickle.dumps(buf, protocol=5, buffer_callback=buffers.append),
                          buffers=buffers)
    del buffers
    buf.release(defer=True)
    assert fakelib.releases(block_id) == 0
    assert loaded.tobytes() == fakelib_bytes(96)
    del loaded
    assert fakelib.releases(block_id) == 1


# ---------------------------------------------------------------------------
# layouts that cannot travel as they are
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_non_contiguous_slices_travel_in_band_in_c_order(fakelib, protocol):
    block_id = fakelib.alloc(4 * 6 * 8)
    buf = fakelib.from_spec(block_id, format="i", ndim=2, shape=(6, 8))
    for part in (buf[::2], buf[::-3], buf[1:5:2]):
        assert not part.c_contiguous
        called = []
        data = pickle.dumps(part, protocol=protocol, buffer_callback=called.append
                            if protocol >= 5 else None)
        assert called == []  # nothing out-of-band: the memory is not contiguous
        loaded = pickle.loads(data)
        assert loaded.shape == part.shape and loaded.format == "i"
        assert loaded.c_contiguous and loaded.strides == (32, 4)
        assert loaded.tobytes() == part.tobytes()
        assert loaded == part
        del part, loaded
    plain = fakelib.from_spec(block_id, release=False)
    stepped = plain[1::3]  # plain bytes with a step
    loaded = pickle.loads(pickle.dumps(stepped, protocol=protocol))
    assert loaded.tobytes() == fakelib_bytes(4 * 6 * 8)[1::3] and loaded.strides == (1,)
    del stepped
    plain.release()
    assert released_cleanly(fakelib, buf, block_id)


def test_fortran_layout_travels_in_band_in_c_order(fakelib):
    block_id = fakelib.alloc(8 * 12)
    fortran = fakelib.from_spec(block_id, format="q", ndim=2, shape=(3, 4), strides=(8, 24))
    assert fortran.f_contiguous and not fortran.c_contiguous
    called = []
    loaded = pickle.loads(pickle.dumps(fortran, protocol=5, buffer_callback=called.append))
    assert called == []
    assert loaded.strides == (32, 8) and loaded == fortran
    assert released_cleanly(fakelib, fortran, block_id)


# ---------------------------------------------------------------------------
# released Buffers refuse
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_released_buffer_refuses_to_pickle(fakelib, protocol):
    buf, block_id = make(fakelib, "int32-2d", writable=False)
    buf.release()
    with pytest.raises(ValueError, match="^operation forbidden on released membuf.Buffer"):
        pickle.dumps(buf, protocol=protocol)
    with pytest.raises(ValueError, match="released"):
        copy.copy(buf)
    with pytest.raises(ValueError, match="released"):
        copy.deepcopy(buf)
    assert fakelib.releases(block_id) == 1


def test_release_pending_buffer_refuses_to_pickle(fakelib):
    buf, block_id = make(fakelib, "bytes", writable=False)
    view = memoryview(buf)
    buf.release(defer=True)
    with pytest.raises(ValueError, match="pending release"):
        pickle.dumps(buf, protocol=5)
    view.release()
    assert fakelib.releases(block_id) == 1


# ---------------------------------------------------------------------------
# copy.copy / copy.deepcopy: independent copies, like bytearray
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
@pytest.mark.parametrize("writable", [False, True], ids=["readonly", "writable"])
def test_copy_is_an_independent_copy(fakelib, copier, writable):
    block_id = fakelib.alloc(8 * 6)
    buf = fakelib.from_spec(block_id, format="d", ndim=2, shape=(2, 3),
                            flags=fakelib.WRITABLE if writable else 0)
    dup = copier(buf)
    assert type(dup) is membuf.Buffer and dup is not buf
    assert same_layout(dup, buf) and dup == buf
    assert dup.address != buf.address
    assert buf.exports == 0  # the copy holds nothing of the original
    if writable:
        dup[0, 1] = 42.0
        assert buf[0, 1] != 42.0
    assert released_cleanly(fakelib, buf, block_id)
    assert dup.tobytes() is not None  # the copy outlives the original's memory


def test_copy_of_a_bytearray_like_buffer_matches_bytearray():
    data = bytearray(b"abcdef")
    buf = membuf.from_address(membuf.address_of(data), len(data), readonly=False, owner=data)
    for original in (data, buf):
        dup = copy.copy(original)
        assert dup == b"abcdef" and dup is not original
        dup[0] = ord("z")
        assert original[0] == ord("a")


# ---------------------------------------------------------------------------
# _rebuild validates what an (untrusted) pickle hands it
# ---------------------------------------------------------------------------


class Forged:
    """Pickles as a call of _rebuild with arbitrary arguments."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return _rebuild, self.args


@pytest.mark.parametrize("args, exc, message", [
    ((b"abc", "d", (1,), True), ValueError,
     r"^a C-contiguous layout of shape and format 'd' covers 8 bytes, but len is 3$"),
    ((b"abcdefgh", "d", (2,), True), ValueError, r"covers 16 bytes, but len is 8$"),
    ((b"abcdefgh", "B", (), True), ValueError, r"covers 1 bytes, but len is 8$"),
    ((b"abcdefgh", "Y", (8,), True), ValueError, r"^invalid format 'Y'"),
    ((b"abcdefgh", "", (8,), True), ValueError, r"^invalid format ''"),
    ((b"abcdefgh", "B\x00", (8,), True), ValueError, r"^_rebuild: format contains a NUL"),
    ((b"abcdefgh", "B", (-8,), True), ValueError, r"^shape\[0\] is negative \(-8\)$"),
    ((b"abcdefgh", "B", (1,) * 65, True), ValueError,
     r"^_rebuild: shape has 65 dimensions \(at most 64\)$"),
    ((b"abcdefgh", "B", (2**64,), True), OverflowError, r"too large to convert"),
    ((b"abcdefgh", "B", (8.0,), True), TypeError, r"^_rebuild: shape\[0\] must be an int, not float$"),
    ((b"abcdefgh", "B", (8, True), True), TypeError, r"^_rebuild: shape\[1\] must be an int, not bool$"),
    ((b"abcdefgh", "B", [8], True), TypeError, r"must be tuple, not list"),
    ((b"abcdefgh", "B", (8,), 1), TypeError, r"must be bool, not int"),
    ((b"abcdefgh", b"B", (8,), True), TypeError, r"must be str, not bytes"),
    (("abcdefgh", "B", (8,), True), TypeError, r"a bytes-like object is required"),
    ((b"abcdefgh", "B", (8,)), TypeError, r"takes exactly 4 arguments"),
])
def test_rebuild_rejects_bad_arguments(args, exc, message):
    with pytest.raises(exc, match=message):
        _rebuild(*args)
    with pytest.raises(exc, match=message):
        pickle.loads(pickle.dumps(Forged(*args)))


def test_rebuild_rejects_non_contiguous_memory():
    strided = memoryview(bytearray(16))[::2]
    with pytest.raises(BufferError, match="not C-contiguous"):
        _rebuild(strided, "B", (8,), True)


def test_rebuild_ends_its_export_when_it_fails():
    received = bytearray(b"abc")
    with pytest.raises(ValueError):
        _rebuild(received, "d", (1,), False)
    received.extend(b"d")  # no export left behind
    assert received == b"abcd"


def test_pickle_names_a_stable_function(fakelib):
    buf, block_id = make(fakelib, "bytes", writable=False)
    data = pickle.dumps(buf, protocol=2)
    assert b"membuf._membuf" in data and b"_rebuild" in data
    reduced = buf.__reduce_ex__(2)
    assert reduced == (_rebuild, (buf.tobytes(), "B", (96,), True))
    assert released_cleanly(fakelib, buf, block_id)


# ---------------------------------------------------------------------------
# multiprocessing: a fresh interpreter (spawn) receives Buffers
# ---------------------------------------------------------------------------


def _echo_child(conn):
    """In the child: receive a Buffer in-band, then one out-of-band as raw
    frames (what Dask and Ray do), and describe both."""
    buf = conn.recv()
    conn.send((type(buf).__name__, buf.format, buf.shape, buf.readonly, buf.tobytes()))
    conn.send(buf)  # and back
    header = conn.recv_bytes()
    frame = conn.recv_bytes()
    oob = pickle.loads(header, buffers=[frame])
    conn.send((type(oob).__name__, oob.format, oob.shape, oob.readonly,
               oob.address == membuf.address_of(frame), oob.tobytes()))
    conn.close()


def test_multiprocessing_pipe_round_trip(fakelib):
    block_id = fakelib.alloc(4 * 64)
    buf = fakelib.from_spec(block_id, format="i", ndim=2, shape=(8, 8), flags=fakelib.WRITABLE)
    expected = buf.tobytes()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo_child, args=(child,))
    proc.start()
    child.close()
    parent.send(buf)
    assert parent.recv() == ("Buffer", "i", (8, 8), False, expected)
    back = parent.recv()
    assert type(back) is membuf.Buffer and back == buf and back.shape == (8, 8)
    frames = []
    header = pickle.dumps(buf, protocol=5, buffer_callback=frames.append)
    parent.send_bytes(header)
    parent.send_bytes(frames[0].raw())
    # a frame received as bytes comes back read-only, wrapped where it landed
    assert parent.recv() == ("Buffer", "i", (8, 8), True, True, expected)
    proc.join()
    assert proc.exitcode == 0
    del frames
    assert released_cleanly(fakelib, buf, block_id)


def test_cycle_through_the_received_object_is_collected():
    """The rebuilt Buffer's export of the received object does not keep a
    reference of its own beside the owner: a cycle back from that object is
    collected, and its export ended (contract 10)."""
    import gc
    import weakref

    class Frame(bytearray):  # a received frame that can point back at the Buffer
        pass

    src = bytearray(b"abcdefgh")
    original = membuf.from_address(membuf.address_of(src), 8, owner=src, readonly=False)
    frames = []
    header = pickle.dumps(original, protocol=5, buffer_callback=frames.append)
    data = Frame(frames[0].raw())
    loaded = pickle.loads(header, buffers=[data])
    assert loaded.owner is data and loaded.address == membuf.address_of(data)
    data.back = loaded
    alive = weakref.ref(data)
    del loaded, data
    gc.collect()
    assert alive() is None
