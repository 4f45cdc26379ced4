"""Addresses from ctypes and cffi objects, for :func:`membuf.from_address`.

The C core calls :func:`convert` only when the address it is given is not an
int (nor has ``__index__``).  Neither ctypes nor cffi is imported here: an
object of theirs can only exist if its module already is.
"""

from __future__ import annotations

import struct
import sys

# PEP 3118 codes membuf passes on as the format of an element type; "c"
# (char) becomes "B": a char array is bytes to every consumer.
_NATIVE_CODES = frozenset("bBhHiIlLqQnNefd?P")

# cffi primitive type names -> struct codes (native sizes, as on this machine).
_CFFI_CODES = {
    "char": "B", "signed char": "b", "unsigned char": "B", "_Bool": "?",
    "short": "h", "unsigned short": "H", "int": "i", "unsigned int": "I",
    "long": "l", "unsigned long": "L", "long long": "q", "unsigned long long": "Q",
    "float": "f", "double": "d",
    "int8_t": "b", "uint8_t": "B", "int16_t": "h", "uint16_t": "H",
    "int32_t": "i", "uint32_t": "I", "int64_t": "q", "uint64_t": "Q",
    "ssize_t": "n", "size_t": "N", "intptr_t": "n", "uintptr_t": "N",
}


def convert(obj: object) -> tuple[int, int | None, str | None, tuple[int, ...] | None] | None:
    """``(address, size, format, shape)`` of a ctypes or cffi object (size,
    format and shape None where it has none), or None for any other object."""
    ctypes = sys.modules.get("ctypes")
    if ctypes is not None:
        result = _from_ctypes(ctypes, obj)
        if result is not None:
            return result
    backend = sys.modules.get("_cffi_backend")
    if backend is not None and isinstance(obj, backend._CDataBase):
        return _from_cffi(backend, obj)
    return None


def _format_of(view: memoryview) -> str | None:
    """The format of a ctypes export as membuf should keep it: the bare
    native code when the byte order is this machine's (ctypes writes "<d"
    for a double, which memoryview's item access refuses), the format as
    given for the other byte order if the struct module agrees on its size,
    None for anything else (char, long double, structures...: bytes)."""
    fmt = view.format
    order, code = (fmt[0], fmt[1:]) if fmt[:1] in ("<", ">", "=", "@", "!") else ("@", fmt)
    if code not in _NATIVE_CODES:
        return None
    native = {"little": "<", "big": ">"}[sys.byteorder]
    if order in ("@", "=", native):
        return code if struct.calcsize(code) == view.itemsize else None
    try:
        return fmt if struct.calcsize(fmt) == view.itemsize else None
    except struct.error:
        return None


def _from_ctypes(ctypes, obj):
    if isinstance(obj, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_wchar_p)):
        # A pointer value: the memory is elsewhere; nothing to size.
        return (ctypes.cast(obj, ctypes.c_void_p).value or 0, None, None, None)
    if isinstance(obj, ctypes._Pointer):
        address = ctypes.cast(obj, ctypes.c_void_p).value or 0
        fmt = None  # bytes, unless the element is a simple type with a known code
        element_type = obj._type_
        if issubclass(element_type, ctypes._SimpleCData):
            # An element over scratch memory: no __init__ of a user's class runs.
            scratch = bytearray(ctypes.sizeof(element_type))
            with memoryview(element_type.from_buffer(scratch)) as element:
                fmt = _format_of(element) if element.ndim == 0 else None
        return (address, None, fmt, None)
    if isinstance(obj, (ctypes.Array, ctypes._SimpleCData, ctypes.Structure, ctypes.Union)):
        # The memory is inside the object: its whole size, its layout.
        with memoryview(obj) as view:
            fmt = _format_of(view)
            shape = tuple(view.shape) if fmt is not None else None
            return (ctypes.addressof(obj), view.nbytes, fmt, shape)
    return None


_ffi = None


def _from_cffi(backend, obj):
    global _ffi
    if _ffi is None:
        _ffi = backend.FFI()
    ffi = _ffi
    ctype = ffi.typeof(obj)
    address = int(ffi.cast("uintptr_t", obj))
    if ctype.kind == "array":
        size = ffi.sizeof(obj)
        shape = [len(obj)]
        item = ctype.item
        while item.kind == "array":
            shape.append(item.length)
            item = item.item
        fmt = _CFFI_CODES.get(item.cname) if item.kind == "primitive" else None
        return (address, size, fmt, tuple(shape) if fmt is not None else None)
    if ctype.kind == "pointer":
        item = ctype.item
        fmt = _CFFI_CODES.get(item.cname) if item.kind == "primitive" else None
        return (address, None, fmt, None)
    return None  # a struct by value, a function, a primitive: no memory of its own to wrap
