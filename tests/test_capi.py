"""The C API (membuf.h), driven from a downstream C extension.

`fakelib` (tests/capi/) plays "a C library": it hands out malloc'ed blocks
filled with i % 251, wraps them with MemBuf_FromMemory / MemBuf_FromSpec, and
counts how often each block is given back (`fakelib.releases(id)`).  Its
release callback asserts that ptr and len are exactly those given at creation,
so every release below also checks that.  The numbers in the section headings
refer to the contract at the top of membuf.h.
"""

import ctypes
import gc
import hashlib
import struct
import sys
import threading
import weakref

import numpy as np
import pytest

import membuf

import _testcapi  # CPython's own test helpers: set_nomemory() / remove_mem_hooks()

# PyBUF_* request flags (Include/pybuffer.h); inspect.BufferFlags is 3.12+.
PyBUF_SIMPLE = 0
PyBUF_WRITABLE = 0x0001
PyBUF_FORMAT = 0x0004
PyBUF_ND = 0x0008
PyBUF_STRIDES = 0x0010 | PyBUF_ND
PyBUF_C_CONTIGUOUS = 0x0020 | PyBUF_STRIDES
PyBUF_F_CONTIGUOUS = 0x0040 | PyBUF_STRIDES
PyBUF_ANY_CONTIGUOUS = 0x0080 | PyBUF_STRIDES
PyBUF_INDIRECT = 0x0100 | PyBUF_STRIDES
PyBUF_FULL_RO = PyBUF_INDIRECT | PyBUF_FORMAT

REQUESTS = {
    "SIMPLE": PyBUF_SIMPLE,
    "WRITABLE": PyBUF_WRITABLE,
    "FORMAT": PyBUF_FORMAT,
    "WRITABLE|FORMAT": PyBUF_WRITABLE | PyBUF_FORMAT,
    "ND": PyBUF_ND,
    "ND|FORMAT": PyBUF_ND | PyBUF_FORMAT,
    "CONTIG": PyBUF_ND | PyBUF_WRITABLE,
    "STRIDES": PyBUF_STRIDES,
    "STRIDED": PyBUF_STRIDES | PyBUF_WRITABLE,
    "RECORDS_RO": PyBUF_STRIDES | PyBUF_FORMAT,
    "RECORDS": PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE,
    "C_CONTIGUOUS": PyBUF_C_CONTIGUOUS,
    "C_CONTIGUOUS|FORMAT": PyBUF_C_CONTIGUOUS | PyBUF_FORMAT,
    "F_CONTIGUOUS": PyBUF_F_CONTIGUOUS,
    "F_CONTIGUOUS|FORMAT": PyBUF_F_CONTIGUOUS | PyBUF_FORMAT,
    "ANY_CONTIGUOUS": PyBUF_ANY_CONTIGUOUS,
    "ANY_CONTIGUOUS|FORMAT": PyBUF_ANY_CONTIGUOUS | PyBUF_FORMAT,
    "INDIRECT": PyBUF_INDIRECT,
    "FULL_RO": PyBUF_FULL_RO,
    "FULL": PyBUF_FULL_RO | PyBUF_WRITABLE,
}

RELEASED_MSG = "operation forbidden on released membuf.Buffer object"
PENDING_MSG = r"operation forbidden on membuf.Buffer object with a pending release"
NATIVE_FORMATS = set("bBc?hHiIlLqQnNefdP")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def pattern(n):
    """The contents fakelib gives a block of n bytes."""
    return bytes(i % 251 for i in range(n))


def expected_items(data, fmt, shape, strides, offset=0):
    """What memoryview.tolist() must give for a layout over data."""
    if not shape:
        values = struct.unpack_from(fmt, data, offset)
        return values[0] if len(values) == 1 else values
    return [
        expected_items(data, fmt, shape[1:], strides[1:], offset + i * strides[0])
        for i in range(shape[0])
    ]


def expected_bytes(data, itemsize, shape, strides, offset=0):
    """What tobytes() must give for a layout over data (C order)."""
    if 0 in shape:
        return b""
    if not shape:
        return data[offset : offset + itemsize]
    return b"".join(
        expected_bytes(data, itemsize, shape[1:], strides[1:], offset + i * strides[0])
        for i in range(shape[0])
    )


def fields(info):
    """A getbuffer() result without the address (compared separately)."""
    return {k: v for k, v in info.items() if k != "buf"}


def outcome(fakelib, obj, flags):
    try:
        return fields(fakelib.getbuffer(obj, flags))
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return type(exc)


