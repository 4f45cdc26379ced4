"""The Python constructors beyond plain bytes: typed from_address() (the whole
of MemBuf_Spec from Python, ctypes and cffi objects as addresses) and
from_buffer() (any exporter, one export held until release).

Zero-copy is checked by address; lifetimes by the export counts of the
exporters (a bytearray that cannot resize, a SharedMemory that cannot close)
and by on_release call counts."""

import ctypes
import gc
import subprocess
import sys
from multiprocessing import shared_memory

import numpy as np
import pytest

import membuf


class Recorder:
    def __init__(self, exc=None, check=None):
        self.count = 0
        self.exc = exc
        self.check = check

    def __call__(self):
        self.count += 1
        if self.check is not None:
            self.check()
        if self.exc is not None:
            raise self.exc


def doubles(n):
    return (ctypes.c_double * n)(*range(n))


# ---------------------------------------------------------------------------
# from_address: typed layouts
# ---------------------------------------------------------------------------


def test_typed_from_address_is_zero_copy():
    mem = doubles(12)
    address = ctypes.addressof(mem)
    buf = membuf.from_address(address, 96, format="d", shape=(3, 4), owner=mem)
    assert (buf.format, buf.shape, buf.strides, buf.itemsize, buf.nbytes) == (
        "d", (3, 4), (32, 8), 8, 96)
    assert buf.address == address and membuf.address_of(memoryview(buf)) == address
    assert np.asarray(buf).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert buf.owner is mem and buf.readonly


