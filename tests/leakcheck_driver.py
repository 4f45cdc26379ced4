"""Leak-check driver for .ci/sanitizers.sh (pass 2); not a pytest test.

Run under AddressSanitizer with LeakSanitizer on, PYTHONMALLOC=malloc:

    LD_PRELOAD=$(gcc -print-file-name=libasan.so) PYTHONMALLOC=malloc \
    ASAN_OPTIONS=detect_leaks=1 python tests/leakcheck_driver.py --build-dir DIR

It creates and drops Buffers every way the contract allows (release(),
`with`, deallocation, deferred release with live views, slices, GC cycles,
failing constructors, callbacks that raise) over memory from libc malloc
(through ctypes, freed only by on_release) and over fakelib's C callbacks
(wrap_with_hook mallocs a context that only its release callback frees).
If membuf ever drops a Buffer without calling the callback, those blocks
become unreachable and LSan reports them.  With PYTHONMALLOC=malloc every
Python object is a malloc block too, so a reference membuf leaks (an owner,
a callable, a Buffer) is reported as well.

Why the check is asked for while the interpreter is alive
(__lsan_do_recoverable_leak_check) and not only at exit: at that point every
live Python object is reachable from the interpreter's globals, so LSan
reports exactly the blocks nobody points to any more (measured: nothing for
a clean run, on Debian's python3.11).  The at-exit check still runs after it
(normal exit), for anything freed or leaked during finalization; the few
interpreter-owned reports it may give are suppressed in .ci/lsan.supp.

Exit status: 0 clean, 1 leak (or a broken expectation), 23 (LSan's default)
if the at-exit check finds a leak.
"""

import argparse
import ctypes
import gc
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import membuf  # noqa: E402

ROUNDS = 50
SIZE = 4096

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free.restype = None

counts = {"malloc": 0, "free": 0}


def raw_malloc(size=SIZE):
    p = libc.malloc(size)
    assert p
    counts["malloc"] += 1
    ctypes.memset(p, 0xAB, size)
    return p


def freer(p):
    def on_release():
        counts["free"] += 1
        libc.free(p)

    return on_release


def from_malloc(size=SIZE, **kwargs):
    p = raw_malloc(size)
    return membuf.from_address(p, size, on_release=freer(p), **kwargs)


class Owner:
    pass


def closure_cycle():
    box = []
    p = raw_malloc()

    def on_release():
        assert box[0].released
        counts["free"] += 1
        libc.free(p)

    # the Buffer is reachable from its own callback: a cycle
    box.append(membuf.from_address(p, SIZE, on_release=on_release))


def python_api_paths():
    # explicit release, twice
    buf = from_malloc(readonly=False)
    buf.release()
    buf.release()
    # with-block
    with from_malloc() as buf:
        bytes(buf[:16])
    # deallocation
    buf = from_malloc(owner=Owner())
    memoryview(buf).release()
    del buf
    # strict release refused while a view lives, then dealloc
    buf = from_malloc()
    view = memoryview(buf)
    try:
        buf.release()
    except BufferError:
        pass
    else:
        raise AssertionError("release() with a live view succeeded")
    view.release()
    del view, buf
    # deferred release: memory goes back when the last view ends
    buf = from_malloc()
    view = memoryview(buf)
    buf.release(defer=True)
    view.release()
    del view, buf
    # slices (and slices of slices) share the parent's memory
    buf = from_malloc()
    s1 = buf[8:1024]
    s2 = s1[2:100]
    del buf
    bytes(s2)
    del s1
    s2.release()
    del s2
    # typed views through the buffer protocol
    buf = from_malloc(readonly=False)
    memoryview(buf).cast("i")[3] = 7
    del buf
    # a cycle through the owner, and one through the callback's closure
    gc.disable()
    try:
        owner = Owner()
        owner.buf = from_malloc(owner=owner)
        del owner
        closure_cycle()
        gc.collect()
    finally:
        gc.enable()
    # an on_release that raises: the Buffer is released all the same
    p = raw_malloc()

    def raising():
        counts["free"] += 1
        libc.free(p)
        raise RuntimeError("from on_release")

    buf = membuf.from_address(p, SIZE, on_release=raising)
    try:
        buf.release()
    except RuntimeError:
        pass
    del buf, raising
    # ownership passes on entry: a failing from_address calls on_release
    for bad in ({"size": -1}, {"readonly": 1}, {"size": 1 << 70}):
        p = raw_malloc()
        kwargs = {"size": SIZE, **bad}
        size = kwargs.pop("size")
        try:
            membuf.from_address(p, size, on_release=freer(p), **kwargs)
        except (ValueError, TypeError, OverflowError):
            pass
        else:
            raise AssertionError(f"from_address accepted {bad}")


