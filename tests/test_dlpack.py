"""DLPack: Buffer.__dlpack__ / __dlpack_device__ against the Python array API
standard, read directly off the capsule (ctypes) and through real consumers
(numpy.from_dlpack, torch.from_dlpack).  The capsule holds an export of the
Buffer until the consumer's deleter (or the unconsumed capsule's destructor)
ends it; read-only memory is never handed out writable."""

import ctypes
import enum
import gc
import re
import struct
import sys
import threading

import numpy as np
import pytest

import membuf
from membuf._membuf import _rebuild

_PATTERN = bytes(range(251))
LITTLE = sys.byteorder == "little"


def fakelib_bytes(n):
    """What fakelib puts in a block of n bytes: byte i is i % 251."""
    return (_PATTERN * (n // 251 + 1))[:n]


def released_cleanly(fakelib, buf, block_id):
    assert buf.exports == 0
    buf.release()
    return fakelib.releases(block_id) == 1


def typed(fakelib, fmt, shape, writable=False, itemsize=None):
    """(Buffer, block id) of format fmt and C-contiguous shape over fakelib memory."""
    itemsize = itemsize or struct.calcsize(fmt)
    size = itemsize
    for n in shape:
        size *= n
    block_id = fakelib.alloc(size)
    buf = fakelib.from_spec(block_id, format=fmt, ndim=len(shape), shape=shape,
                            flags=fakelib.WRITABLE if writable else 0)
    return buf, block_id


def data_address(arr):
    return arr.__array_interface__["data"][0]


# ---------------------------------------------------------------------------
# The capsule, read with ctypes (the DLPack 1.0 ABI)
# ---------------------------------------------------------------------------


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # ctypes drops the GIL around the call


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64),
                ("dl_tensor", DLTensor)]


READ_ONLY, IS_COPIED = 1, 2
KDLCPU = 1
KDL_INT, KDL_UINT, KDL_FLOAT, KDL_COMPLEX, KDL_BOOL = 0, 1, 2, 5, 6

_api = ctypes.pythonapi
_api.PyCapsule_GetName.restype = ctypes.c_char_p
_api.PyCapsule_GetName.argtypes = [ctypes.py_object]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]


def capsule_name(capsule):
    return _api.PyCapsule_GetName(capsule).decode()


def managed(capsule):
    """The DLManagedTensor(Versioned) a capsule points to (borrowed)."""
    name = capsule_name(capsule)
    pointer = _api.PyCapsule_GetPointer(capsule, name.encode())
    kind = DLManagedTensorVersioned if name.endswith("versioned") else DLManagedTensor
    return kind.from_address(pointer)


# The capsule keeps the name pointer: these bytes live as long as the module.
USED_NAMES = {"dltensor": b"used_dltensor", "dltensor_versioned": b"used_dltensor_versioned"}


def consume(capsule):
    """Take the tensor over as a consumer does: rename the capsule, so that
    the duty to call the deleter is ours.  Returns the managed tensor."""
    tensor = managed(capsule)
    assert _api.PyCapsule_SetName(capsule, USED_NAMES[capsule_name(capsule)]) == 0
    return tensor


def tensor_fields(t):
    n = t.ndim
    return dict(data=t.data, device=(t.device.device_type, t.device.device_id), ndim=n,
                dtype=(t.dtype.code, t.dtype.bits, t.dtype.lanes),
                shape=tuple(t.shape[i] for i in range(n)),
                strides=tuple(t.strides[i] for i in range(n)), byte_offset=t.byte_offset)


# ---------------------------------------------------------------------------
# __dlpack_device__, capsule kinds, fields
# ---------------------------------------------------------------------------


def test_dlpack_device_is_cpu(fakelib):
    buf, block_id = typed(fakelib, "d", (3,))
    assert buf.__dlpack_device__() == (1, 0)
    buf.release()
    assert buf.__dlpack_device__() == (1, 0)  # metadata: answers after release