@pytest.mark.parametrize("kwargs, size", [
    ({"format": "d", "shape": (3, 4)}, 96),
    ({"format": "i", "shape": [2, 3]}, 12 * ctypes.sizeof(ctypes.c_int) // 2),
    ({"format": "d", "shape": ()}, 8),                                   # one item
    ({"format": "d", "shape": (0, 5)}, 0),                               # no item
    ({"format": "d", "shape": (3, 4), "strides": (8, 24)}, 96),          # Fortran order
    ({"format": "d", "shape": (2, 2), "strides": (48, 8)}, 64),          # every 2nd row
    ({"shape": (10,), "strides": (3,)}, 28),                             # bytes, stride 3
])
def test_size_is_derived_from_the_layout(kwargs, size):
    mem = doubles(12)
    buf = membuf.from_address(ctypes.addressof(mem), **kwargs)
    assert buf.address == ctypes.addressof(mem)
    if "strides" not in kwargs:
        assert buf.nbytes == size
    explicit = membuf.from_address(ctypes.addressof(mem), size, **kwargs)
    assert (explicit.shape, explicit.strides, explicit.nbytes) == (
        buf.shape, buf.strides, buf.nbytes)
    if size > 0:
        with pytest.raises(ValueError):  # one byte short
            membuf.from_address(ctypes.addressof(mem), size - 1, **kwargs)


def test_strided_view_reads_the_right_items():
    mem = doubles(12)
    buf = membuf.from_address(mem, format="d", shape=(3, 4), strides=(8, 24))
    assert np.asarray(buf).tolist() == np.arange(12.0).reshape(4, 3).T.tolist()
    assert buf.f_contiguous and not buf.c_contiguous


# Each bad layout: the exception and the message MemBuf_FromSpec gives (the
# validator is the same code).
BAD_LAYOUTS = [
    ({"size": 8, "format": "d", "shape": (3, 4)}, ValueError,
     r"^a C-contiguous layout of shape and format 'd' covers 96 bytes, but len is 8$"),
    ({"size": 10, "format": "d"}, ValueError,
     r"^len 10 is not a multiple of the item size 8 of format 'd'$"),
    ({"size": 8, "format": "Zz"}, ValueError, r"^invalid format 'Zz'"),
    ({"size": 8, "format": "d", "shape": (-1,)}, ValueError, r"^shape\[0\] is negative \(-1\)$"),
    ({"size": 96, "format": "d", "shape": (3, 4), "strides": (-8, 8)}, ValueError,
     r"reaches outside the 96 bytes at ptr$"),
    ({"size": 96, "format": "d", "shape": (3, 4), "strides": (40, 8)}, ValueError,
     r"reaches outside the 96 bytes at ptr$"),
    ({"size": 8, "format": "d", "shape": (2**62, 2**62)}, OverflowError,
     r"^the product of the shape overflows$"),
    ({"format": "d", "shape": (2, 2), "strides": (-8, 8)}, ValueError,
     r"^strides\[0\] is negative: element \[0, \.\.\., 0\] is at address"),
    ({"size": 8, "strides": (8,)}, ValueError, r"^strides given without a shape$"),
    ({"size": 8, "shape": (8,), "strides": (1, 1)}, ValueError,
     r"^strides has 2 entries but shape has 1$"),
    ({"size": 8, "shape": 8}, TypeError, r"^shape must be a tuple of ints, not int$"),
    ({"size": 8, "shape": (True,)}, TypeError, r"^shape\[0\] must be an int, not bool$"),
    ({"size": 8, "shape": (8.0,)}, TypeError, r"^shape\[0\] must be an int, not float$"),
    ({"size": 8, "shape": (1,), "strides": ("8",)}, TypeError,
     r"^strides\[0\] must be an int, not str$"),
    ({"size": 8, "shape": (2**70,)}, OverflowError, r"^shape\[0\] is too large$"),
    ({"size": 8, "shape": (1,) * 65}, ValueError, r"^shape has 65 entries \(at most 64\)$"),
    ({"size": 8, "format": b"d"}, TypeError, r"^format must be a str, not bytes$"),
    ({"size": 8, "format": "d\0"}, ValueError, r"^format contains a NUL character$"),
    ({"size": 8, "readonly": 1}, TypeError, r"^readonly must be True or False, not int$"),
    ({}, TypeError, r"^from_address\(\) needs a size, or a shape to derive it from$"),
]


@pytest.mark.parametrize("kwargs, exc, message", BAD_LAYOUTS)
def test_bad_layouts_raise_and_call_on_release_once(kwargs, exc, message):
    mem = doubles(12)
    cb = Recorder()
    with pytest.raises(exc, match=message):
        membuf.from_address(ctypes.addressof(mem), on_release=cb, **kwargs)
    assert cb.count == 1


def test_layout_messages_are_the_c_apis(fakelib):
    """from_address and MemBuf_FromSpec share the validator: same message."""
    with pytest.raises(ValueError) as c_api:
        fakelib.from_spec(fakelib.alloc(8), format="d", ndim=2, shape=[3, 4])
    mem = doubles(12)
    with pytest.raises(ValueError) as python:
        membuf.from_address(ctypes.addressof(mem), 8, format="d", shape=(3, 4))
    assert str(python.value) == str(c_api.value)


@pytest.mark.release_abi("numpy")  # a NumPy scalar's __index__
def test_index_objects_are_addresses():
    mem = doubles(2)

    class Address:
        def __index__(self):
            return ctypes.addressof(mem)

    assert membuf.from_address(Address(), 16).address == ctypes.addressof(mem)
    assert membuf.from_address(np.uint64(ctypes.addressof(mem)), 16).address == ctypes.addressof(mem)


# ---------------------------------------------------------------------------
# from_address: ctypes objects
# ---------------------------------------------------------------------------


def test_ctypes_array_gives_address_size_format_shape_and_owner():
    mem = doubles(12)
    buf = membuf.from_address(mem)
    assert (buf.address, buf.nbytes, buf.format, buf.shape) == (
        ctypes.addressof(mem), 96, "d", (12,))
    assert buf.owner is mem
    del mem
    gc.collect()
    assert buf.tolist() if hasattr(buf, "tolist") else np.asarray(buf).tolist() == list(
        map(float, range(12)))  # the array is alive as the owner


def test_ctypes_nested_array_is_multidimensional():
    mem = ((ctypes.c_int * 3) * 2)()
    buf = membuf.from_address(mem, readonly=False)
    assert (buf.format, buf.shape, buf.nbytes) == ("i", (2, 3), 6 * ctypes.sizeof(ctypes.c_int))
    np.asarray(buf)[1, 2] = 7
    assert mem[1][2] == 7


@pytest.mark.parametrize("make, fmt, shape", [
    (lambda: ctypes.create_string_buffer(b"abc", 3), "B", (3,)),      # char: bytes
    (lambda: (ctypes.c_ubyte * 4)(), "B", (4,)),
    (lambda: (ctypes.c_int64 * 2)(), "q", (2,)),
    (lambda: (ctypes.c_float * 2)(), "f", (2,)),
    (lambda: (ctypes.c_bool * 2)(), "?", (2,)),
    (lambda: ctypes.c_double(2.5), "d", ()),                         # one item, 0-dim
    (lambda: (ctypes.c_longdouble * 2)(), "B", (2 * ctypes.sizeof(ctypes.c_longdouble),)),
    (lambda: (ctypes.c_int.__ctype_be__ * 2)() if sys.byteorder == "little"
     else (ctypes.c_int.__ctype_le__ * 2)(), ">i" if sys.byteorder == "little" else "<i", (2,)),
])
def test_ctypes_element_types(make, fmt, shape):
    obj = make()
    buf = membuf.from_address(obj)
    assert (buf.format, buf.shape) == (fmt, shape)
    assert buf.nbytes == ctypes.sizeof(obj) and buf.address == ctypes.addressof(obj)


def test_ctypes_structure_is_bytes():
    class Point(ctypes.Structure):
        _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]

    p = Point(1, 2.0)
    buf = membuf.from_address(p)
    assert (buf.format, buf.nbytes, buf.address) == ("B", ctypes.sizeof(p), ctypes.addressof(p))


