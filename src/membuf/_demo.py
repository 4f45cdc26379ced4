"""The demonstration behind ``python -m membuf``.

It plays the part of a C library user: takes memory from libc's malloc
through ctypes, wraps it with membuf.from_address and a release callback,
and prints measured facts (nothing here is a hard-coded claim).
"""

import ctypes
import ctypes.util
import re
import time

import membuf

_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6, "gb": 10**9}


def parse_size(text):
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise SystemExit(f"python -m membuf: cannot read size {text!r} (try 64MiB or 1GiB)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _human(nbytes):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:g} {unit}"
    return f"{nbytes} B"


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.restype = None
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _best_of(func, repeat=7, number=200):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            func()
        best = min(best, (time.perf_counter_ns() - start) / number)
    return best


def run(size):
    libc = _libc()
    print(f"membuf {membuf.__version__}: a C library hands out {_human(size)}; we wrap it.\n")

    address = libc.malloc(size)
    if not address:
        print(f"malloc({size}) failed; try a smaller --size")
        return 1
    ctypes.memset(address, 0x5A, size)
    calls = []

    def on_release():
        calls.append(address)
        libc.free(address)

    buf = membuf.from_address(address, size, on_release=on_release)
    print(f"  {buf!r}")

    # 1. Zero-copy: wrapping costs the same for 1 byte and for the whole block.
    wrap_ns = _best_of(lambda: membuf.from_address(address, size))
    start = time.perf_counter_ns()
    copy = bytes(buf)
    copy_ns = time.perf_counter_ns() - start
    del copy
    print(f"\n1. wrap {_human(size)} with from_address: {wrap_ns:,.0f} ns;"
          f" copying it into bytes: {copy_ns / 1e6:,.1f} ms ({copy_ns / wrap_ns:,.0f}x slower)")

    # 2. Consumers see the very same memory.
    view = memoryview(buf)
    print(f"2. malloc returned          0x{address:x}")
    print(f"   memoryview(buf) sees     0x{membuf.address_of(view):x}"
          f"  (same: {membuf.address_of(view) == address})")
    try:
        import numpy
    except ImportError:
        array = None
        print("   (NumPy is not installed: skipping the NumPy view)")
    else:
        array = numpy.frombuffer(buf, dtype=numpy.uint8)
        data = array.__array_interface__["data"][0]
        print(f"   numpy.frombuffer(buf)    0x{data:x}  (same: {data == address},"
              f" writeable: {array.flags.writeable})")
    print(f"   live exports: {buf.exports}")

    # 3. Strict release refuses while anyone can still see the memory.
    try:
        buf.release()
    except BufferError as exc:
        print(f"3. buf.release() with views alive -> BufferError: {exc}")
    print(f"   callback calls so far: {len(calls)}")

    # 4. Drop the views; the release goes through, the callback runs once.
    view.release()
    del array
    buf.release()
    buf.release()  # a second release is a no-op
    print(f"4. after dropping the views: released={buf.released}, callback calls: {len(calls)}")
    try:
        buf[0]
    except ValueError as exc:
        print(f"   buf[0] after release -> ValueError: {exc}")
    ok = calls == [address]
    print(f"\n{'OK' if ok else 'FAILED'}: the memory went back to free() exactly once.")
    return 0 if ok else 1