@pytest.mark.parametrize("max_version, name", [
    (None, "dltensor"),
    ((0, 8), "dltensor"),
    ((1, 0), "dltensor_versioned"),
    ((1, 3), "dltensor_versioned"),
    ((2, 0), "dltensor_versioned"),  # we produce 1.0; the consumer checks the major
])
def test_max_version_selects_the_capsule(fakelib, max_version, name):
    buf, block_id = typed(fakelib, "i", (4, 5), writable=True)
    capsule = buf.__dlpack__(max_version=max_version)
    assert capsule_name(capsule) == name
    assert buf.exports == 1  # the capsule holds an export
    t = managed(capsule)
    if name == "dltensor_versioned":
        assert (t.version.major, t.version.minor) == (1, 0)
        assert t.flags == 0  # writable, not a copy
    assert tensor_fields(t.dl_tensor) == dict(
        data=buf.address, device=(KDLCPU, 0), ndim=2, dtype=(KDL_INT, 32, 1),
        shape=(4, 5), strides=(5, 1), byte_offset=0)
    with pytest.raises(BufferError, match="1 exported buffer"):
        buf.release()
    del capsule, t  # never consumed: its destructor ends the export
    assert released_cleanly(fakelib, buf, block_id)


def test_read_only_buffer_is_flagged_read_only(fakelib):
    buf, block_id = typed(fakelib, "d", (2, 3))
    capsule = buf.__dlpack__(max_version=(1, 0))
    t = managed(capsule)
    assert t.flags == READ_ONLY
    assert t.dl_tensor.data == buf.address
    del capsule, t
    assert released_cleanly(fakelib, buf, block_id)


@pytest.mark.parametrize("max_version", [None, (0, 8)])
def test_read_only_buffer_refuses_the_legacy_capsule(fakelib, max_version):
    buf, block_id = typed(fakelib, "d", (2, 3))
    with pytest.raises(BufferError, match=r"^membuf.Buffer: cannot export read-only memory as a "
                       r"legacy DLPack tensor \(it has no read-only flag\); "
                       r"pass max_version=\(1, 0\)$"):
        buf.__dlpack__(max_version=max_version)
    assert buf.exports == 0
    assert released_cleanly(fakelib, buf, block_id)


def test_zero_dim_and_empty_tensors(fakelib):
    scalar, scalar_id = typed(fakelib, "q", (), writable=True)
    t = managed(cap := scalar.__dlpack__(max_version=(1, 0)))
    assert tensor_fields(t.dl_tensor)["ndim"] == 0
    assert tensor_fields(t.dl_tensor)["data"] == scalar.address
    del cap, t
    arr = np.from_dlpack(scalar)
    assert arr.shape == () and arr.dtype == np.int64
    assert int(arr) == struct.unpack("q", fakelib_bytes(8))[0]
    del arr
    assert released_cleanly(fakelib, scalar, scalar_id)
    empty, empty_id = typed(fakelib, "h", (0, 5), writable=True)
    arr = np.from_dlpack(empty)
    assert arr.shape == (0, 5) and arr.dtype == np.int16
    del arr
    assert released_cleanly(fakelib, empty, empty_id)
    # an empty layout may have dimensions whose product overflows
    huge = fakelib.from_spec(fakelib.alloc(0), format="d", ndim=3, shape=(0, 2**62, 2**62),
                             flags=fakelib.WRITABLE)
    t = managed(cap := huge.__dlpack__(max_version=(1, 0)))
    fields = tensor_fields(t.dl_tensor)
    assert fields["shape"] == (0, 2**62, 2**62)
    assert fields["strides"][2] == 1 and all(s > 0 for s in fields["strides"])
    del cap, t
    huge.release()


# ---------------------------------------------------------------------------
# NumPy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24,), (4, 6)], ids=["1d", "2d"])
def test_numpy_read_only(fakelib, shape):
    buf, block_id = typed(fakelib, "f", shape)
    arr = np.from_dlpack(buf)
    assert arr.shape == shape and arr.dtype == np.float32
    assert data_address(arr) == buf.address  # zero-copy
    assert not arr.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        arr[(0,) * len(shape)] = 1.0
    with pytest.raises(ValueError, match="cannot set WRITEABLE"):
        arr.flags.writeable = True
    assert arr.tobytes() == buf.tobytes() == fakelib_bytes(96)
    assert buf.exports == 1
    del arr
    assert released_cleanly(fakelib, buf, block_id)