def test_ctypes_array_retyped():
    mem = doubles(12)
    as_bytes = membuf.from_address(mem, format="B")        # format given: 1-D over all bytes
    assert (as_bytes.format, as_bytes.shape) == ("B", (96,))
    grid = membuf.from_address(mem, shape=(3, 4))          # shape given: its element type
    assert (grid.format, grid.shape) == ("d", (3, 4))
    with pytest.raises(ValueError, match="covers 80 bytes, but len is 96"):
        membuf.from_address(mem, shape=(10,))


def test_ctypes_pointers_need_a_size_or_shape():
    mem = doubles(12)
    p = ctypes.cast(mem, ctypes.POINTER(ctypes.c_double))
    grid = membuf.from_address(p, shape=(3, 4))
    assert (grid.format, grid.shape, grid.address) == ("d", (3, 4), ctypes.addressof(mem))
    assert grid.owner is p
    raw = membuf.from_address(ctypes.c_void_p(ctypes.addressof(mem)), 96)
    assert (raw.format, raw.address, raw.nbytes) == ("B", ctypes.addressof(mem), 96)
    text = ctypes.c_char_p(b"hello")
    assert bytes(membuf.from_address(text, 5)) == b"hello"
    with pytest.raises(TypeError, match="needs a size"):
        membuf.from_address(p)
    assert membuf.from_address(ctypes.c_void_p(None), 0).nbytes == 0
    with pytest.raises(ValueError, match=r"address is 0 \(NULL\) but size is 4"):
        membuf.from_address(ctypes.c_void_p(None), 4)


def test_ctypes_object_is_the_owner():
    mem = doubles(2)
    cb = Recorder()
    with pytest.raises(ValueError, match=r"keeps the c_double_Array_2 object given as address "
                                         r"alive as the owner: owner= must be None"):
        membuf.from_address(mem, owner=object(), on_release=cb)
    assert cb.count == 1


@pytest.mark.parametrize("address", [1.5, "0x10", b"", None, [1], object(), True])
def test_other_objects_are_not_addresses(address):
    cb = Recorder()
    with pytest.raises(TypeError, match=r"^address must be an int"):
        membuf.from_address(address, 0, on_release=cb)
    assert cb.count == 1


