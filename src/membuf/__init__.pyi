import ctypes
from collections.abc import Callable
from types import TracebackType
from typing import Any, SupportsIndex, final, overload

from typing_extensions import Buffer as _BufferLike, CapsuleType, Self, TypeAlias

__all__ = [
    "ABI_VERSION", "API_VERSION", "Buffer", "address_of", "from_address", "from_buffer",
    "get_include",
]

__version__: str
ABI_VERSION: int
API_VERSION: int

@final
class Buffer:
    """Zero-copy, lifetime-managed view of memory owned by C code."""

    @property
    def address(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def released(self) -> bool: ...
    @property
    def exports(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def itemsize(self) -> int: ...
    @property
    def ndim(self) -> int: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def strides(self) -> tuple[int, ...]: ...
    @property
    def owner(self) -> object: ...
    @property
    def c_contiguous(self) -> bool: ...
    @property
    def f_contiguous(self) -> bool: ...
    @property
    def contiguous(self) -> bool: ...
    def release(self, defer: bool = False) -> None: ...
    def tobytes(self) -> bytes: ...
    def hex(self, sep: str | bytes | None = None, bytes_per_sep: int = 1) -> str: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, key: int, /) -> Any: ...
    @overload
    def __getitem__(self, key: slice, /) -> Buffer: ...
    @overload
    def __getitem__(self, key: tuple[Any, ...], /) -> Any: ...  # typed: buf[i, j], buf[()]
    def __setitem__(self, key: int | slice | tuple[Any, ...], value: Any, /) -> None: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    def __reduce_ex__(self, protocol: SupportsIndex, /) -> tuple[Any, ...]: ...
    def __dlpack__(
        self,
        *,
        stream: None = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> CapsuleType: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    # PEP 688: CPython 3.12+ adds these to every type with bf_getbuffer; on
    # 3.11 they are declared all the same, as typeshed does for bytes, so that
    # type checkers see a Buffer as a collections.abc.Buffer (allowlisted).
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    __hash__: None  # type: ignore[assignment]

# The ctypes objects from_address() takes as an address (their memory, or the
# memory they point to).  cffi ships no type information: its cdata objects
# (pointers and arrays) are accepted at run time and typed Any here.
_CtypesAddress: TypeAlias = (
    ctypes._SimpleCData[Any] | ctypes._Pointer[Any] | ctypes.Array[Any] | ctypes.Structure
    | ctypes.Union
)
_CffiCData: TypeAlias = Any

@overload
def from_address(
    address: SupportsIndex,
    size: SupportsIndex | None = None,
    *,
    format: str | None = None,
    shape: tuple[SupportsIndex, ...] | list[SupportsIndex] | None = None,
    strides: tuple[SupportsIndex, ...] | list[SupportsIndex] | None = None,
    readonly: bool = True,
    owner: object = None,
    on_release: Callable[[], object] | None = None,
) -> Buffer: ...
@overload
def from_address(
    address: _CtypesAddress | _CffiCData,
    size: SupportsIndex | None = None,
    *,
    format: str | None = None,
    shape: tuple[SupportsIndex, ...] | list[SupportsIndex] | None = None,
    strides: tuple[SupportsIndex, ...] | list[SupportsIndex] | None = None,
    readonly: bool = True,
    owner: None = None,  # the ctypes/cffi object itself is kept as the owner
    on_release: Callable[[], object] | None = None,
) -> Buffer: ...
def from_buffer(
    obj: _BufferLike,
    /,
    *,
    readonly: bool | None = None,
    format: str | None = None,
    shape: tuple[SupportsIndex, ...] | list[SupportsIndex] | None = None,
    strides: tuple[SupportsIndex, ...] | list[SupportsIndex] | None = None,
    on_release: Callable[[], object] | None = None,
) -> Buffer: ...
def address_of(obj: _BufferLike, /) -> int: ...
def get_include() -> str: ...