@pytest.mark.parametrize("shape", [(24,), (4, 6)], ids=["1d", "2d"])
def test_numpy_writable_writes_through(fakelib, shape):
    buf, block_id = typed(fakelib, "i", shape, writable=True)
    arr = np.from_dlpack(buf)
    assert arr.flags.writeable
    assert data_address(arr) == buf.address
    index = (1,) * len(shape)
    arr[index] = -12345
    assert buf[index] == -12345  # seen through the Buffer: the same memory
    arr[...] = 7
    assert buf.tobytes() == struct.pack("i", 7) * 24
    del arr
    assert released_cleanly(fakelib, buf, block_id)


# format -> (numpy kind, DLPack code); the size comes from the Buffer's itemsize
NATIVE = "<" if LITTLE else ">"
FORMATS = {
    "b": ("i", KDL_INT), "h": ("i", KDL_INT), "i": ("i", KDL_INT), "l": ("i", KDL_INT),
    "q": ("i", KDL_INT), "n": ("i", KDL_INT),
    "B": ("u", KDL_UINT), "H": ("u", KDL_UINT), "I": ("u", KDL_UINT), "L": ("u", KDL_UINT),
    "Q": ("u", KDL_UINT), "N": ("u", KDL_UINT),
    "e": ("f", KDL_FLOAT), "f": ("f", KDL_FLOAT), "d": ("f", KDL_FLOAT),
    "?": ("b", KDL_BOOL),
    "Zf": ("c", KDL_COMPLEX), "Zd": ("c", KDL_COMPLEX),
    "@i": ("i", KDL_INT), "=l": ("i", KDL_INT), NATIVE + "Q": ("u", KDL_UINT),
    "@d": ("f", KDL_FLOAT), "=e": ("f", KDL_FLOAT), NATIVE + "Zd": ("c", KDL_COMPLEX),
    "=Zf": ("c", KDL_COMPLEX), "@?": ("b", KDL_BOOL),
}


