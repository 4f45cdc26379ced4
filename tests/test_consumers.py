"""Real consumers of the buffer protocol see the Buffer's memory itself,
without copying (where they keep a view) or with exactly its bytes (where
they copy), hold an export exactly as long as they use it, and give it back:
after each of them the Buffer can be released strictly."""

import array
import base64
import binascii
import codecs
import ctypes
import hashlib
import io
import os
import pickle
import random
import re
import socket
import struct
import threading
import zlib

import numpy as np
import pytest

import membuf

MiB = 1 << 20
BIG = 3 * MiB + 17  # odd on purpose
_PATTERN = bytes(range(251))


def fakelib_bytes(n):
    """What fakelib puts in a block of n bytes: byte i is i % 251."""
    return (_PATTERN * (n // 251 + 1))[:n]


@pytest.fixture
def big(fakelib):
    """(read-only Buffer of BIG bytes, block id, expected content)."""
    buf, block_id = fakelib.new(BIG)
    return buf, block_id, fakelib_bytes(BIG)


@pytest.fixture
def big_writable(fakelib):
    buf, block_id = fakelib.new(BIG, fakelib.WRITABLE)
    return buf, block_id, fakelib_bytes(BIG)


def released_cleanly(fakelib, buf, block_id):
    """The consumer gave its export back: strict release goes through."""
    assert buf.exports == 0
    buf.release()
    return fakelib.releases(block_id) == 1


class Malloced:
    """2 MiB of random bytes in libc malloc memory, freed by on_release."""

    def __init__(self, size=2 * MiB, seed=1234, readonly=True):
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.restype = None
        libc.free.argtypes = [ctypes.c_void_p]
        self.data = random.Random(seed).randbytes(size)
        self.address = libc.malloc(size)
        assert self.address
        ctypes.memmove(self.address, self.data, size)
        self.freed = 0

        def on_release():
            self.freed += 1
            libc.free(self.address)

        self.buf = membuf.from_address(self.address, size, readonly=readonly,
                                       on_release=on_release)

    def memory(self, n=None):
        """The current bytes at the address (read through ctypes)."""
        return ctypes.string_at(self.address, len(self.data) if n is None else n)


# ---------------------------------------------------------------------------
# memoryview, bytes, bytearray
# ---------------------------------------------------------------------------


def test_memoryview_sees_the_same_memory(fakelib, big):
    buf, block_id, expected = big
    view = memoryview(buf)
    assert membuf.address_of(view) == buf.address == fakelib.address(block_id)
    assert view.obj is buf
    assert view.nbytes == BIG
    assert view.readonly
    assert view.format == "B" and view.itemsize == 1
    assert view.shape == (BIG,) and view.strides == (1,)
    assert view.c_contiguous
    assert view.tobytes() == expected
    part = view[1000:2000]
    assert membuf.address_of(part) == buf.address + 1000
    cast = view[: (BIG // 8) * 8].cast("Q")
    assert membuf.address_of(cast) == buf.address
    assert cast[1] == struct.unpack_from("Q", expected, 8)[0]
    assert buf.exports == 1  # one export, shared by all derived views
    cast.release()
    part.release()
    view.release()
    assert released_cleanly(fakelib, buf, block_id)


def test_memoryview_context_manager(fakelib, big):
    buf, block_id, expected = big
    with memoryview(buf) as view:
        assert buf.exports == 1
        assert view[-1] == expected[-1]
    assert released_cleanly(fakelib, buf, block_id)


def test_bytes_and_bytearray_are_equal_copies(fakelib, big_writable):
    buf, block_id, expected = big_writable
    copy = bytes(buf)
    mutable = bytearray(buf)
    assert copy == expected
    assert mutable == expected
    assert membuf.address_of(copy) != buf.address
    assert membuf.address_of(mutable) != buf.address
    buf[0] = (expected[0] + 1) % 256  # the copies do not follow the memory
    assert copy[0] == expected[0] and mutable[0] == expected[0]
    assert released_cleanly(fakelib, buf, block_id)


def test_bytes_operations_accept_the_buffer(fakelib, big):
    buf, block_id, expected = big
    assert b"".join([buf, buf[:10]]) == expected + expected[:10]
    assert b"-".join([buf[:3], buf[3:6]]) == expected[:3] + b"-" + expected[3:6]
    acc = bytearray(b"head")
    acc += buf
    assert acc == b"head" + expected
    assert b"x" + buf[:5] == b"x" + expected[:5]
    assert bytearray(b"ab") + buf[5:9] == b"ab" + expected[5:9]
    assert expected[100:200] in bytes(buf)
    assert bytes(buf).startswith(bytes(buf[:50]))
    assert int.from_bytes(buf[:8], "little") == int.from_bytes(expected[:8], "little")
    assert str(buf[:1000], "latin-1") == expected[:1000].decode("latin-1")
    assert codecs.decode(buf[:1000], "latin-1") == expected[:1000].decode("latin-1")
    assert bytes.fromhex(buf[:64].hex()) == expected[:64]
    assert released_cleanly(fakelib, buf, block_id)


# ---------------------------------------------------------------------------
# NumPy
# ---------------------------------------------------------------------------


def test_numpy_frombuffer_read_only(fakelib, big):
    buf, block_id, expected = big
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert arr.__array_interface__["data"][0] == buf.address
    assert arr.__array_interface__["data"][1] is True  # read-only
    assert arr.flags.writeable is False
    assert arr.shape == (BIG,)
    assert np.array_equal(arr, np.frombuffer(expected, dtype=np.uint8))
    with pytest.raises(ValueError):
        arr[0] = 1
    with pytest.raises(ValueError):
        arr.setflags(write=True)  # NumPy cannot make read-only memory writable
    # the array holds an export for as long as it lives
    assert buf.exports == 1
    with pytest.raises(BufferError, match=r"has 1 exported buffer"):
        buf.release()
    assert fakelib.releases(block_id) == 0
    assert int(arr[-1]) == expected[-1]
    del arr
    assert buf.exports == 0
    buf.release()
    assert fakelib.releases(block_id) == 1


def test_numpy_frombuffer_writable(fakelib, big_writable):
    buf, block_id, expected = big_writable
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert arr.__array_interface__["data"] == (buf.address, False)
    assert arr.flags.writeable is True
    arr[:10] = 7
    arr[-1] = 3
    assert bytes(buf[:10]) == b"\x07" * 10
    assert buf[-1] == 3
    assert ctypes.string_at(buf.address, 10) == b"\x07" * 10
    buf[20] = 99  # and the other way round
    assert arr[20] == 99
    del arr
    assert released_cleanly(fakelib, buf, block_id)


def test_numpy_frombuffer_dtype_offset_count(fakelib, big):
    buf, block_id, expected = big
    arr = np.frombuffer(buf, dtype="<u4", count=1000, offset=8)
    assert arr.__array_interface__["data"][0] == buf.address + 8
    assert np.array_equal(arr, np.frombuffer(expected, dtype="<u4", count=1000, offset=8))
    floats = np.frombuffer(buf, dtype=np.float64, count=BIG // 8)
    assert floats.tobytes() == expected[: (BIG // 8) * 8]
    assert buf.exports == 2
    del arr, floats
    assert released_cleanly(fakelib, buf, block_id)


def test_numpy_derived_arrays_keep_the_export(fakelib, big):
    buf, block_id, expected = big
    arr = np.frombuffer(buf, dtype=np.uint8)
    view = arr[100:-100:3]
    reshaped = arr[: 1024 * 1024].reshape(1024, 1024)
    del arr
    assert buf.exports == 1
    assert view.__array_interface__["data"][0] == buf.address + 100
    assert reshaped.__array_interface__["data"][0] == buf.address
    assert np.array_equal(view, np.frombuffer(expected, np.uint8)[100:-100:3])
    del view
    with pytest.raises(BufferError):
        buf.release()
    del reshaped
    assert released_cleanly(fakelib, buf, block_id)


def test_numpy_copy_holds_no_export(fakelib, big):
    buf, block_id, expected = big
    copied = np.array(buf, copy=True)
    assert copied.__array_interface__["data"][0] != buf.address
    assert copied.tobytes() == expected
    assert released_cleanly(fakelib, buf, block_id)
    assert copied.tobytes() == expected  # still valid: it is a copy


def test_numpy_asarray_of_byte_buffer(fakelib, big):
    buf, block_id, expected = big
    arr = np.asarray(buf)
    assert arr.dtype == np.uint8
    assert arr.shape == (BIG,)
    assert arr.__array_interface__["data"][0] == buf.address
    assert not arr.flags.writeable
    assert buf.exports == 1
    del arr
    assert released_cleanly(fakelib, buf, block_id)


def test_numpy_deferred_release_waits_for_array(fakelib, big):
    buf, block_id, expected = big
    arr = np.frombuffer(buf, dtype=np.uint8)
    buf.release(defer=True)
    assert fakelib.releases(block_id) == 0
    with pytest.raises(ValueError, match="pending release"):
        np.frombuffer(buf, dtype=np.uint8)
    assert int(arr.sum(dtype=np.uint64)) == int(
        np.frombuffer(expected, np.uint8).sum(dtype=np.uint64))
    del arr
    assert fakelib.releases(block_id) == 1
    assert buf.released


def test_numpy_refuses_released_buffer(fakelib, big):
    buf, block_id, expected = big
    buf.release()
    with pytest.raises(ValueError, match="released"):
        np.frombuffer(buf, dtype=np.uint8)
    # np.asarray swallows export errors and wraps the object itself (as for a
    # released memoryview): no memory is exposed either way
    wrapped = np.asarray(buf)
    assert wrapped.dtype == object and wrapped[()] is buf
    assert buf.exports == 0
    assert fakelib.releases(block_id) == 1


def test_numpy_over_typed_2d_buffer(fakelib):
    rows, cols = 256, 512  # 1 MiB of doubles
    block_id = fakelib.alloc(rows * cols * 8)
    expected = fakelib_bytes(rows * cols * 8)
    buf = fakelib.from_spec(block_id, format="d", ndim=2, shape=(rows, cols))
    arr = np.asarray(buf)
    assert arr.shape == (rows, cols)
    assert arr.dtype == np.float64
    assert arr.strides == buf.strides == (cols * 8, 8)
    assert arr.__array_interface__["data"] == (buf.address, True)
    assert arr.tobytes() == expected
    assert buf.exports == 1
    with pytest.raises(BufferError):
        buf.release()
    del arr
    assert released_cleanly(fakelib, buf, block_id)


def test_numpy_over_typed_int_buffer_values(fakelib):
    rows, cols = 64, 100
    block_id = fakelib.alloc(rows * cols * 4)
    expected = np.frombuffer(fakelib_bytes(rows * cols * 4), dtype="i").reshape(rows, cols)
    buf = fakelib.from_spec(block_id, format="i", ndim=2, shape=(rows, cols))
    arr = np.asarray(buf)
    assert arr.dtype == np.dtype("i")
    assert np.array_equal(arr, expected)
    assert int(arr[3, 7]) == buf[3, 7]
    part = buf[10:20]  # a Buffer slice along the first dimension
    sub = np.asarray(part)
    assert sub.shape == (10, cols)
    assert sub.__array_interface__["data"][0] == buf.address + 10 * cols * 4
    assert np.array_equal(sub, expected[10:20])
    del arr, sub, part
    assert released_cleanly(fakelib, buf, block_id)


def test_numpy_over_fortran_and_strided_buffers(fakelib):
    rows, cols = 30, 40
    block_id = fakelib.alloc(rows * cols * 8)
    raw = np.frombuffer(fakelib_bytes(rows * cols * 8), dtype=np.int64)
    fortran = fakelib.from_spec(block_id, format="q", ndim=2, shape=(rows, cols),
                                strides=(8, 8 * rows), release=False)
    arr = np.asarray(fortran)
    assert arr.flags.f_contiguous and not arr.flags.c_contiguous
    assert arr.strides == (8, 8 * rows)
    assert arr.__array_interface__["data"][0] == fortran.address
    assert np.array_equal(arr, raw.reshape(cols, rows).T)
    strided = fakelib.from_spec(block_id, format="q", ndim=2, shape=(rows // 2, cols),
                                strides=(16 * cols, 8), release=False)
    arr2 = np.asarray(strided)
    assert arr2.strides == (16 * cols, 8)
    assert np.array_equal(arr2, raw.reshape(rows, cols)[::2])
    del arr, arr2
    assert fortran.exports == 0 and strided.exports == 0
    fakelib.from_memory(block_id).release()


def test_numpy_over_writable_typed_buffer(fakelib):
    block_id = fakelib.alloc(8 * 100)
    buf = fakelib.from_spec(block_id, format="d", ndim=2, shape=(10, 10),
                            flags=fakelib.WRITABLE)
    arr = np.asarray(buf)
    assert arr.flags.writeable
    arr[2, 3] = 1.25
    assert buf[2, 3] == 1.25
    assert struct.unpack_from("d", bytes(buf), (2 * 10 + 3) * 8)[0] == 1.25
    del arr
    assert released_cleanly(fakelib, buf, block_id)


def test_numpy_over_0d_buffer(fakelib):
    block_id = fakelib.alloc(8)
    buf = fakelib.from_spec(block_id, format="q", ndim=0, shape=(), strides=())
    arr = np.asarray(buf)
    assert arr.shape == ()
    assert int(arr) == struct.unpack("q", fakelib_bytes(8))[0] == buf[()]
    del arr
    assert released_cleanly(fakelib, buf, block_id)


def test_numpy_through_memoryview(fakelib, big):
    buf, block_id, expected = big
    arr = np.asarray(memoryview(buf))
    assert arr.__array_interface__["data"][0] == buf.address
    assert buf.exports == 1
    del arr
    assert released_cleanly(fakelib, buf, block_id)


# ---------------------------------------------------------------------------
# hashlib, zlib, binascii, base64
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sha256", "md5", "sha1", "blake2b", "sha3_256"])
def test_hashlib(fakelib, big, name):
    buf, block_id, expected = big
    assert hashlib.new(name, buf).digest() == hashlib.new(name, expected).digest()
    h = hashlib.new(name)
    h.update(buf[:1000])
    h.update(buf[1000:])
    assert h.hexdigest() == hashlib.new(name, expected).hexdigest()
    assert released_cleanly(fakelib, buf, block_id)


def test_hashlib_sha256_over_malloc_memory():
    block = Malloced()
    assert hashlib.sha256(block.buf).digest() == hashlib.sha256(block.data).digest()
    # reading through the Buffer reads the live memory
    ctypes.memset(block.address, 0, 16)
    assert hashlib.sha256(block.buf).digest() == hashlib.sha256(
        b"\0" * 16 + block.data[16:]).digest()
    with block.buf:
        pass
    assert block.freed == 1


def test_hashlib_over_typed_buffer_hashes_the_bytes(fakelib):
    block_id = fakelib.alloc(8 * 4096)
    buf = fakelib.from_spec(block_id, format="d", ndim=2, shape=(64, 64))
    expected = fakelib_bytes(8 * 4096)
    assert hashlib.sha256(buf).digest() == hashlib.sha256(expected).digest()
    assert released_cleanly(fakelib, buf, block_id)


def test_zlib(fakelib, big):
    buf, block_id, expected = big
    compressed = zlib.compress(buf)
    assert zlib.decompress(compressed) == expected
    assert zlib.crc32(buf) == zlib.crc32(expected)
    assert zlib.adler32(buf) == zlib.adler32(expected)
    assert zlib.crc32(buf[10:], zlib.crc32(buf[:10])) == zlib.crc32(expected)
    compressor = zlib.compressobj()
    stream = compressor.compress(buf) + compressor.flush()
    assert zlib.decompress(stream) == expected
    assert zlib.decompress(memoryview(compressed)) == expected
    assert released_cleanly(fakelib, buf, block_id)


def test_zlib_decompress_from_buffer():
    payload = zlib.compress(b"membuf " * 10000)
    cbuf = ctypes.create_string_buffer(payload, len(payload))
    buf = membuf.from_address(ctypes.addressof(cbuf), len(payload), owner=cbuf)
    assert zlib.decompress(buf) == b"membuf " * 10000
    assert zlib.decompressobj().decompress(buf) == b"membuf " * 10000
    assert buf.exports == 0


def test_binascii_and_base64(fakelib, big):
    buf, block_id, expected = big
    assert binascii.crc32(buf) == binascii.crc32(expected)
    assert binascii.hexlify(buf[:4096]) == expected[:4096].hex().encode()
    assert base64.b64encode(buf) == base64.b64encode(expected)
    assert base64.b64decode(base64.b64encode(buf)) == expected
    assert base64.b85encode(buf[:1000]) == base64.b85encode(expected[:1000])
    assert released_cleanly(fakelib, buf, block_id)


# ---------------------------------------------------------------------------
# struct, re, array, io, pickle, ctypes
# ---------------------------------------------------------------------------


def test_struct_unpack_from(fakelib, big):
    buf, block_id, expected = big
    for offset in (0, 1, 7, 1000, BIG - 14):
        assert struct.unpack_from("<IHd", buf, offset) == struct.unpack_from(
            "<IHd", expected, offset)
    assert list(struct.iter_unpack("<Q", buf[: 8 * 500])) == list(
        struct.iter_unpack("<Q", expected[: 8 * 500]))
    with pytest.raises(struct.error):
        struct.unpack_from("<Q", buf, BIG - 4)
    assert released_cleanly(fakelib, buf, block_id)


def test_struct_pack_into_writable_buffer(fakelib, big_writable):
    buf, block_id, expected = big_writable
    struct.pack_into("<Id", buf, 100, 0xDEADBEEF, 2.5)
    assert struct.unpack_from("<Id", buf, 100) == (0xDEADBEEF, 2.5)
    assert ctypes.string_at(buf.address + 100, 12) == struct.pack("<Id", 0xDEADBEEF, 2.5)
    assert released_cleanly(fakelib, buf, block_id)


def test_struct_pack_into_read_only_buffer_refused(fakelib, big):
    buf, block_id, expected = big
    with pytest.raises(TypeError):
        struct.pack_into("<I", buf, 0, 1)
    assert bytes(buf[:4]) == expected[:4]
    assert released_cleanly(fakelib, buf, block_id)


def test_re_search(fakelib, big):
    buf, block_id, expected = big
    needle = bytes([200, 201, 202, 203])
    match = re.search(re.escape(needle), buf)
    assert match is not None
    assert match.start() == expected.find(needle)
    assert match.group() == needle
    assert len(re.findall(re.escape(needle), buf)) == expected.count(needle)
    pattern = re.compile(rb"\xfa\x00")  # 250 then 0: each wrap of the pattern
    assert [m.start() for m in pattern.finditer(buf, 0, 100000)] == [
        m.start() for m in pattern.finditer(expected, 0, 100000)]
    del match
    assert released_cleanly(fakelib, buf, block_id)


def test_re_over_text_in_foreign_memory():
    text = b"the quick brown fox jumps over the lazy dog"
    cbuf = ctypes.create_string_buffer(text, len(text))
    buf = membuf.from_address(ctypes.addressof(cbuf), len(text), owner=cbuf)
    match = re.search(rb"br(o)wn\s(\w+)", buf)
    assert match.span() == (10, 19)
    assert match.group(1) == b"o" and match.group(2) == b"fox"
    assert re.sub(rb"o", b"0", buf) == text.replace(b"o", b"0")
    assert re.split(rb"\s+", buf) == text.split()
    assert re.fullmatch(rb"[a-z ]+", buf) is not None


def test_array_frombytes(fakelib, big):
    buf, block_id, expected = big
    arr = array.array("B")
    arr.frombytes(buf)
    assert arr.tobytes() == expected
    words = array.array("H")
    words.frombytes(buf[: (BIG // 2) * 2])
    assert words.tobytes() == expected[: (BIG // 2) * 2]
    assert released_cleanly(fakelib, buf, block_id)


def test_io_bytesio(fakelib, big):
    buf, block_id, expected = big
    stream = io.BytesIO(buf)
    assert stream.read(10) == expected[:10]
    assert stream.getvalue() == expected
    out = io.BytesIO()
    assert out.write(buf) == BIG
    assert out.getvalue() == expected
    del stream, out
    assert released_cleanly(fakelib, buf, block_id)


def test_io_readinto_writable_buffer():
    block = Malloced(size=MiB, readonly=False)
    source = os.urandom(MiB)
    stream = io.BytesIO(source)
    assert stream.readinto(block.buf) == MiB
    assert block.memory() == source
    assert bytes(block.buf) == source
    block.buf.release()
    assert block.freed == 1


def test_io_readinto_read_only_buffer_refused():
    block = Malloced(size=4096)
    with pytest.raises(TypeError):
        io.BytesIO(b"x" * 4096).readinto(block.buf)
    assert block.memory() == block.data
    assert block.buf.exports == 0


def test_pickle_buffer(fakelib, big):
    buf, block_id, expected = big
    pbuf = pickle.PickleBuffer(buf)
    raw = pbuf.raw()
    assert membuf.address_of(raw) == buf.address
    assert raw.readonly
    assert pickle.loads(pickle.dumps(pbuf, protocol=5)) == expected
    out_of_band = []
    data = pickle.dumps(pbuf, protocol=5, buffer_callback=out_of_band.append)
    assert len(out_of_band) == 1
    assert membuf.address_of(out_of_band[0]) == buf.address
    assert bytes(pickle.loads(data, buffers=out_of_band)) == expected
    raw.release()
    pbuf.release()
    out_of_band.clear()
    assert released_cleanly(fakelib, buf, block_id)


def test_ctypes_from_buffer_is_zero_copy(fakelib, big_writable):
    buf, block_id, expected = big_writable
    arr = (ctypes.c_ubyte * BIG).from_buffer(buf)
    assert ctypes.addressof(arr) == buf.address
    assert buf.exports == 1
    arr[5] = 42
    assert buf[5] == 42
    with pytest.raises(BufferError):
        buf.release()
    del arr
    assert released_cleanly(fakelib, buf, block_id)


def test_ctypes_from_buffer_refuses_read_only(fakelib, big):
    buf, block_id, expected = big
    with pytest.raises(TypeError, match="not writable"):
        (ctypes.c_ubyte * 16).from_buffer(buf)
    copy = (ctypes.c_ubyte * 16).from_buffer_copy(buf)
    assert bytes(copy) == expected[:16]
    assert ctypes.addressof(copy) != buf.address
    assert released_cleanly(fakelib, buf, block_id)


# ---------------------------------------------------------------------------
# sockets and files
# ---------------------------------------------------------------------------


def _receive_all(sock, n, into):
    chunks = []
    received = 0
    while received < n:
        chunk = sock.recv(min(1 << 16, n - received))
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    into.append(b"".join(chunks))


def test_socket_sendall(fakelib, big):
    buf, block_id, expected = big
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(60)
        right.settimeout(60)
        got = []
        reader = threading.Thread(target=_receive_all, args=(right, BIG, got))
        reader.start()
        try:
            left.sendall(buf)
        finally:
            reader.join()
    assert got == [expected]
    assert released_cleanly(fakelib, buf, block_id)


def test_socket_sendmsg_of_slices(fakelib, big):
    buf, block_id, expected = big
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(60)
        right.settimeout(60)
        parts = [buf[:1000], buf[5000:6000]]
        sent = left.sendmsg(parts)
        got = []
        _receive_all(right, sent, got)
        assert got == [(expected[:1000] + expected[5000:6000])[:sent]]
        del parts
    assert released_cleanly(fakelib, buf, block_id)


def test_socket_recv_into_writable_buffer():
    block = Malloced(size=MiB, readonly=False)
    payload = os.urandom(MiB)
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(60)
        right.settimeout(60)
        writer = threading.Thread(target=left.sendall, args=(payload,))
        writer.start()
        try:
            view = memoryview(block.buf)
            received = 0
            while received < MiB:
                count = right.recv_into(view[received:])
                assert count > 0
                received += count
            view.release()
        finally:
            writer.join()
    assert block.memory() == payload
    block.buf.release()
    assert block.freed == 1


def test_file_write_and_read_back(fakelib, big, tmp_path):
    buf, block_id, expected = big
    path = tmp_path / "blob.bin"
    with open(path, "wb") as f:
        assert f.write(buf) == BIG
    assert path.read_bytes() == expected
    with open(path, "wb", buffering=0) as f:
        written = 0
        view = memoryview(buf)
        while written < BIG:
            written += f.write(view[written:])
        view.release()
    assert path.read_bytes() == expected
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.write(fd, buf[:4096]) == 4096
    finally:
        os.close(fd)
    assert path.read_bytes() == expected[:4096]
    assert released_cleanly(fakelib, buf, block_id)


def test_file_readinto_writable_buffer(tmp_path):
    block = Malloced(size=2 * MiB, readonly=False)
    payload = os.urandom(2 * MiB)
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    with open(path, "rb") as f:
        assert f.readinto(block.buf) == 2 * MiB
    assert block.memory() == payload
    assert hashlib.sha256(block.buf).digest() == hashlib.sha256(payload).digest()
    del block.buf
    assert block.freed == 1


def test_malloc_buffer_through_many_consumers(tmp_path):
    block = Malloced()
    data = block.data
    buf = block.buf
    assert membuf.address_of(memoryview(buf)) == block.address
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert arr.__array_interface__["data"][0] == block.address
    assert hashlib.sha256(buf).hexdigest() == hashlib.sha256(data).hexdigest()
    assert zlib.crc32(buf) == zlib.crc32(data)
    path = tmp_path / "m.bin"
    path.write_bytes(buf)
    assert path.read_bytes() == data
    with pytest.raises(BufferError):
        buf.release()
    assert block.freed == 0
    del arr
    buf.release()
    assert block.freed == 1
    with pytest.raises(ValueError, match="released"):
        hashlib.sha256(buf)
    with pytest.raises(ValueError, match="released"):
        zlib.crc32(buf)
    assert block.freed == 1