def call_with_failing_allocations(fn, args, start, stop):
    """fn(*args) with CPython allocations number start..stop-1 failing
    (stop 0: all from start on), hooks removed again at once."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    # Buffers are recycled through a free list; empty it so that creating a
    # Buffer really allocates.
    membuf._membuf._clear_freelist()
    try:
        _testcapi.set_nomemory(start, stop)
        try:
            return fn(*args)
        finally:
            _testcapi.remove_mem_hooks()
    finally:
        if gc_was_enabled:
            gc.enable()


# ---------------------------------------------------------------------------
# MemBuf_FromMemory: zero-copy (1), read-only by default (7), exactly once (2)
# ---------------------------------------------------------------------------


class TestFromMemory:
    def test_plain_bytes_read_only_by_default(self, fakelib):
        block = fakelib.alloc(10)
        buf = fakelib.from_memory(block)
        assert membuf.Buffer is type(buf)
        assert buf.readonly is True
        assert buf.released is False
        assert buf.exports == 0
        assert (buf.format, buf.itemsize, buf.ndim) == ("B", 1, 1)
        assert (buf.shape, buf.strides, buf.nbytes) == ((10,), (1,), 10)
        assert buf.c_contiguous and buf.f_contiguous and buf.contiguous
        assert buf.owner is None
        assert bytes(buf) == pattern(10)
        assert buf.tobytes() == pattern(10)
        assert len(buf) == 10
        assert buf[3] == 3
        assert memoryview(buf).readonly

    def test_zero_copy(self, fakelib):
        block = fakelib.alloc(300)
        buf = fakelib.from_memory(block)
        address = fakelib.address(block)
        assert address != 0
        assert buf.address == address
        view = memoryview(buf)
        assert membuf.address_of(view) == address
        assert membuf.address_of(buf) == address
        assert fakelib.getbuffer(buf, PyBUF_SIMPLE)["buf"] == address
        assert fakelib.getbuffer(buf, PyBUF_FULL_RO)["buf"] == address
        array = np.frombuffer(buf, dtype=np.uint8)
        assert array.ctypes.data == address
        assert hashlib.sha256(buf).digest() == hashlib.sha256(pattern(300)).digest()
        del view, array

    def test_writable_exports_write_the_library_memory(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block, fakelib.WRITABLE)
        assert buf.readonly is False
        view = memoryview(buf)
        assert not view.readonly
        view[0] = 200
        view[15] = 201
        # Read the C library's memory directly, not through membuf.
        raw = ctypes.string_at(fakelib.address(block), 16)
        assert raw[0] == 200 and raw[15] == 201
        assert bytes(buf)[0] == 200
        info = fakelib.getbuffer(buf, PyBUF_WRITABLE)
        assert info["readonly"] == 0
        assert info["buf"] == fakelib.address(block)
        view.release()

    def test_read_only_refuses_writable_exports(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        with pytest.raises(BufferError, match="membuf.Buffer: underlying memory is read-only"):
            fakelib.getbuffer(buf, PyBUF_WRITABLE)
        with pytest.raises(BufferError, match="membuf.Buffer: underlying memory is read-only"):
            fakelib.getbuffer(buf, PyBUF_FULL_RO | PyBUF_WRITABLE)
        assert buf.exports == 0  # a refused request counts nothing
        view = memoryview(buf)
        with pytest.raises(TypeError):
            view[0] = 1
        view.release()
        assert ctypes.string_at(fakelib.address(block), 16) == pattern(16)
        fakelib.release(buf)  # no export left behind: a strict release works
        assert fakelib.releases(block) == 1

    def test_callback_once_on_dealloc(self, fakelib):
        block = fakelib.alloc(32)
        buf = fakelib.from_memory(block)
        assert fakelib.releases(block) == 0
        del buf
        assert fakelib.releases(block) == 1

    def test_callback_once_on_explicit_release(self, fakelib):
        block = fakelib.alloc(32)
        buf = fakelib.from_memory(block)
        assert fakelib.release(buf) is None
        assert fakelib.releases(block) == 1
        assert buf.released is True
        # Releasing again is a no-op, whatever the way and the flags.
        assert fakelib.release(buf) is None
        assert fakelib.release(buf, fakelib.DEFER) is None
        buf.release()
        buf.release(defer=True)
        assert fakelib.releases(block) == 1
        del buf
        assert fakelib.releases(block) == 1

    def test_callback_once_with_block(self, fakelib):
        block = fakelib.alloc(32)
        buf = fakelib.from_memory(block)
        with buf as entered:
            assert entered is buf
            assert bytes(entered) == pattern(32)
            assert fakelib.releases(block) == 0
        assert fakelib.releases(block) == 1
        assert buf.released
        fakelib.release(buf)
        del buf, entered
        assert fakelib.releases(block) == 1

    def test_callback_once_on_python_release(self, fakelib):
        block = fakelib.alloc(32)
        buf = fakelib.from_memory(block)
        buf.release()
        assert fakelib.releases(block) == 1
        fakelib.release(buf)
        del buf
        assert fakelib.releases(block) == 1

    def test_callback_runs_in_the_releasing_thread(self, fakelib):
        block = fakelib.alloc(32)
        buf = fakelib.from_memory(block)
        errors = []

        def release():
            try:
                fakelib.release(buf)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=release)
        thread.start()
        thread.join()
        assert errors == []
        assert fakelib.releases(block) == 1
        assert buf.released

    def test_null_with_len_0_is_a_valid_empty_buffer(self, fakelib):
        block = fakelib.alloc(0, null=True)
        assert fakelib.address(block) == 0
        buf = fakelib.from_memory(block)
        assert buf.nbytes == 0
        assert buf.shape == (0,)
        assert bytes(buf) == b""
        assert len(buf) == 0
        # No consumer ever sees a NULL pointer.
        assert buf.address != 0
        assert membuf.address_of(memoryview(buf)) == buf.address
        assert fakelib.getbuffer(buf, PyBUF_FULL_RO)["buf"] == buf.address
        assert fakelib.releases(block) == 0
        del buf
        assert fakelib.releases(block) == 1

    def test_non_null_with_len_0(self, fakelib):
        block = fakelib.alloc(0)
        buf = fakelib.from_memory(block)
        assert buf.address == fakelib.address(block) != 0
        assert bytes(buf) == b""
        fakelib.release(buf)
        assert fakelib.releases(block) == 1

    def test_len_py_ssize_t_max_is_accepted(self, fakelib):
        # The boundary of the OverflowError below; nothing reads the memory.
        buf = fakelib.from_memory_len(sys.maxsize)
        assert buf.nbytes == sys.maxsize
        assert fakelib.static_releases() == 0
        fakelib.release(buf)
        assert fakelib.static_releases() == 1
        del buf
        assert fakelib.static_releases() == 1


class TestSharedApiPointer:
    """fakelib.new() calls MemBuf_FromMemory from fakelib.c, a second C file
    that uses the pointer imported in fakelib_module.c (MEMBUF_UNIQUE_SYMBOL +
    MEMBUF_NO_IMPORT)."""

    def test_new_wraps_and_releases_once(self, fakelib):
        buf, block = fakelib.new(24)
        assert fakelib.check(buf) == 1
        assert buf.address == fakelib.address(block)
        assert bytes(buf) == pattern(24)
        assert buf.readonly
        del buf
        assert fakelib.releases(block) == 1

    def test_new_writable(self, fakelib):
        buf, block = fakelib.new(24, fakelib.WRITABLE)
        assert not buf.readonly
        memoryview(buf)[1] = 99
        assert ctypes.string_at(fakelib.address(block), 2) == b"\x00\x63"
        fakelib.release(buf)
        assert fakelib.releases(block) == 1

    def test_the_shared_pointer_is_not_exported(self, fakelib):
        # Hidden by default (MEMBUF_API_SYMBOL_ATTRIBUTE), as NumPy hides
        # PY_ARRAY_UNIQUE_SYMBOL: two extensions that pick the same name
        # must not bind to one another's pointer.
        library = ctypes.CDLL(fakelib.__file__)
        with pytest.raises(AttributeError, match="undefined symbol: fakelib_membuf_api"):
            library.fakelib_membuf_api
        assert library.PyInit_fakelib  # the module's own entry point is exported

    def test_new_with_bad_flags_gives_the_block_back(self, fakelib):
        gc.collect()
        before = fakelib.outstanding()
        with pytest.raises(
            ValueError, match=r"unknown creation flags 0x2 \(known: MEMBUF_WRITABLE\)"
        ):
            fakelib.new(24, 2)
        assert fakelib.outstanding() == before


# ---------------------------------------------------------------------------
# Bad inputs: the exact error, and the callback has run (3)
# ---------------------------------------------------------------------------


BAD_SPECS = [
    # (id, block len, from_spec keywords, exception, message regex)
    ("flags-0x2", 8, dict(flags=2), ValueError,
     r"^unknown creation flags 0x2 \(known: MEMBUF_WRITABLE\)$"),
    ("flags-internal-bit", 8, dict(flags=0x100), ValueError,
     r"^unknown creation flags 0x100 \(known: MEMBUF_WRITABLE\)$"),
    ("flags-minus-1", 8, dict(flags=-1), ValueError,
     r"^unknown creation flags 0xfffffffe \(known: MEMBUF_WRITABLE\)$"),
    ("format-empty", 8, dict(format=""), ValueError, r"^invalid format '': items of size 0$"),
    ("format-Z", 8, dict(format="Z"), ValueError,
     r"^invalid format 'Z': bad char in struct format$"),
    ("format-0i", 8, dict(format="0i"), ValueError, r"^invalid format '0i': items of size 0$"),
    ("format-words", 8, dict(format="not a format"), ValueError,
     r"^invalid format 'not a format': bad char in struct format$"),
    ("format-bad-with-shape", 8, dict(format="Z", ndim=1, shape=[8]), ValueError,
     r"^invalid format 'Z': bad char in struct format$"),
    ("ndim-65", 1, dict(ndim=65, shape=[1] * 65), ValueError, r"^ndim 65 is outside 0\.\.64$"),
    ("ndim-minus-1", 8, dict(ndim=-1, shape=[]), ValueError, r"^ndim -1 is outside 0\.\.64$"),
    ("ndim-65-shape-null", 8, dict(ndim=65), ValueError,
     r"^ndim is 65 but shape is NULL \(NULL shape means one dimension\)$"),
    ("ndim-minus-1-shape-null", 8, dict(ndim=-1), ValueError,
     r"^ndim is -1 but shape is NULL \(NULL shape means one dimension\)$"),
    ("ndim-2-shape-null", 8, dict(ndim=2), ValueError,
     r"^ndim is 2 but shape is NULL \(NULL shape means one dimension\)$"),
    ("ndim-2-shape-null-typed", 16, dict(format="d", ndim=2), ValueError,
     r"^ndim is 2 but shape is NULL"),
    ("strides-without-shape", 8, dict(format="d", strides=[8]), ValueError,
     r"^strides given without a shape$"),
    ("negative-shape", 8, dict(ndim=2, shape=[2, -1]), ValueError,
     r"^shape\[1\] is negative \(-1\)$"),
    ("negative-shape-first", 8, dict(ndim=1, shape=[-8]), ValueError,
     r"^shape\[0\] is negative \(-8\)$"),
    ("len-not-a-multiple", 10, dict(format="d"), ValueError,
     r"^len 10 is not a multiple of the item size 8 of format 'd'$"),
    ("c-contiguous-len-too-large", 100, dict(format="d", ndim=2, shape=[3, 4]), ValueError,
     r"^a C-contiguous layout of shape and format 'd' covers 96 bytes, but len is 100$"),
    ("c-contiguous-len-too-small", 88, dict(format="d", ndim=2, shape=[3, 4]), ValueError,
     r"^a C-contiguous layout of shape and format 'd' covers 96 bytes, but len is 88$"),
    ("c-contiguous-bytes", 10, dict(ndim=2, shape=[2, 3]), ValueError,
     r"^a C-contiguous layout of shape and format 'B' covers 6 bytes, but len is 10$"),
    ("0-dim-len-mismatch", 16, dict(format="d", ndim=0, shape=[]), ValueError,
     r"^a C-contiguous layout of shape and format 'd' covers 8 bytes, but len is 16$"),
    ("strides-too-large", 71, dict(format="d", ndim=1, shape=[5], strides=[16]), ValueError,
     r"^the layout \(shape, strides, format 'd'\) reaches outside the 71 bytes at ptr$"),
    ("strides-too-large-2d", 96, dict(format="d", ndim=2, shape=[3, 4], strides=[32, 9]),
     ValueError, r"^the layout \(shape, strides, format 'd'\) reaches outside the 96 bytes"),
    ("strides-negative", 16, dict(format="d", ndim=1, shape=[2], strides=[-8]), ValueError,
     r"^the layout \(shape, strides, format 'd'\) reaches outside the 16 bytes at ptr$"),
    ("strides-negative-2d", 96, dict(format="d", ndim=2, shape=[3, 4], strides=[32, -8]),
     ValueError, r"reaches outside the 96 bytes at ptr$"),
    ("item-larger-than-len", 4, dict(format="d", ndim=1, shape=[1], strides=[8]), ValueError,
     r"^the layout \(shape, strides, format 'd'\) reaches outside the 4 bytes at ptr$"),
    ("stride-span-overflows", 64, dict(format="d", ndim=1, shape=[3], strides=[2**62]),
     ValueError, r"reaches outside the 64 bytes at ptr$"),
    ("shape-product-overflows", 8, dict(ndim=2, shape=[2**62, 4]), OverflowError,
     r"^the product of the shape overflows$"),
    ("shape-product-overflows-strided", 8, dict(ndim=2, shape=[2**62, 4], strides=[1, 1]),
     OverflowError, r"^the product of the shape overflows$"),
    ("layout-size-overflows", 8, dict(format="d", ndim=1, shape=[2**61]), OverflowError,
     r"^the size of the layout overflows$"),
]


class TestBadInputs:
    def test_null_ptr_with_len(self, fakelib):
        block = fakelib.alloc(10, null=True)
        with pytest.raises(ValueError, match=r"^ptr is NULL but len is 10$"):
            fakelib.from_memory(block)
        assert fakelib.releases(block) == 1

    def test_null_ptr_with_len_from_spec(self, fakelib):
        block = fakelib.alloc(10, null=True)
        with pytest.raises(ValueError, match=r"^ptr is NULL but len is 10$"):
            fakelib.from_spec(block, format="b")
        assert fakelib.releases(block) == 1

    @pytest.mark.parametrize("length", [sys.maxsize + 1, 2**64 - 1])
    def test_len_larger_than_py_ssize_t_max(self, fakelib, length):
        with pytest.raises(OverflowError, match=rf"^len {length} is larger than PY_SSIZE_T_MAX$"):
            fakelib.from_memory_len(length)
        assert fakelib.static_releases() == 1

    @pytest.mark.parametrize("flags", [2, 0x100, -1, 3])
    def test_from_memory_unknown_flags(self, fakelib, flags):
        block = fakelib.alloc(8)
        unknown = flags & ~1 & 0xFFFFFFFF
        with pytest.raises(
            ValueError, match=rf"^unknown creation flags {unknown:#x} \(known: MEMBUF_WRITABLE\)$"
        ):
            fakelib.from_memory(block, flags)
        assert fakelib.releases(block) == 1

    @pytest.mark.parametrize(
        "length, spec, exc, message", [p[1:] for p in BAD_SPECS], ids=[p[0] for p in BAD_SPECS]
    )
    def test_from_spec_rejects(self, fakelib, length, spec, exc, message):
        block = fakelib.alloc(length)
        with pytest.raises(exc, match=message):
            fakelib.from_spec(block, **spec)
        assert fakelib.releases(block) == 1

    def test_failed_creation_leaves_the_owner_alone(self, fakelib):
        class Owner:
            pass

        owner = Owner()
        ref = weakref.ref(owner)
        refs = sys.getrefcount(owner)
        block = fakelib.alloc(8)
        with pytest.raises(ValueError, match="unknown creation flags"):
            fakelib.from_spec(block, flags=2, owner=owner)
        assert sys.getrefcount(owner) == refs
        assert fakelib.releases(block) == 1
        del owner
        assert ref() is None

    def test_spec_null(self, fakelib):
        with pytest.raises(ValueError, match=r"^MemBuf_FromSpec: spec is NULL$"):
            fakelib.from_spec_null()

    def test_no_callback_is_fine(self, fakelib):
        # release=False: a NULL callback (static memory) on failure and success.
        block = fakelib.alloc(8)
        with pytest.raises(ValueError, match="unknown creation flags"):
            fakelib.from_spec(block, flags=2, release=False)
        buf = fakelib.from_spec(block, release=False)
        assert bytes(buf) == pattern(8)
        fakelib.release(buf)
        del buf
        assert fakelib.releases(block) == 0


# ---------------------------------------------------------------------------
# MemBuf_Release and MemBuf_Check
# ---------------------------------------------------------------------------


class TestReleaseAndCheck:
    @pytest.mark.parametrize(
        "obj, name",
        [(b"abc", "bytes"), (bytearray(3), "bytearray"), (memoryview(b"x"), "memoryview"),
         (None, "NoneType"), (membuf.Buffer, "type")],
    )
    def test_release_of_a_non_buffer(self, fakelib, obj, name):
        with pytest.raises(
            TypeError, match=rf"^MemBuf_Release: expected a membuf\.Buffer, not {name}$"
        ):
            fakelib.release(obj)

    def test_release_of_null(self, fakelib):
        with pytest.raises(
            TypeError, match=r"^MemBuf_Release: expected a membuf\.Buffer, not NULL$"
        ):
            fakelib.release_null()

    @pytest.mark.parametrize("flags", [2, 3, 0x100, -1])
    def test_release_unknown_flags(self, fakelib, flags):
        block = fakelib.alloc(8)
        buf = fakelib.from_memory(block)
        unknown = flags & ~1 & 0xFFFFFFFF
        with pytest.raises(
            ValueError,
            match=rf"^MemBuf_Release: unknown flags {unknown:#x} \(known: MEMBUF_DEFER\)$",
        ):
            fakelib.release(buf, flags)
        assert fakelib.releases(block) == 0
        assert not buf.released
        assert bytes(buf) == pattern(8)
        fakelib.release(buf)
        assert fakelib.releases(block) == 1

    def test_check_buffers(self, fakelib):
        block = fakelib.alloc(8)
        buf = fakelib.from_memory(block)
        assert fakelib.check(buf) == 1
        piece = buf[2:4]
        assert fakelib.check(piece) == 1
        typed = fakelib.from_spec(fakelib.alloc(16), format="d")
        assert fakelib.check(typed) == 1
        assert fakelib.check(membuf.from_address(0, 0)) == 1
        del piece
        fakelib.release(buf)
        assert fakelib.check(buf) == 1  # still a Buffer once released

    @pytest.mark.parametrize(
        "obj",
        [b"", b"abc", bytearray(4), memoryview(b"abc"), None, membuf.Buffer, object(), 0],
        ids=["bytes-empty", "bytes", "bytearray", "memoryview", "NULL", "Buffer-type", "object",
             "int"],
    )
    def test_check_non_buffers(self, fakelib, obj):
        # None stands for NULL in fakelib.check().
        assert fakelib.check(obj) == 0

    def test_is_released(self, fakelib):
        buf = fakelib.from_memory(fakelib.alloc(8))
        piece = buf[2:4]
        assert fakelib.is_released(buf) == 0 and fakelib.is_released(piece) == 0
        buf.release(defer=True)  # pending: no new export can be made
        assert fakelib.is_released(buf) == 1 and not buf.released
        del piece
        assert fakelib.is_released(buf) == 1 and buf.released

    @pytest.mark.parametrize("obj, name", [(b"abc", "bytes"), (None, "NULL"),
                                           (membuf.Buffer, "type")])
    def test_is_released_of_a_non_buffer(self, fakelib, obj, name):
        with pytest.raises(
            TypeError, match=rf"^MemBuf_IsReleased: expected a membuf\.Buffer, not {name}$"
        ):
            fakelib.is_released(obj)

    def test_check_memoryview_of_a_buffer(self, fakelib):
        buf = fakelib.from_memory(fakelib.alloc(4))
        view = memoryview(buf)
        assert fakelib.check(view) == 0
        view.release()


# ---------------------------------------------------------------------------
# MemBuf_FromSpec: valid layouts
# ---------------------------------------------------------------------------

# (id, block len, from_spec keywords,
#  format, itemsize, shape, strides, nbytes, c_contiguous, f_contiguous)
VALID_LAYOUTS = [
    ("zeroed-spec", 10, dict(), "B", 1, (10,), (1,), 10, True, True),
    ("format-B", 10, dict(format="B"), "B", 1, (10,), (1,), 10, True, True),
    ("d", 64, dict(format="d"), "d", 8, (8,), (8,), 64, True, True),
    ("d-ndim-1", 64, dict(format="d", ndim=1), "d", 8, (8,), (8,), 64, True, True),
    ("d-shape", 64, dict(format="d", ndim=1, shape=[8]), "d", 8, (8,), (8,), 64, True, True),
    ("i", 40, dict(format="i"), "i", 4, (10,), (4,), 40, True, True),
    ("at-h", 40, dict(format="@h"), "@h", 2, (20,), (2,), 40, True, True),
    ("<q", 64, dict(format="<q"), "<q", 8, (8,), (8,), 64, True, True),
    ("2h", 40, dict(format="2h"), "2h", 4, (10,), (4,), 40, True, True),
    ("d-2d-c", 96, dict(format="d", ndim=2, shape=[3, 4]), "d", 8, (3, 4), (32, 8), 96, True,
     False),
    ("d-2d-fortran", 96, dict(format="d", ndim=2, shape=[3, 4], strides=[8, 24]), "d", 8, (3, 4),
     (8, 24), 96, False, True),
    ("d-strided", 72, dict(format="d", ndim=1, shape=[5], strides=[16]), "d", 8, (5,), (16,), 40,
     False, False),
    ("i-3d-strided", 240, dict(format="i", ndim=3, shape=[2, 3, 2], strides=[120, 40, 8]), "i", 4,
     (2, 3, 2), (120, 40, 8), 48, False, False),
    ("d-0-dim", 8, dict(format="d", ndim=0, shape=[]), "d", 8, (), (), 8, True, True),
    ("B-0-dim", 1, dict(ndim=0, shape=[]), "B", 1, (), (), 1, True, True),
    ("d-empty", 0, dict(format="d", ndim=2, shape=[0, 5]), "d", 8, (0, 5), (40, 8), 0, True,
     True),
    ("d-empty-any-strides", 0, dict(format="d", ndim=2, shape=[0, 3], strides=[-8, 1000]), "d",
     8, (0, 3), (-8, 1000), 0, True, True),
    ("empty-overflowing-shape", 0, dict(ndim=3, shape=[2**62, 4, 0]), "B", 1, (2**62, 4, 0),
     (4, 1, 1), 0, True, True),
    ("d-broadcast", 8, dict(format="d", ndim=1, shape=[4], strides=[0]), "d", 8, (4,), (0,), 32,
     False, False),
    ("d-negative-stride-one-item", 8, dict(format="d", ndim=1, shape=[1], strides=[-8]), "d", 8,
     (1,), (-8,), 8, True, True),
    ("B-2d", 12, dict(ndim=2, shape=[3, 4]), "B", 1, (3, 4), (4, 1), 12, True, False),
    ("B-strided", 10, dict(ndim=1, shape=[5], strides=[2]), "B", 1, (5,), (2,), 5, False, False),
    ("B-ndim-64", 1, dict(ndim=64, shape=[1] * 64), "B", 1, (1,) * 64, (1,) * 64, 1, True, True),
]


def layout_params():
    return pytest.mark.parametrize(
        "length, spec, fmt, itemsize, shape, strides, nbytes, c_contig, f_contig",
        [p[1:] for p in VALID_LAYOUTS],
        ids=[p[0] for p in VALID_LAYOUTS],
    )


class TestFromSpecLayouts:
    @layout_params()
    def test_attributes(self, fakelib, length, spec, fmt, itemsize, shape, strides, nbytes,
                        c_contig, f_contig):
        block = fakelib.alloc(length)
        buf = fakelib.from_spec(block, **spec)
        assert buf.format == fmt
        assert buf.itemsize == itemsize
        assert buf.ndim == len(shape)
        assert buf.shape == shape
        assert buf.strides == strides
        assert buf.nbytes == nbytes
        assert buf.c_contiguous is c_contig
        assert buf.f_contiguous is f_contig
        assert buf.contiguous is (c_contig or f_contig)
        assert buf.readonly is True
        assert buf.address == fakelib.address(block)
        del buf
        assert fakelib.releases(block) == 1

    @layout_params()
    def test_full_export(self, fakelib, length, spec, fmt, itemsize, shape, strides, nbytes,
                         c_contig, f_contig):
        block = fakelib.alloc(length)
        buf = fakelib.from_spec(block, **spec)
        info = fakelib.getbuffer(buf, PyBUF_FULL_RO)
        assert info == {
            "buf": fakelib.address(block),
            "len": nbytes,
            "readonly": 1,
            "itemsize": itemsize,
            "ndim": len(shape),
            "format": fmt,
            # 0-dim: shape and strides MUST be NULL (as memoryview exports it)
            "shape": shape if shape else None,
            "strides": strides if shape else None,
            "suboffsets": None,
        }
        assert buf.exports == 0  # getbuffer released its export
        view = memoryview(buf)
        assert (view.format, view.itemsize, view.shape, view.strides, view.nbytes) == (
            fmt, itemsize, shape, strides, nbytes)
        assert membuf.address_of(view) == fakelib.address(block)
        view.release()
        fakelib.release(buf)
        assert fakelib.releases(block) == 1

    @layout_params()
    def test_contents(self, fakelib, length, spec, fmt, itemsize, shape, strides, nbytes,
                      c_contig, f_contig):
        block = fakelib.alloc(length)
        buf = fakelib.from_spec(block, **spec)
        data = pattern(length)
        assert buf.tobytes() == expected_bytes(data, itemsize, shape, strides)
        assert memoryview(buf).tobytes() == expected_bytes(data, itemsize, shape, strides)
        # (tolist() of shape (2**62, 4, 0) would be 2**62 empty lists)
        listable = all(n < 1000 for n in shape)
        if listable and fmt.lstrip("@") in NATIVE_FORMATS:
            assert memoryview(buf).tolist() == expected_items(data, fmt, shape, strides)
        if listable and fmt != "2h":  # numpy refuses shape (2**62, 4, 0) too
            array = np.asarray(buf)
            assert array.shape == shape
            if nbytes:
                assert array.ctypes.data == fakelib.address(block)
            assert array.tolist() == expected_items(data, fmt, shape, strides)
            del array
        del buf
        assert fakelib.releases(block) == 1

    def test_zeroed_spec_equals_from_memory(self, fakelib):
        a_block, b_block = fakelib.alloc(12), fakelib.alloc(12)
        a = fakelib.from_spec(a_block)
        b = fakelib.from_memory(b_block)
        names = ["format", "itemsize", "ndim", "shape", "strides", "nbytes", "readonly",
                 "c_contiguous", "f_contiguous", "owner", "exports", "released"]
        assert [getattr(a, n) for n in names] == [getattr(b, n) for n in names]
        for flags in REQUESTS.values():
            assert outcome(fakelib, a, flags) == outcome(fakelib, b, flags)
        assert bytes(a) == bytes(b) == pattern(12)
        assert a[2:5].tobytes() == b[2:5].tobytes()
        assert repr(a).split("nbytes=")[1] == repr(b).split("nbytes=")[1]

    def test_writable_spec(self, fakelib):
        block = fakelib.alloc(96)
        buf = fakelib.from_spec(block, format="d", ndim=2, shape=[3, 4], flags=fakelib.WRITABLE)
        assert buf.readonly is False
        view = memoryview(buf)
        view[1, 2] = 1.5
        assert struct.unpack_from("d", ctypes.string_at(fakelib.address(block), 96), 48)[0] == 1.5
        view.release()

    def test_spec_arrays_are_copied(self, fakelib):
        # fakelib's shape/strides arrays live on its C stack and are gone
        # after the call; a Buffer that kept pointers would show garbage.
        block = fakelib.alloc(96)
        buf = fakelib.from_spec(block, format="d", ndim=2, shape=[3, 4], strides=[8, 24])
        fakelib.from_spec(fakelib.alloc(40), format="i", ndim=2, shape=[5, 2], strides=[8, 4])
        assert buf.shape == (3, 4) and buf.strides == (8, 24) and buf.format == "d"


# ---------------------------------------------------------------------------
# Every PyBUF_* request answered as CPython answers it (8)
# ---------------------------------------------------------------------------


def _readonly_numpy(array):
    array.setflags(write=False)
    return memoryview(array)


# (id, make our Buffer, make CPython's reference exporter)
REFERENCES = [
    ("bytes", lambda f: f.from_memory(f.alloc(12)), lambda: bytes(12)),
    ("bytearray", lambda f: f.from_memory(f.alloc(12), f.WRITABLE), lambda: bytearray(12)),
    ("zeroed-spec", lambda f: f.from_spec(f.alloc(12)), lambda: bytes(12)),
    ("d", lambda f: f.from_spec(f.alloc(64), format="d"),
     lambda: memoryview(bytes(64)).cast("d")),
    ("i", lambda f: f.from_spec(f.alloc(40), format="i"),
     lambda: memoryview(bytes(40)).cast("i")),
    ("d-writable", lambda f: f.from_spec(f.alloc(64), format="d", flags=f.WRITABLE),
     lambda: memoryview(bytearray(64)).cast("d")),
    ("d-2d-c", lambda f: f.from_spec(f.alloc(96), format="d", ndim=2, shape=[3, 4]),
     lambda: memoryview(bytes(96)).cast("d", (3, 4))),
    ("d-2d-c-writable",
     lambda f: f.from_spec(f.alloc(96), format="d", ndim=2, shape=[3, 4], flags=f.WRITABLE),
     lambda: memoryview(bytearray(96)).cast("d", (3, 4))),
    ("d-2d-fortran",
     lambda f: f.from_spec(f.alloc(96), format="d", ndim=2, shape=[3, 4], strides=[8, 24]),
     lambda: _readonly_numpy(np.zeros((3, 4), order="F"))),
    ("d-strided", lambda f: f.from_spec(f.alloc(72), format="d", ndim=1, shape=[5], strides=[16]),
     lambda: memoryview(bytes(80)).cast("d")[::2]),
    ("d-0-dim", lambda f: f.from_spec(f.alloc(8), format="d", ndim=0, shape=[]),
     lambda: memoryview(bytes(8)).cast("d", ())),
    ("d-empty", lambda f: f.from_spec(f.alloc(0), format="d", ndim=2, shape=[0, 5]),
     lambda: _readonly_numpy(np.zeros((0, 5)))),
    ("d-broadcast", lambda f: f.from_spec(f.alloc(8), format="d", ndim=1, shape=[4], strides=[0]),
     lambda: memoryview(np.broadcast_to(np.zeros(1), (4,)))),
    ("d-negative-stride-one-item",
     lambda f: f.from_spec(f.alloc(8), format="d", ndim=1, shape=[1], strides=[-8]),
     lambda: memoryview(bytes(8)).cast("d")[::-1]),
    ("B-2d", lambda f: f.from_spec(f.alloc(12), ndim=2, shape=[3, 4]),
     lambda: memoryview(bytes(12)).cast("B", (3, 4))),
    ("B-strided", lambda f: f.from_spec(f.alloc(10), ndim=1, shape=[5], strides=[2]),
     lambda: memoryview(bytes(10))[::2]),
    ("b-signed", lambda f: f.from_spec(f.alloc(12), format="b"),
     lambda: memoryview(bytes(12)).cast("b")),
]


class TestRequests:
    @pytest.mark.parametrize("request_name", list(REQUESTS))
    @pytest.mark.parametrize(
        "make, reference", [p[1:] for p in REFERENCES], ids=[p[0] for p in REFERENCES]
    )
    def test_answered_like_cpython(self, fakelib, make, reference, request_name):
        flags = REQUESTS[request_name]
        buf = make(fakelib)
        ref = reference()
        ours = outcome(fakelib, buf, flags)
        theirs = outcome(fakelib, ref, flags)
        assert ours == theirs
        assert buf.exports == 0

    def test_exports_are_counted_and_share_the_address(self, fakelib):
        block = fakelib.alloc(96)
        buf = fakelib.from_spec(block, format="d", ndim=2, shape=[3, 4])
        views = [memoryview(buf) for _ in range(3)]
        assert buf.exports == 3
        assert {membuf.address_of(v) for v in views} == {fakelib.address(block)}
        for v in views:
            v.release()
        assert buf.exports == 0


# ---------------------------------------------------------------------------
# Owners (2, 10)
# ---------------------------------------------------------------------------


class Owner:
    pass


class TestOwner:
    def test_owner_kept_alive_until_release(self, fakelib):
        owner = Owner()
        ref = weakref.ref(owner)
        block = fakelib.alloc(16)
        buf = fakelib.from_spec(block, owner=owner)
        assert buf.owner is owner
        del owner
        gc.collect()
        assert ref() is not None
        assert buf.owner is ref()
        fakelib.release(buf)
        assert ref() is None
        assert buf.owner is None
        assert fakelib.releases(block) == 1

    def test_owner_kept_alive_until_dealloc(self, fakelib):
        owner = Owner()
        ref = weakref.ref(owner)
        block = fakelib.alloc(16)
        buf = fakelib.from_spec(block, format="h", owner=owner)
        del owner
        gc.collect()
        assert ref() is not None
        del buf
        assert ref() is None
        assert fakelib.releases(block) == 1

    def test_owner_dropped_exactly_once(self, fakelib):
        owner = Owner()
        base = sys.getrefcount(owner)
        block = fakelib.alloc(16)
        buf = fakelib.from_spec(block, owner=owner)
        assert sys.getrefcount(owner) == base + 1
        fakelib.release(buf)
        assert sys.getrefcount(owner) == base
        fakelib.release(buf)
        buf.release()
        del buf
        assert sys.getrefcount(owner) == base
        assert fakelib.releases(block) == 1

    def test_owner_dropped_after_the_callback(self, fakelib):
        block = fakelib.alloc(16)
        seen = []
        owner = Owner()
        ref = weakref.ref(owner, lambda _: seen.append(fakelib.releases(block)))
        buf = fakelib.from_spec(block, owner=owner)
        del owner
        fakelib.release(buf)
        assert seen == [1]
        assert ref() is None

    def test_owner_dropped_when_the_last_export_ends_after_defer(self, fakelib):
        owner = Owner()
        ref = weakref.ref(owner)
        block = fakelib.alloc(16)
        buf = fakelib.from_spec(block, owner=owner)
        del owner
        view = memoryview(buf)
        fakelib.release(buf, fakelib.DEFER)
        assert ref() is not None
        assert buf.owner is ref()
        view.release()
        assert ref() is None
        assert fakelib.releases(block) == 1

    def test_owner_of_a_plain_buffer_is_none(self, fakelib):
        buf = fakelib.from_memory(fakelib.alloc(4))
        assert buf.owner is None


# ---------------------------------------------------------------------------
# Strict release with exports (4), deferred release (5), after release (6)
# ---------------------------------------------------------------------------


class TestStrictRelease:
    def test_one_export(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        view = memoryview(buf)
        with pytest.raises(
            BufferError,
            match=r"^membuf\.Buffer has 1 exported buffer; release it first, or call "
            r"release\(defer=True\)$",
        ):
            fakelib.release(buf)
        # Nothing changed.
        assert fakelib.releases(block) == 0
        assert not buf.released
        assert buf.exports == 1
        assert bytes(view) == pattern(16)
        assert bytes(buf) == pattern(16)
        second = memoryview(buf)  # new exports still allowed
        second.release()
        view.release()
        fakelib.release(buf)
        assert fakelib.releases(block) == 1

    def test_two_exports(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_spec(block, format="h")
        views = [memoryview(buf), memoryview(buf)]
        with pytest.raises(
            BufferError,
            match=r"^membuf\.Buffer has 2 exported buffers; release them first, or call "
            r"release\(defer=True\)$",
        ):
            fakelib.release(buf)
        assert fakelib.releases(block) == 0
        assert buf.exports == 2
        views.pop().release()
        with pytest.raises(BufferError, match=r"has 1 exported buffer;"):
            fakelib.release(buf)
        views.pop().release()
        fakelib.release(buf)
        assert fakelib.releases(block) == 1

    def test_python_release_and_with_are_strict_too(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        view = memoryview(buf)
        with pytest.raises(BufferError, match=r"has 1 exported buffer"):
            buf.release()
        with pytest.raises(BufferError, match=r"has 1 exported buffer"):
            with buf:
                pass
        assert fakelib.releases(block) == 0
        assert not buf.released
        view.release()
        with buf:
            pass
        assert fakelib.releases(block) == 1

    def test_export_held_by_numpy(self, fakelib):
        block = fakelib.alloc(96)
        buf = fakelib.from_spec(block, format="d", ndim=2, shape=[3, 4])
        array = np.asarray(buf)
        with pytest.raises(BufferError, match=r"has 1 exported buffer"):
            fakelib.release(buf)
        assert fakelib.releases(block) == 0
        del array
        fakelib.release(buf)
        assert fakelib.releases(block) == 1


class TestDeferredRelease:
    def test_no_exports_releases_at_once(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        fakelib.release(buf, fakelib.DEFER)
        assert fakelib.releases(block) == 1
        assert buf.released

    def test_waits_for_the_last_export(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        first, second = memoryview(buf), memoryview(buf)
        assert fakelib.release(buf, fakelib.DEFER) is None
        assert fakelib.releases(block) == 0
        assert not buf.released
        # New exports are refused at once ...
        with pytest.raises(ValueError, match=PENDING_MSG):
            memoryview(buf)
        with pytest.raises(ValueError, match=PENDING_MSG):
            fakelib.getbuffer(buf, PyBUF_SIMPLE)
        with pytest.raises(ValueError, match=PENDING_MSG):
            buf[1:3]
        with pytest.raises(ValueError, match=PENDING_MSG):
            buf.tobytes()
        assert buf.exports == 2
        # ... existing ones still see the memory.
        assert bytes(first) == pattern(16)
        first.release()
        assert fakelib.releases(block) == 0
        assert second[5] == 5
        second.release()
        assert fakelib.releases(block) == 1
        assert buf.released
        with pytest.raises(ValueError, match=RELEASED_MSG):
            memoryview(buf)
        fakelib.release(buf)
        fakelib.release(buf, fakelib.DEFER)
        del buf
        assert fakelib.releases(block) == 1

    def test_defer_twice(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        view = memoryview(buf)
        fakelib.release(buf, fakelib.DEFER)
        fakelib.release(buf, fakelib.DEFER)
        assert fakelib.releases(block) == 0
        view.release()
        assert fakelib.releases(block) == 1

    def test_dealloc_after_defer_with_export(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        view = memoryview(buf)
        fakelib.release(buf, fakelib.DEFER)
        del buf  # the view keeps it alive
        assert fakelib.releases(block) == 0
        del view
        assert fakelib.releases(block) == 1


class TestAfterRelease:
    def test_memory_refused_metadata_answers(self, fakelib):
        block = fakelib.alloc(96)
        buf = fakelib.from_spec(block, format="d", ndim=2, shape=[3, 4], flags=fakelib.WRITABLE)
        address = fakelib.address(block)
        fakelib.release(buf)
        for touch in [
            lambda: memoryview(buf),
            lambda: fakelib.getbuffer(buf, PyBUF_SIMPLE),
            lambda: fakelib.getbuffer(buf, PyBUF_FULL_RO),
            lambda: bytes(buf),
            lambda: buf.tobytes(),
            lambda: buf.hex(),
            lambda: len(buf),
            lambda: buf[0],
            lambda: buf[0:1],
            lambda: buf[0, 0],
            lambda: buf.__enter__(),
            lambda: np.frombuffer(buf),  # (np.asarray would wrap it in an object array)
            lambda: membuf.address_of(buf),
        ]:
            with pytest.raises(ValueError, match=RELEASED_MSG):
                touch()
        assert buf.released is True
        assert buf.address == address
        assert buf.nbytes == 96
        assert buf.format == "d"
        assert buf.itemsize == 8
        assert buf.shape == (3, 4)
        assert buf.strides == (32, 8)
        assert buf.readonly is False
        assert buf.exports == 0
        assert buf.owner is None
        assert "released" in repr(buf)
        assert fakelib.releases(block) == 1

    def test_plain_bytes_after_release(self, fakelib):
        block = fakelib.alloc(8)
        buf = fakelib.from_memory(block)
        fakelib.release(buf)
        for touch in [lambda: bytes(buf), lambda: len(buf), lambda: buf[0], lambda: buf[1:],
                      lambda: memoryview(buf)]:
            with pytest.raises(ValueError, match=RELEASED_MSG):
                touch()
        assert (buf.address, buf.nbytes, buf.shape) == (fakelib.address(block), 8, (8,))


# ---------------------------------------------------------------------------
# Slices share (9)
# ---------------------------------------------------------------------------


class TestSlices:
    def test_slice_of_a_c_buffer_shares_and_holds_an_export(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        piece = buf[2:5]
        assert piece.address == fakelib.address(block) + 2
        assert bytes(piece) == pattern(16)[2:5]
        assert buf.exports == 1
        with pytest.raises(BufferError, match=r"has 1 exported buffer"):
            fakelib.release(buf)
        assert fakelib.releases(block) == 0
        del piece
        assert buf.exports == 0
        fakelib.release(buf)
        assert fakelib.releases(block) == 1

    def test_memory_goes_back_when_parent_and_slices_are_gone(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        piece = buf[4:]
        smaller = piece[1:3]
        del buf
        assert fakelib.releases(block) == 0
        del piece
        assert fakelib.releases(block) == 0
        assert bytes(smaller) == pattern(16)[5:7]
        del smaller
        assert fakelib.releases(block) == 1

    def test_deferred_parent_released_by_last_slice(self, fakelib):
        block = fakelib.alloc(16)
        buf = fakelib.from_memory(block)
        piece = buf[::2]
        fakelib.release(buf, fakelib.DEFER)
        assert fakelib.releases(block) == 0
        assert bytes(piece) == pattern(16)[::2]
        fakelib.release(piece)  # MemBuf_Release on a slice ends its export
        assert fakelib.releases(block) == 1
        assert buf.released

    def test_typed_slice(self, fakelib):
        block = fakelib.alloc(96)
        buf = fakelib.from_spec(block, format="d", ndim=2, shape=[3, 4])
        piece = buf[1:]
        assert fakelib.check(piece) == 1
        assert piece.address == fakelib.address(block) + 32
        assert (piece.format, piece.shape, piece.strides) == ("d", (2, 4), (32, 8))
        data = pattern(96)
        assert memoryview(piece).tolist() == expected_items(data, "d", (2, 4), (32, 8), 32)
        del buf
        assert fakelib.releases(block) == 0
        del piece
        assert fakelib.releases(block) == 1


# ---------------------------------------------------------------------------
# import_membuf(): versions, and the API used before it
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target_v1(tmp_path_factory):
    """tests/capi/target_v1.c, built once (a module built per call would be a
    new module object each time: the refleak job would count it as a leak)."""
    from conftest import build_extension

    return build_extension("target_v1", ["target_v1.c"], tmp_path_factory.mktemp("v1"))


class TestImportMembuf:
    @pytest.fixture(autouse=True)
    def reimport_afterwards(self, fakelib):
        yield
        fakelib.reimport()

    def test_versions_are_exported(self, fakelib):
        assert fakelib.ABI_VERSION == membuf.ABI_VERSION == membuf._membuf.ABI_VERSION
        assert fakelib.API_VERSION == membuf.API_VERSION == membuf._membuf.API_VERSION
        assert "membuf._membuf._C_API" in repr(membuf._membuf._C_API)
        assert fakelib.reimport() is None

    @pytest.mark.parametrize("abi_delta, api_delta", [(1, 0), (-1, 0), (1, -1), (1, 5)])
    def test_abi_mismatch(self, fakelib, monkeypatch, abi_delta, api_delta):
        abi = fakelib.ABI_VERSION + abi_delta
        api = fakelib.API_VERSION + api_delta
        with monkeypatch.context() as patch:
            patch.setattr(membuf._membuf, "_C_API", fakelib.fake_capsule(abi, api))
            with pytest.raises(ImportError) as info:
                fakelib.reimport()
        message = str(info.value)
        assert message.startswith(
            f"membuf C API ABI version mismatch: the installed membuf has ABI version {abi}, "
            f"this extension was compiled against ABI version {fakelib.ABI_VERSION}; "
        )
        assert "rebuild the extension" in message
        assert fakelib.reimport() is None

    def test_api_too_old(self, fakelib, monkeypatch):
        api = fakelib.API_VERSION - 1
        with monkeypatch.context() as patch:
            patch.setattr(membuf._membuf, "_C_API", fakelib.fake_capsule(fakelib.ABI_VERSION, api))
            with pytest.raises(ImportError) as info:
                fakelib.reimport()
        assert str(info.value).startswith(
            f"membuf C API version too old: the installed membuf provides API version {api}, "
            f"this extension needs API version {fakelib.API_VERSION} or newer; "
        )
        assert "pip install -U membuf" in str(info.value)
        assert fakelib.reimport() is None

    @pytest.mark.parametrize("api_delta", [0, 1, 100])
    def test_newer_api_is_accepted(self, fakelib, monkeypatch, api_delta):
        with monkeypatch.context() as patch:
            patch.setattr(
                membuf._membuf,
                "_C_API",
                fakelib.fake_capsule(fakelib.ABI_VERSION, fakelib.API_VERSION + api_delta),
            )
            assert fakelib.reimport() is None
        assert fakelib.reimport() is None

    def test_an_extension_built_for_an_older_api_version(self, fakelib, target_v1, monkeypatch):
        """MEMBUF_TARGET_API_VERSION 1: imports against this membuf (API 2) and
        against one that provides only API 1, where a default build fails."""
        old = target_v1
        assert old.target() == 1 and membuf.API_VERSION >= 2
        assert old.wrap_empty().nbytes == 0
        with monkeypatch.context() as patch:
            patch.setattr(membuf._membuf, "_C_API", fakelib.fake_capsule(fakelib.ABI_VERSION, 1))
            assert old.reimport() is None  # an older membuf is enough for it
            with pytest.raises(ImportError, match="needs API version 2 or newer"):
                fakelib.reimport()  # built for the newest API version
        assert old.reimport() is None and fakelib.reimport() is None

    @pytest.mark.parametrize("prelude, message", [
        ("#define USE_V2\n", "MemBuf_IsReleased"),  # not declared for API version 1
        ("#define MEMBUF_TARGET_API_VERSION 3\n",
         "MEMBUF_TARGET_API_VERSION must be between 1 and MEMBUF_API_VERSION"),
        ("#define MEMBUF_TARGET_API_VERSION 0\n",
         "MEMBUF_TARGET_API_VERSION must be between 1 and MEMBUF_API_VERSION"),
    ], ids=["newer-function", "target-too-new", "target-0"])
    def test_what_a_target_version_refuses_to_compile(self, tmp_path, prelude, message):
        import subprocess
        import sysconfig

        from conftest import CAPI_DIR

        source = tmp_path / "target.c"
        text = (CAPI_DIR / "target_v1.c").read_text()
        if "TARGET" in prelude:
            text = text.replace("#define MEMBUF_TARGET_API_VERSION 1\n", "")
        source.write_text(prelude + text)
        result = subprocess.run(
            ["cc", "-std=c11", "-Wall", "-Werror", "-c", "-o", str(tmp_path / "target.o"),
             f"-I{membuf.get_include()}", f"-I{sysconfig.get_paths()['include']}", str(source)],
            capture_output=True, text=True, check=False)
        assert result.returncode != 0
        assert message in result.stderr

    def test_missing_capsule(self, fakelib, monkeypatch):
        with monkeypatch.context() as patch:
            patch.delattr(membuf._membuf, "_C_API")
            with pytest.raises(ImportError) as info:
                fakelib.reimport()
        assert str(info.value).startswith(
            "could not import the membuf C API membuf._membuf._C_API: "
        )
        assert isinstance(info.value.__cause__, AttributeError)
        assert "_C_API" in str(info.value.__cause__)
        assert fakelib.reimport() is None

    @pytest.mark.parametrize(
        "stand_in",
        [42, "membuf._membuf._C_API", pytest.param("datetime-capsule", id="other-capsule")],
    )
    def test_not_our_capsule(self, fakelib, monkeypatch, stand_in):
        if stand_in == "datetime-capsule":
            import datetime

            stand_in = datetime.datetime_CAPI
        with monkeypatch.context() as patch:
            patch.setattr(membuf._membuf, "_C_API", stand_in)
            with pytest.raises(ImportError, match=r"^could not import the membuf C API ") as info:
                fakelib.reimport()
        assert isinstance(info.value.__cause__, AttributeError)
        assert fakelib.reimport() is None

    def test_membuf_not_importable(self, fakelib, monkeypatch):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "membuf", None)
            with pytest.raises(ImportError, match="membuf"):
                fakelib.reimport()
        assert fakelib.reimport() is None

    def test_failed_import_does_not_touch_other_files(self, fakelib, monkeypatch):
        # Only fakelib_import.c's own pointer is reset; fakelib_module.c and
        # fakelib.c keep working.
        with monkeypatch.context() as patch:
            patch.delattr(membuf._membuf, "_C_API")
            with pytest.raises(ImportError):
                fakelib.reimport()
            buf, block = fakelib.new(8)
            assert fakelib.check(buf) == 1
            fakelib.release(buf)
            assert fakelib.releases(block) == 1


class TestUsedBeforeImport:
    @pytest.fixture(autouse=True)
    def reimport_afterwards(self, fakelib):
        yield
        fakelib.reimport()

    MESSAGE = r"^membuf C API used before import_membuf\(\) was called in this module$"

    def test_from_memory(self, fakelib):
        block = fakelib.alloc(0)  # wrap_unimported passes len 0
        with pytest.raises(RuntimeError, match=self.MESSAGE):
            fakelib.wrap_unimported(block)
        assert fakelib.releases(block) == 1

    def test_from_spec(self, fakelib):
        block = fakelib.alloc(0)  # spec_unimported passes len 0
        with pytest.raises(RuntimeError, match=self.MESSAGE):
            fakelib.spec_unimported(block)
        assert fakelib.releases(block) == 1

    def test_release(self, fakelib):
        block = fakelib.alloc(8)
        buf = fakelib.from_memory(block)
        with pytest.raises(RuntimeError, match=self.MESSAGE):
            fakelib.release_unimported(buf)
        assert not buf.released
        assert fakelib.releases(block) == 0
        fakelib.release(buf)  # fakelib_module.c's pointer still works
        assert fakelib.releases(block) == 1

    def test_other_files_unaffected(self, fakelib):
        with pytest.raises(RuntimeError):
            fakelib.wrap_unimported(fakelib.alloc(0))
        buf, block = fakelib.new(8)
        assert bytes(buf) == pattern(8)
        del buf
        assert fakelib.releases(block) == 1


# ---------------------------------------------------------------------------
# Allocation failures (3)
# ---------------------------------------------------------------------------


def entry_allocations(fakelib, make_call, tries=40):
    """How many CPython allocations a call makes before it enters the membuf
    constructor.  Measured with unknown creation flags, which membuf rejects
    before allocating anything of its own and which run the callback on
    entry: the first failing allocation whose block was given back is the
    first one made inside the constructor (before it, fakelib's argument
    parsing fails and never reaches membuf)."""
    for i in range(tries):
        block = fakelib.alloc(64)
        try:
            call_with_failing_allocations(make_call(block, 2), (), i, i + 1)
        except (MemoryError, ValueError):
            pass
        if fakelib.releases(block) == 1:
            return i
    raise AssertionError("membuf was never entered")


def from_memory_call(fakelib):
    """make(block, flags): a no-argument callable wrapping the block with
    MemBuf_FromMemory (the shape of call that entry_allocations() measures)."""

    def make(block, flags):
        return lambda: fakelib.from_memory(block, flags)

    return make


def from_spec_call(fmt):
    """The same with MemBuf_FromSpec and a typed 1-D layout."""

    def with_fakelib(fakelib):
        def make(block, flags):
            return lambda: fakelib.from_spec(block, format=fmt, flags=flags)

        return make

    return with_fakelib


def from_spec_2d_owner_call(fakelib):
    """The same with a 2-D layout and an owner."""
    owner = Owner()

    def make(block, flags):
        return lambda: fakelib.from_spec(
            block, format="d", ndim=2, shape=[2, 4], flags=flags, owner=owner
        )

    return make


CALLS = pytest.mark.parametrize(
    "call",
    [from_memory_call, from_spec_call("d"), from_spec_call("<d"), from_spec_call("2h"),
     from_spec_2d_owner_call],
    ids=["FromMemory", "FromSpec-d", "FromSpec-<d", "FromSpec-2h", "FromSpec-2d-owner"],
)


class TestAllocationFailures:
    def test_from_memory_with_every_allocation_failing(self, fakelib):
        block = fakelib.alloc(64)
        with pytest.raises(MemoryError):
            call_with_failing_allocations(fakelib.from_memory, (block,), 0, 0)
        assert fakelib.releases(block) == 1

    def test_from_memory_enters_membuf_before_allocating(self, fakelib):
        # So the test above really fails inside MemBuf_FromMemory.
        assert entry_allocations(fakelib, from_memory_call(fakelib)) == 0

    @CALLS
    def test_sweep(self, fakelib, call):
        make_call = call(fakelib)
        first = entry_allocations(fakelib, make_call)
        results = []
        for i in range(first, first + 20):
            block = fakelib.alloc(64)
            try:
                buf = call_with_failing_allocations(make_call(block, 0), (), i, i + 1)
            except MemoryError:
                results.append((i, "MemoryError", fakelib.releases(block)))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion
                results.append((i, f"{type(exc).__name__}: {exc}", fakelib.releases(block)))
            else:
                assert buf.tobytes() == pattern(64)
                del buf
                results.append((i, "ok", fakelib.releases(block)))
        # Every allocation either fails the constructor with MemoryError or
        # is survived; the block goes back exactly once either way ...
        bad = [r for r in results if r[1] not in ("ok", "MemoryError") or r[2] != 1]
        assert bad == []
        # ... and the first allocation inside the constructor does fail it.
        assert results[0] == (first, "MemoryError", 1)

    @CALLS
    def test_every_allocation_failing_from_entry_on(self, fakelib, call):
        make_call = call(fakelib)
        first = entry_allocations(fakelib, make_call)
        block = fakelib.alloc(64)
        with pytest.raises(MemoryError):
            call_with_failing_allocations(make_call(block, 0), (), first, 0)
        assert fakelib.releases(block) == 1

    @pytest.mark.parametrize("fmt", ["<d", "2h", "=i", "!q"])
    def test_format_parser_out_of_memory_is_a_memory_error(self, fakelib, fmt):
        # A non-native format is parsed by struct.calcsize(), which allocates:
        # its failure is an allocation failure, not an invalid format.
        make_call = from_spec_call(fmt)(fakelib)
        first = entry_allocations(fakelib, make_call)
        block = fakelib.alloc(64)
        with pytest.raises(MemoryError):
            call_with_failing_allocations(make_call(block, 0), (), first, first + 1)
        assert fakelib.releases(block) == 1


class TestLibraryAllocationFailure:
    def test_fail_next(self, fakelib):
        gc.collect()
        before = fakelib.outstanding()
        fakelib.fail_next(1)
        with pytest.raises(MemoryError, match=r"^fakelib: allocation failed \(injected\)$"):
            fakelib.new(16)
        assert fakelib.outstanding() == before
        buf, block = fakelib.new(16)  # only the next one failed
        assert fakelib.outstanding() == before + 1
        del buf
        assert fakelib.releases(block) == 1
        assert fakelib.outstanding() == before


# ---------------------------------------------------------------------------
# The callback sees a released Buffer (2)
# ---------------------------------------------------------------------------


class TestCallbackHook:
    @pytest.mark.parametrize("trigger", ["MemBuf_Release", "Buffer.release", "with", "defer"])
    def test_hook_runs_once_and_sees_a_released_buffer(self, fakelib, trigger):
        block = fakelib.alloc(8)
        holder = []
        seen = []

        def hook():
            seen.append((fakelib.releases(block), holder[0].released))

        buf = fakelib.wrap_with_hook(block, hook)
        holder.append(buf)
        if trigger == "MemBuf_Release":
            fakelib.release(buf)
        elif trigger == "Buffer.release":
            buf.release()
        elif trigger == "with":
            with buf:
                pass
        else:
            view = memoryview(buf)
            fakelib.release(buf, fakelib.DEFER)
            assert seen == []
            view.release()
        assert seen == [(1, True)]
        fakelib.release(buf)
        holder.clear()
        del buf
        assert seen == [(1, True)]
        assert fakelib.releases(block) == 1

    def test_hook_runs_once_on_dealloc(self, fakelib):
        block = fakelib.alloc(8)
        seen = []
        buf = fakelib.wrap_with_hook(block, lambda: seen.append(fakelib.releases(block)))
        assert seen == []
        del buf
        assert seen == [1]

    def test_hook_with_writable_buffer(self, fakelib):
        block = fakelib.alloc(8)
        seen = []
        buf = fakelib.wrap_with_hook(block, lambda: seen.append(1), fakelib.WRITABLE)
        assert not buf.readonly
        memoryview(buf)[0] = 7
        fakelib.release(buf)
        assert seen == [1]


# ---------------------------------------------------------------------------
# Cyclic GC (10)
# ---------------------------------------------------------------------------


class TestGarbageCollection:
    @pytest.fixture
    def no_automatic_gc(self):
        enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        yield
        if enabled:
            gc.enable()

    def test_buffer_with_owner_is_tracked(self, fakelib):
        buf = fakelib.from_spec(fakelib.alloc(8), owner=Owner())
        assert gc.is_tracked(buf)

    def test_cycle_through_owner(self, fakelib, no_automatic_gc):
        block = fakelib.alloc(64)
        owner = Owner()
        ref = weakref.ref(owner)
        buf = fakelib.from_spec(block, format="d", owner=owner)
        owner.buf = buf
        del owner, buf
        assert fakelib.releases(block) == 0
        gc.collect()
        assert fakelib.releases(block) == 1
        assert ref() is None

    def test_cycle_with_a_live_export(self, fakelib, no_automatic_gc):
        block = fakelib.alloc(64)
        owner = Owner()
        ref = weakref.ref(owner)
        buf = fakelib.from_spec(block, format="d", ndim=2, shape=[2, 4], owner=owner)
        owner.buf = buf
        owner.view = memoryview(buf)
        owner.piece = buf[1:]
        del owner, buf
        assert fakelib.releases(block) == 0
        gc.collect()
        assert fakelib.releases(block) == 1
        assert ref() is None

    def test_cycle_through_self_referencing_owner(self, fakelib, no_automatic_gc):
        block = fakelib.alloc(16)
        owner = Owner()
        buf = fakelib.from_spec(block, owner=owner)
        owner.self_ref = owner
        owner.buf = buf
        ref = weakref.ref(buf)
        del owner, buf
        gc.collect()
        assert ref() is None
        assert fakelib.releases(block) == 1