def itemsize_of(fmt):
    code = fmt.lstrip("@=<>!")
    if code in ("Zf", "Zd"):
        return 8 if code == "Zf" else 16
    return struct.calcsize(fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtype_mapping(fakelib, fmt):
    kind, code = FORMATS[fmt]
    itemsize = itemsize_of(fmt)
    buf, block_id = typed(fakelib, fmt, (2, 3), writable=True, itemsize=itemsize)
    assert buf.itemsize == itemsize and buf.format == fmt
    capsule = buf.__dlpack__(max_version=(1, 0))
    assert (managed(capsule).dl_tensor.dtype.code, managed(capsule).dl_tensor.dtype.bits,
            managed(capsule).dl_tensor.dtype.lanes) == (code, 8 * itemsize, 1)
    del capsule
    arr = np.from_dlpack(buf)
    assert arr.dtype == (np.dtype("?") if kind == "b" else np.dtype(f"{kind}{itemsize}"))
    assert arr.shape == (2, 3) and data_address(arr) == buf.address
    assert arr.tobytes() == buf.tobytes() == fakelib_bytes(6 * itemsize)
    del arr
    assert released_cleanly(fakelib, buf, block_id)


def test_numpy_complex_arrays_wrap_and_come_back():
    """NumPy exports complex as 'Zd'; membuf takes it and exports kDLComplex."""
    src = np.arange(6, dtype=np.complex128).reshape(2, 3) * (1 + 2j)
    assert memoryview(src).format == "Zd"
    buf = _rebuild(src, "Zd", (2, 3), True)  # a typed Buffer over the array itself
    assert buf.itemsize == 16 and buf.address == data_address(src)
    back = np.from_dlpack(buf)
    assert back.dtype == np.complex128 and np.array_equal(back, src)
    assert data_address(back) == data_address(src)
    del back
    buf.release()


UNSUPPORTED = ["c", "P", "2i", "ii", "4s", "x", "?B", "3e"]
UNSUPPORTED += [">i", "!d", ">Zd"] if LITTLE else ["<i", "<Zd"]


@pytest.mark.parametrize("fmt", UNSUPPORTED)
def test_unsupported_formats_raise_buffer_error(fakelib, fmt):
    itemsize = itemsize_of(fmt)
    block_id = fakelib.alloc(itemsize * 4)
    buf = fakelib.from_spec(block_id, format=fmt, ndim=1, shape=(4,), flags=fakelib.WRITABLE)
    message = rf"^membuf.Buffer: format '{re.escape(fmt)}' has no DLPack data type"
    for max_version in (None, (1, 0)):
        with pytest.raises(BufferError, match=message):
            buf.__dlpack__(max_version=max_version)
    with pytest.raises(BufferError, match=message):
        np.from_dlpack(buf)
    assert released_cleanly(fakelib, buf, block_id)


def test_strided_slices(fakelib):
    buf, block_id = typed(fakelib, "q", (6, 5), writable=True)
    expected = np.frombuffer(fakelib_bytes(240), dtype=np.int64).reshape(6, 5)
    for part, ref in ((buf[::2], expected[::2]), (buf[::-1], expected[::-1]),
                      (buf[1:6:3], expected[1:6:3])):
        arr = np.from_dlpack(part)
        assert arr.strides == part.strides
        assert data_address(arr) == part.address
        assert np.array_equal(arr, ref)
        del arr
    column_major = fakelib.from_spec(block_id, format="q", ndim=2, shape=(5, 6),
                                     strides=(8, 40), release=False)
    arr = np.from_dlpack(column_major)
    assert arr.flags.f_contiguous and np.array_equal(arr, expected.T)
    del arr, part
    column_major.release()
    bytes_part = fakelib.from_spec(block_id, flags=fakelib.WRITABLE, release=False)[3::7]
    arr = np.from_dlpack(bytes_part)
    assert arr.dtype == np.uint8 and arr.strides == (7,)
    assert arr.tobytes() == fakelib_bytes(240)[3::7]
    del arr, bytes_part
    assert released_cleanly(fakelib, buf, block_id)


def test_strides_must_be_whole_items(fakelib):
    block_id = fakelib.alloc(64)
    odd = fakelib.from_spec(block_id, format="i", ndim=1, shape=(3,), strides=(6,),
                            flags=fakelib.WRITABLE, release=False)
    with pytest.raises(BufferError, match=r"^membuf.Buffer: stride 6 of dimension 0 is not a "
                       r"multiple of the item size 4; DLPack counts strides in items$"):
        odd.__dlpack__(max_version=(1, 0))
    assert odd.exports == 0
    # a stride that never moves (one item) does not matter
    single = fakelib.from_spec(block_id, format="i", ndim=2, shape=(1, 3), strides=(7, 4),
                               flags=fakelib.WRITABLE, release=False)
    arr = np.from_dlpack(single)
    assert arr.shape == (1, 3) and data_address(arr) == single.address
    del arr
    fakelib.from_memory(block_id).release()


# ---------------------------------------------------------------------------
# arguments: dl_device, stream, copy, max_version
# ---------------------------------------------------------------------------


class Device(enum.IntEnum):
    CPU = 1
    CUDA = 2


def test_dl_device(fakelib):
    buf, block_id = typed(fakelib, "d", (4,), writable=True)
    for device in [(1, 0), (Device.CPU, 0), None]:
        capsule = buf.__dlpack__(dl_device=device)
        assert managed(capsule).dl_tensor.data == buf.address
        del capsule
    for device, shown in [((2, 0), r"\(2, 0\)"), ((Device.CUDA, 0), r"\(2, 0\)"),
                          ((1, 1), r"\(1, 1\)")]:
        with pytest.raises(BufferError, match=rf"^membuf.Buffer: cannot export to DLPack device "
                           rf"{shown}; the memory is on the CPU, device \(1, 0\)$"):
            buf.__dlpack__(dl_device=device)
    for device in ["cpu", (1,), (1, 0, 0), ("1", 0)]:
        with pytest.raises(TypeError, match=r"^dl_device(\[0\])? must be (None or )?an? (tuple of "
                                            r"two )?ints?, not"):
            buf.__dlpack__(dl_device=device)
    arr = np.from_dlpack(buf, device="cpu")  # numpy passes dl_device=(1, 0)
    assert data_address(arr) == buf.address
    del arr
    assert released_cleanly(fakelib, buf, block_id)


@pytest.mark.parametrize("stream", [0, 1, 2, -1, object()])
def test_stream_must_be_none_on_cpu(fakelib, stream):
    buf, block_id = typed(fakelib, "d", (4,), writable=True)
    with pytest.raises(BufferError, match=r"^membuf.Buffer: stream must be None for CPU memory, "
                       r"not (int|object)$"):
        buf.__dlpack__(stream=stream)
    capsule = buf.__dlpack__(stream=None)
    del capsule
    assert released_cleanly(fakelib, buf, block_id)


@pytest.mark.parametrize("writable", [False, True], ids=["readonly", "writable"])
def test_copy_true_exports_a_private_copy(fakelib, writable):
    buf, block_id = typed(fakelib, "h", (3, 4), writable=writable)
    strided = buf[::2]
    for source in (buf, strided):
        capsule = source.__dlpack__(max_version=(1, 0), copy=True)
        t = managed(capsule)
        assert t.flags == IS_COPIED  # a copy is the consumer's own, never read-only
        fields = tensor_fields(t.dl_tensor)
        assert fields["data"] != source.address
        assert fields["strides"] == (4, 1)  # C order, whatever the source layout
        assert (buf.exports, strided.exports) == (1, 0)  # only the slice's: a copy holds none
        assert ctypes.string_at(fields["data"], source.nbytes) == source.tobytes()
        del capsule, t
    legacy = buf.__dlpack__(copy=True)  # a copy is writable: legacy is fine even read-only
    assert capsule_name(legacy) == "dltensor"
    del legacy
    arr = np.from_dlpack(buf, copy=True)
    assert arr.flags.writeable and data_address(arr) != buf.address
    arr[0, 0] = 99
    assert buf[0, 0] != 99
    assert buf.exports == 1  # the slice
    del arr, strided, source
    assert released_cleanly(fakelib, buf, block_id)


def test_copy_false_and_none_are_zero_copy(fakelib):
    buf, block_id = typed(fakelib, "d", (5,), writable=True)
    for copy in (False, None):
        capsule = buf.__dlpack__(max_version=(1, 0), copy=copy)
        assert managed(capsule).dl_tensor.data == buf.address
        assert managed(capsule).flags == 0
        del capsule
    arr = np.from_dlpack(buf, copy=False)
    assert data_address(arr) == buf.address
    del arr
    for bad in (1, "yes", 0):
        with pytest.raises(TypeError, match="^copy must be None, True or False, not (int|str)$"):
            buf.__dlpack__(copy=bad)
    assert released_cleanly(fakelib, buf, block_id)


@pytest.mark.parametrize("bad, message", [
    (5, r" must be None or a tuple of two ints, not int"),
    ([1, 0], r" must be None or a tuple of two ints, not list"),
    ((1,), r" must be a tuple of two ints, not of 1 item"),
    ((1, 0, 0), r" must be a tuple of two ints, not of 3 items"),
    (("1", "0"), r"\[0\] must be an int, not str"),
    ((1.0, 0), r"\[0\] must be an int, not float"),
    ((1, 0.5), r"\[1\] must be an int, not float"),
])
def test_max_version_must_be_a_pair_of_ints(fakelib, bad, message):
    buf, block_id = typed(fakelib, "d", (5,), writable=True)
    with pytest.raises(TypeError, match=rf"^max_version{message}$"):
        buf.__dlpack__(max_version=bad)
    assert released_cleanly(fakelib, buf, block_id)


def test_max_version_beyond_the_range_of_long_is_just_large(fakelib):
    buf, block_id = typed(fakelib, "d", (5,), writable=True)
    for version in [(1, 2**64), (2**64, 0)]:
        capsule = buf.__dlpack__(max_version=version)
        assert capsule_name(capsule) == "dltensor_versioned"
        del capsule
    with pytest.raises(BufferError, match=r"device \(1, 18446744073709551616\);"):
        buf.__dlpack__(dl_device=(1, 2**64))
    assert released_cleanly(fakelib, buf, block_id)


def test_positional_arguments_are_refused(fakelib):
    buf, block_id = typed(fakelib, "d", (5,), writable=True)
    with pytest.raises(TypeError):
        buf.__dlpack__(None)
    with pytest.raises(TypeError, match="unexpected keyword|invalid keyword"):
        buf.__dlpack__(device=(1, 0))
    assert released_cleanly(fakelib, buf, block_id)


# ---------------------------------------------------------------------------
# the export the capsule holds
# ---------------------------------------------------------------------------


def test_strict_release_refused_while_numpy_array_lives(fakelib):
    buf, block_id = typed(fakelib, "d", (8,), writable=True)
    arr = np.from_dlpack(buf)
    with pytest.raises(BufferError, match="1 exported buffer"):
        buf.release()
    assert not buf.released
    view = arr[2:5]  # a numpy view keeps the DLPack base alive
    del arr
    assert buf.exports == 1
    del view
    assert released_cleanly(fakelib, buf, block_id)


def test_deferred_release_completes_when_numpy_array_dies(fakelib):
    buf, block_id = typed(fakelib, "d", (8,), writable=True)
    arr = np.from_dlpack(buf)
    buf.release(defer=True)
    assert fakelib.releases(block_id) == 0
    assert arr.tobytes() == fakelib_bytes(64)  # still valid memory
    with pytest.raises(ValueError, match="pending release"):
        buf.__dlpack__(max_version=(1, 0))
    del arr
    assert buf.released and fakelib.releases(block_id) == 1


def test_unconsumed_capsule_ends_the_export(fakelib):
    buf, block_id = typed(fakelib, "d", (8,), writable=True)
    capsules = [buf.__dlpack__(), buf.__dlpack__(max_version=(1, 0))]
    assert buf.exports == 2
    buf.release(defer=True)
    del capsules[0]
    assert buf.exports == 1 and fakelib.releases(block_id) == 0
    del capsules[0]
    assert fakelib.releases(block_id) == 1


def test_consumed_capsule_is_left_to_the_consumer(fakelib):
    """A renamed capsule belongs to its consumer: its destructor does nothing,
    the consumer's deleter call ends the export exactly once."""
    buf, block_id = typed(fakelib, "i", (4,), writable=True)
    for max_version in (None, (1, 0)):
        capsule = buf.__dlpack__(max_version=max_version)
        t = consume(capsule)
        del capsule
        gc.collect()
        assert buf.exports == 1  # the consumer still holds it
        DELETER(t.deleter)(ctypes.addressof(t))
        assert buf.exports == 0
    assert released_cleanly(fakelib, buf, block_id)


def test_deleter_runs_from_a_thread_without_the_gil(fakelib):
    """PyTorch calls deleters from its own threads: the deleter takes the GIL
    itself (ctypes CFUNCTYPE calls release the GIL around the call)."""
    buf, block_id = typed(fakelib, "d", (16,), writable=True)
    capsule = buf.__dlpack__(max_version=(1, 0))
    t = consume(capsule)
    del capsule
    buf.release(defer=True)  # the deleter's export end runs the release callback
    deleter = DELETER(t.deleter)
    address = ctypes.addressof(t)
    thread = threading.Thread(target=deleter, args=(address,))
    thread.start()
    thread.join()
    assert buf.released and fakelib.releases(block_id) == 1


@pytest.mark.parametrize("pending", [False, True], ids=["released", "pending"])
def test_released_buffer_refuses(fakelib, pending):
    buf, block_id = typed(fakelib, "d", (4,), writable=True)
    view = memoryview(buf) if pending else None
    buf.release(defer=pending)
    message = "pending release" if pending else "^operation forbidden on released membuf.Buffer"
    for kwargs in ({}, {"max_version": (1, 0)}, {"copy": True}):
        with pytest.raises(ValueError, match=message):
            buf.__dlpack__(**kwargs)
    with pytest.raises(ValueError, match=message):
        np.from_dlpack(buf)
    del view
    assert fakelib.releases(block_id) == 1


# ---------------------------------------------------------------------------
# PyTorch (CPU): optional
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24,), (4, 6)], ids=["1d", "2d"])
def test_torch_from_dlpack_writable(fakelib, shape):
    torch = pytest.importorskip("torch")
    buf, block_id = typed(fakelib, "f", shape, writable=True)
    tensor = torch.from_dlpack(buf)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == shape
    assert tensor.data_ptr() == buf.address  # zero-copy
    assert buf.exports == 1
    tensor[(1,) * len(shape)] = 3.5
    assert buf[(1,) * len(shape)] == 3.5
    with pytest.raises(BufferError):
        buf.release()
    del tensor  # torch calls our deleter: the export ends
    assert released_cleanly(fakelib, buf, block_id)


