"""membuf: zero-copy, lifetime-managed Python buffers over foreign memory.

A :class:`Buffer` exposes memory that a C library handed out (a pointer, a
length, and a rule for how long it stays valid) through the buffer protocol,
without copying, and gives it back exactly once: on :meth:`Buffer.release`,
at the end of a ``with`` block, or when the Buffer is deallocated -- never
while a memoryview, NumPy array or slice still sees it.

From C, include ``membuf.h`` (see :func:`get_include`) and call
``import_membuf()``; from Python (ctypes, cffi) use :func:`from_address`.
"""

import os as _os

from ._membuf import (
    ABI_VERSION,
    API_VERSION,
    Buffer,
    __version__,
    address_of,
    from_address,
    from_buffer,
)

__all__ = [
    "ABI_VERSION", "API_VERSION", "Buffer", "address_of", "from_address", "from_buffer", "get_include",
]


def get_include() -> str:
    """Directory holding ``membuf.h``, for a downstream extension's include path."""
    return _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "include")