# ---------------------------------------------------------------------------
# from_address: cffi objects
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ffi():
    import sysconfig

    reason = ("cffi refuses free-threaded 3.13 (no build)"
              if sysconfig.get_config_var("Py_GIL_DISABLED") else "cffi is not installed")
    cffi = pytest.importorskip("cffi", reason=reason)
    return cffi.FFI()


def test_cffi_array(ffi):
    mem = ffi.new("double[6]", list(range(6)))
    buf = membuf.from_address(mem)
    address = int(ffi.cast("uintptr_t", mem))
    assert (buf.format, buf.shape, buf.nbytes, buf.address) == ("d", (6,), 48, address)
    assert buf.owner is mem
    assert np.asarray(buf).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_cffi_multidimensional_and_char_arrays(ffi):
    grid = membuf.from_address(ffi.new("int[2][3]"))
    assert (grid.format, grid.shape) == ("i", (2, 3))
    text = ffi.new("char[]", b"hi")
    buf = membuf.from_address(text)
    assert (buf.format, bytes(buf)) == ("B", b"hi\0")


def test_cffi_pointer_needs_a_size(ffi):
    mem = ffi.new("uint16_t[4]", [1, 2, 3, 4])
    p = ffi.cast("uint16_t *", mem)
    with pytest.raises(TypeError, match="needs a size"):
        membuf.from_address(p)
    buf = membuf.from_address(p, 8)
    assert (buf.format, buf.shape, buf.address) == ("H", (4,), int(ffi.cast("uintptr_t", mem)))
    assert np.asarray(buf).tolist() == [1, 2, 3, 4]
    assert membuf.from_address(ffi.cast("void *", mem), 8).format == "B"