@pytest.mark.parametrize("fmt, dtype", [("b", "int8"), ("H", "uint16"), ("q", "int64"),
                                        ("e", "float16"), ("d", "float64"), ("?", "bool"),
                                        ("Zf", "complex64"), ("Zd", "complex128")])
def test_torch_dtypes(fakelib, fmt, dtype):
    torch = pytest.importorskip("torch")
    itemsize = itemsize_of(fmt)
    buf, block_id = typed(fakelib, fmt, (3, 2), writable=True, itemsize=itemsize)
    tensor = torch.from_dlpack(buf)
    assert tensor.dtype == getattr(torch, dtype)
    assert tensor.data_ptr() == buf.address
    del tensor
    assert released_cleanly(fakelib, buf, block_id)


def test_torch_deferred_release_and_strided(fakelib):
    torch = pytest.importorskip("torch")
    buf, block_id = typed(fakelib, "i", (6, 4), writable=True)
    tensor = torch.from_dlpack(buf[::2])
    assert tensor.stride() == (8, 1) and tensor.data_ptr() == buf.address
    buf.release(defer=True)
    assert fakelib.releases(block_id) == 0
    del tensor
    assert fakelib.releases(block_id) == 1


def test_torch_read_only_buffer_goes_versioned(fakelib):
    """torch asks for max_version=(1, 0) and gets the read-only flag (PyTorch has
    no read-only tensors and does not refuse it; membuf cannot stop that)."""
    torch = pytest.importorskip("torch")
    buf, block_id = typed(fakelib, "d", (5,))
    calls = []

    class Spy:
        def __dlpack_device__(self):
            return buf.__dlpack_device__()

        def __dlpack__(self, **kwargs):
            capsule = buf.__dlpack__(**kwargs)
            calls.append((kwargs.get("max_version"), capsule_name(capsule),
                          managed(capsule).flags))
            return capsule

    tensor = torch.from_dlpack(Spy())
    assert calls == [((1, 0), "dltensor_versioned", READ_ONLY)]
    assert tensor.data_ptr() == buf.address
    assert tensor.tolist() == list(struct.unpack("5d", fakelib_bytes(40)))
    del tensor
    assert released_cleanly(fakelib, buf, block_id)


# ---------------------------------------------------------------------------
# interpreter exit
# ---------------------------------------------------------------------------

EXIT_SCRIPT = r"""
import ctypes, functools, os, sys
import numpy as np
import membuf
mem = ctypes.create_string_buffer(16)
on_release = functools.partial(os.write, 1, b"released\n")  # no cycle through globals
buf = membuf.from_address(ctypes.addressof(mem), 16, owner=mem, on_release=on_release)
if sys.argv[1] == "numpy":
    arr = np.from_dlpack(buf)                  # a consumer holds the export
else:
    cap = buf.__dlpack__(max_version=(1, 0))   # a capsule nobody consumed
assert buf.exports == 1
"""


@pytest.mark.parametrize("holder", ["numpy", "capsule"])
def test_export_alive_at_exit_ends_and_the_callback_runs(tmp_path, holder):
    """Module globals are cleared at exit after Py_IsInitialized() turns
    false: the deleter still ends the export on the finalizing thread, so the
    Buffer's callback runs, as with a memoryview -- in the abi3 build too."""
    import subprocess

    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    result = subprocess.run([sys.executable, str(script), holder], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "released\n"