def numpy_paths():
    try:
        import numpy
    except ImportError:
        return
    buf = from_malloc(readonly=False)
    arr = numpy.frombuffer(buf, dtype=numpy.uint32)
    arr[0] = 1
    buf.release(defer=True)
    del arr, buf
    buf = from_malloc()
    arr = numpy.asarray(memoryview(buf).cast("d"))
    del buf
    float(arr.sum())
    del arr


def capi_paths(fakelib):
    hooks = []

    def hook():
        hooks.append(1)

    # release callback that frees a malloc'ed context (release_with_hook)
    for flags in (0, fakelib.WRITABLE):
        buf = fakelib.wrap_with_hook(fakelib.alloc(SIZE), hook, flags)
        del buf
        buf = fakelib.wrap_with_hook(fakelib.alloc(SIZE), hook, flags)
        view = memoryview(buf)
        fakelib.release(buf, fakelib.DEFER)
        view.release()
        del view, buf
        buf = fakelib.wrap_with_hook(fakelib.alloc(SIZE), hook, flags)
        fakelib.release(buf)
        del buf
        buf = fakelib.wrap_with_hook(fakelib.alloc(SIZE), hook, flags)
        s = buf[10:20]
        del buf
        del s
    # failing MemBuf_FromMemory (bad flags) calls the callback at once
    try:
        fakelib.wrap_with_hook(fakelib.alloc(SIZE), hook, 1 << 20)
    except (ValueError, SystemError):
        pass
    else:
        raise AssertionError("MemBuf_FromMemory accepted bad flags")
    # typed, shaped buffers with owners (own allocations, owner references)
    for _ in range(3):
        owner = Owner()
        buf = fakelib.from_spec(
            fakelib.alloc(8 * 6), format="d", ndim=2, shape=(2, 3), strides=(24, 8), owner=owner
        )
        memoryview(buf).tolist()
        del buf, owner
        buf, _ = fakelib.new(64)
        fakelib.release(buf)
        del buf
    # a bad spec: the callback still runs and the owner is dropped
    owner = Owner()
    try:
        fakelib.from_spec(fakelib.alloc(16), format="d", ndim=1, shape=(99,), owner=owner)
    except (ValueError, TypeError, BufferError):
        pass
    else:
        raise AssertionError("from_spec accepted a shape larger than the memory")


def build_fakelib(build_dir):
    """Build fakelib like conftest does, with the compiler run WITHOUT libasan
    preloaded (gcc/ld leak on purpose and would fail the LSan check)."""
    from conftest import FAKELIB_SOURCES, build_extension

    preload = os.environ.pop("LD_PRELOAD", None)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        return build_extension("fakelib", FAKELIB_SOURCES, build_dir)
    finally:
        if preload is not None:
            os.environ["LD_PRELOAD"] = preload


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=pathlib.Path, required=True)
    args = parser.parse_args()

    try:
        lsan_check = libc.__lsan_do_recoverable_leak_check
    except AttributeError:
        sys.exit("leakcheck_driver: run under ASan (LD_PRELOAD=libasan.so), LSan is not loaded")
    lsan_check.restype = ctypes.c_int
    if "detect_leaks=1" not in os.environ.get("ASAN_OPTIONS", ""):
        sys.exit("leakcheck_driver: ASAN_OPTIONS must contain detect_leaks=1")

    fakelib = build_fakelib(args.build_dir)
    for _ in range(ROUNDS):
        python_api_paths()
        numpy_paths()
        capi_paths(fakelib)
    gc.collect()
    leaked = lsan_check()
    # Cross-checks LSan cannot make: fakelib's block records keep pointing at
    # their memory, so a block never given back is still "reachable".
    outstanding = fakelib.outstanding()
    print(
        f"leakcheck_driver: {counts['malloc']} blocks malloc'ed, {counts['free']} freed; "
        f"fakelib blocks never released: {outstanding}",
        flush=True,
    )
    if leaked or counts["malloc"] != counts["free"] or outstanding:
        print("leakcheck_driver: LEAKS (LeakSanitizer report above)", file=sys.stderr, flush=True)
        os._exit(1)  # skip the at-exit check: it would print the same report again
    print("leakcheck_driver: no leaks while alive; at-exit check follows", flush=True)


if __name__ == "__main__":
    main()