def test_neither_ctypes_nor_cffi_is_imported_by_membuf():
    code = ("import sys, membuf; b = membuf.from_address(0, 0)\n"
            "try:\n    membuf.from_address('x', 0)\nexcept TypeError:\n    pass\n"
            "print(sorted(m for m in ('ctypes', 'cffi', '_cffi_backend') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# from_buffer
# ---------------------------------------------------------------------------


def test_from_buffer_holds_one_export_until_released():
    data = bytearray(b"0123456789abcdef")
    buf = membuf.from_buffer(data)
    assert buf.address == membuf.address_of(data) and buf.owner is data
    assert not buf.readonly and bytes(buf) == bytes(data)
    with pytest.raises(BufferError):
        data.append(0)  # the export is held
    buf[0] = ord("X")
    assert data[0] == ord("X")  # the same memory
    view = memoryview(buf)
    with pytest.raises(BufferError):
        buf.release()
    buf.release(defer=True)
    with pytest.raises(BufferError):
        data.append(0)  # still held: a view lives
    view.release()
    data.append(0)  # the export ended with the last view
    assert buf.released and buf.owner is None


def test_from_buffer_on_release_runs_once_after_the_export_ended():
    data = bytearray(8)
    cb = Recorder(check=lambda: data.extend(b"!"))  # resizing needs the export ended
    buf = membuf.from_buffer(data, on_release=cb)
    del buf
    assert cb.count == 1 and data.endswith(b"!")
    buf = membuf.from_buffer(data, on_release=cb)
    buf.release()
    buf.release()
    assert cb.count == 2


def test_from_buffer_on_release_errors():
    cb = Recorder(exc=RuntimeError("boom"))
    buf = membuf.from_buffer(b"abc", on_release=cb)
    with pytest.raises(RuntimeError, match="boom"):
        buf.release()  # strict release raises what on_release raised, once
    assert buf.released and cb.count == 1
    with pytest.raises(TypeError, match=r"^on_release must be callable or None, not int$"):
        membuf.from_buffer(b"abc", on_release=1)


@pytest.mark.parametrize("readonly, source, expect", [
    (None, bytes, True), (None, bytearray, False),
    (True, bytes, True), (True, bytearray, True),
    (False, bytearray, False),
])
def test_from_buffer_readonly(readonly, source, expect):
    buf = membuf.from_buffer(source(b"abcd"), readonly=readonly)
    assert buf.readonly is expect
    assert memoryview(buf).readonly is expect


def test_from_buffer_refusals_call_on_release_once():
    for call, exc, message in [
        (lambda cb: membuf.from_buffer(b"abc", readonly=False, on_release=cb), BufferError,
         "writable"),
        (lambda cb: membuf.from_buffer(42, on_release=cb), TypeError, "bytes-like|buffer"),
        (lambda cb: membuf.from_buffer(b"abc", readonly=1, on_release=cb), TypeError,
         r"^readonly must be True, False or None, not int$"),
        (lambda cb: membuf.from_buffer(bytearray(10), format="d", on_release=cb), ValueError,
         r"^len 10 is not a multiple of the item size 8 of format 'd'$"),
        (lambda cb: membuf.from_buffer(np.zeros((4, 4))[:, ::2], format="B", on_release=cb),
         (BufferError, ValueError), "contiguous"),
    ]:
        cb = Recorder()
        with pytest.raises(exc, match=message):
            call(cb)
        assert cb.count == 1


def test_from_buffer_follows_a_numpy_layout():
    arr = np.arange(24.0).reshape(4, 6)
    for source in [arr, arr[:, ::2], arr[::-1], arr[::-2, ::-3], arr.T, arr[1:1], np.array(5.0)]:
        buf = membuf.from_buffer(source)
        assert buf.format == "d" and buf.shape == source.shape
        assert buf.strides == source.strides
        assert buf.address == source.__array_interface__["data"][0]  # element 0, no copy
        assert np.array_equal(np.asarray(buf), source)
        assert buf.readonly is not source.flags.writeable


def test_from_buffer_reinterprets_contiguous_bytes():
    arr = np.arange(12.0)
    grid = membuf.from_buffer(arr, shape=(3, 4))  # keeps the exporter's format
    assert (grid.format, grid.shape, grid.address) == ("d", (3, 4), arr.ctypes.data)
    raw = membuf.from_buffer(arr, format="B")
    assert (raw.format, raw.shape) == ("B", (96,))
    ints = membuf.from_buffer(bytearray(16), format="i", shape=(2, 2), readonly=False)
    assert ints.shape == (2, 2) and not ints.readonly
    with pytest.raises(ValueError, match="covers 80 bytes, but len is 96"):
        membuf.from_buffer(arr, shape=(10,))


def test_from_buffer_of_a_buffer_holds_its_export():
    mem = doubles(4)
    source = membuf.from_address(mem)
    derived = membuf.from_buffer(source)
    assert source.exports == 1 and derived.address == source.address
    with pytest.raises(BufferError):
        source.release()
    derived.release()
    source.release()


def test_a_cycle_through_from_buffer_is_collected():
    data = bytearray(4)
    cb = Recorder()

    def make_cycle():
        box = []
        buf = membuf.from_buffer(data, on_release=lambda: (box, cb()))
        box.append(buf)  # Buffer -> on_release -> box -> Buffer: garbage on return

    make_cycle()
    assert cb.count == 0
    gc.collect()
    assert cb.count == 1
    data.append(0)  # the export ended


def test_shared_memory_stays_open_while_a_view_lives():
    shm = shared_memory.SharedMemory(create=True, size=4096)
    try:
        buf = membuf.from_buffer(shm.buf, on_release=shm.close)
        assert buf.address == membuf.address_of(shm.buf)
        arr = np.frombuffer(buf, dtype=np.uint8)
        arr_view = memoryview(buf)
        buf.release(defer=True)
        with pytest.raises(BufferError):
            shm.close()  # refused: our export of shm.buf is alive
        del arr
        arr_view.release()
        assert buf.released  # on_release closed it once the last view ended
        assert shm.buf is None
    finally:
        shm.close()
        shm.unlink()
