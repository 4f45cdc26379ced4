"""Regression tests for core bugs the reliability harness found (one test a bug;
the fuzzer's own reproducers stay in fuzz/regressions/)."""

import membuf


def test_step_slice_of_a_single_item_does_not_overflow_the_stride(fakelib):
    # fuzz: strides[0] * step overflowed for a dimension of one item.
    buf = fakelib.from_spec(fakelib.alloc(8), format="q", ndim=1, shape=[1], strides=[8])
    part = buf[:: 2**61 - 1]
    assert part.shape == (1,)
    assert part.strides == (8,)  # a one-item dimension keeps its stride
    assert part.address == buf.address
    assert part.tobytes() == buf.tobytes()


def test_slice_of_an_empty_layout_stays_at_its_address(fakelib):
    # fuzz: start * strides[0] overflowed, or pointed outside the memory, in a
    # layout with a 0 dimension (whose strides the memory does not bound).
    for stride in (2**62, 47):
        buf = fakelib.from_spec(fakelib.alloc(0), format="B", ndim=2, shape=[3, 0], strides=[stride, 1])
        part = buf[2:3]
        assert part.shape == (1, 0)
        assert part.nbytes == 0
        assert part.address == buf.address
        assert membuf.address_of(memoryview(part)) == buf.address


def test_slice_of_an_empty_layout_with_a_huge_leading_shape(fakelib):
    # fuzz: the slice's item count overflowed before reaching the 0 dimension.
    buf = fakelib.from_spec(fakelib.alloc(0), ndim=3, shape=[2**62, 4, 0])
    part = buf[:]
    assert part.shape == (2**62, 4, 0)
    assert part.nbytes == 0 and part.tobytes() == b""


# --- Reliability 2: defects found from outside -------------------------------

import ctypes
import gc
import pickle
import inspect
import sys
import sysconfig
import tracemalloc
import weakref

import pytest


def _python_buffer(size=16):
    """A Buffer over ctypes memory with a Python on_release that counts."""
    mem = ctypes.create_string_buffer(size)
    calls = []
    buf = membuf.from_address(ctypes.addressof(mem), size, on_release=lambda: calls.append(mem))
    return buf, calls


@pytest.mark.parametrize("base_is_a_slice", [False, True])
def test_weakref_finalizer_releases_the_parent_a_deferred_chain_walk_releases_next(
        base_is_a_slice, monkeypatch):
    # release_now() decided to release `base` next, then dropped its reference
    # to `header`, whose weakref.finalize released `base` first: the walk
    # released `base` a second time (SIGSEGV: on_release called as NULL, or
    # an export count decremented on a NULL grandparent).
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    root, calls = _python_buffer()
    base = root[0:12] if base_is_a_slice else root
    header = base[:4]
    weakref.finalize(header, base.release)
    body = header[1:]
    base.release(defer=True)
    header.release(defer=True)
    del header
    body.release()
    assert base.released
    if base_is_a_slice:
        assert calls == [] and root.exports == 0
        root.release()
    assert len(calls) == 1
    # The finalizer saw header's export of base already ended: its strict
    # release found nothing to refuse (or nothing left to do).
    assert unraisable == []


def test_a_cycle_through_a_buffer_rebuilt_from_an_out_of_band_frame_is_collected():
    # The rebuilt Buffer holds an export of the original (through the
    # PickleBuffer); that reference was invisible to the GC, so a cycle
    # original -> owner -> rebuilt -> export -> original was never collected.
    class Owner:
        pass

    mem = ctypes.create_string_buffer(b"abcdefgh", 8)
    calls = []
    owner = Owner()
    original = membuf.from_address(ctypes.addressof(mem), 8, owner=owner,
                                   on_release=lambda: calls.append(1))
    frames = []
    rebuilt = pickle.loads(pickle.dumps(original, protocol=5, buffer_callback=frames.append),
                           buffers=frames)
    assert rebuilt.address == original.address
    owner.rebuilt = rebuilt
    del original, rebuilt, frames, owner
    gc.collect()
    assert calls == [1]


def test_a_resurrected_cycle_says_why_its_release_is_pending():
    # The GC finalized a Buffer whose view was alive; a __del__ resurrected
    # the cycle.  Finalization is not undone (PEP 442): the release stays
    # pending until the last view ends, and the message says who asked.
    saved = []

    class Resurrector:
        def __del__(self):
            saved.append(self.cycle)

    mem = ctypes.create_string_buffer(8)
    calls = []
    holder = type("Holder", (), {})()
    buf = membuf.from_address(ctypes.addressof(mem), 8, owner=holder,
                              on_release=lambda: calls.append(1))
    holder.buf = buf
    holder.view = memoryview(buf)
    r = Resurrector()
    r.cycle = holder
    holder.r = r
    del buf, holder, r
    gc.collect()
    (holder,) = saved
    assert calls == [] and not holder.buf.released
    with pytest.raises(ValueError, match=r"pending release \(the garbage collector finalized it "
                                         r"while a view was alive"):
        memoryview(holder.buf)
    holder.view.release()
    assert calls == [1] and holder.buf.released
    del saved[:], holder
    gc.collect()
    assert calls == [1]


@pytest.mark.thread_unsafe(reason="the free list is process-wide: other threads take its objects")
@pytest.mark.skipif(membuf._membuf._FREELIST_MAX == 0, reason="this build has no free list "
                    "(sanitizer, fuzz and free-threaded builds): nothing is recycled")
def test_a_recycled_buffer_gets_the_bookkeeping_of_a_new_object():
    # Reusing a Buffer from the free list once skipped the new-reference
    # bookkeeping (refcount 1, the debug build's reference total).  tracemalloc
    # cannot name the site of a plain Buffer any more: CPython looks for a GC
    # header by type, and plain Buffers have none (test below).
    block = ctypes.create_string_buffer(8)
    address = ctypes.addressof(block)
    membuf._membuf._clear_freelist()  # room on the free list for `first`
    first = membuf.from_address(address, 8)
    first_address = id(first)
    del first  # onto the free list
    buf = membuf.from_address(address, 8)
    assert id(buf) == first_address, "expected the recycled object"
    probe = object()  # a new object held the same way: its count is the expected one
    assert sys.getrefcount(buf) == sys.getrefcount(probe)  # (3.14 counts arguments as borrowed)
    assert not buf.released and buf.exports == 0


@pytest.mark.thread_unsafe(reason="tracemalloc.start() and stop() are process-wide")
@pytest.mark.skipif(sys.maxsize < 2**32 or sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="the 64-byte head is the layout of 64-bit builds with the GIL")
def test_tracemalloc_counts_a_plain_buffer_at_64_bytes_where_it_was_made():
    block = ctypes.create_string_buffer(8)
    address = ctypes.addressof(block)
    n = 1000  # more than the free list holds
    bufs = [None] * n
    membuf._membuf._clear_freelist()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(n):
            bufs[i] = membuf.from_address(address, 8)  # the one allocating line
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    lines, first = inspect.getsourcelines(
        test_tracemalloc_counts_a_plain_buffer_at_64_bytes_where_it_was_made)
    (lineno,) = [first + k for k, text in enumerate(lines) 
                  if text.lstrip().startswith("bufs[i] = ")]
    (stat,) = [st for st in after.compare_to(before, "lineno")
               if st.traceback[0].filename == __file__ and st.traceback[0].lineno == lineno
               and st.count_diff != 0]
    assert (stat.count_diff, stat.size_diff) == (n, 64 * n)


@pytest.mark.thread_unsafe(reason="tracemalloc.start() and stop() are process-wide")
def test_tracemalloc_names_the_site_of_a_buffer_with_a_gc_header():
    block = ctypes.create_string_buffer(8)
    # An object recycled from a free list was allocated before tracing began
    # (tracemalloc knows no site for it, as for CPython's own free lists).
    membuf._membuf._clear_freelist()
    tracemalloc.start()
    try:
        buf = membuf.from_address(ctypes.addressof(block), 8, on_release=lambda: None)
        tb = tracemalloc.get_object_traceback(buf)
    finally:
        tracemalloc.stop()
    assert tb is not None
    lines, first = inspect.getsourcelines(
        test_tracemalloc_names_the_site_of_a_buffer_with_a_gc_header)
    (lineno,) = [first + k for k, text in enumerate(lines)
                 if text.lstrip().startswith("buf = membuf.from_address(")]
    assert tb[0].lineno == lineno


# The DLPack deleter that hung inside a subinterpreter (export_free() called
# PyGILState_Ensure()) has its tests in test_subinterpreters.py.


# The DLPack deleter, called from threads and interpreters the consumer
# chooses (red-team review).  Each runs in a child: a failure there may crash.
FOREIGN_THREAD_WHILE_ANOTHER_HOLDS_THE_GIL = r'''
import ctypes, threading, time, membuf
api = ctypes.pythonapi
api.PyCapsule_GetPointer.restype = ctypes.c_void_p
api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
libc = ctypes.CDLL(None)
mem = ctypes.create_string_buffer(64)
seen = []
def on_release():
    seen.append((api.PyGILState_Check(), threading.get_ident()))
buf = membuf.from_address(ctypes.addressof(mem), 64, on_release=on_release)
capsule = buf.__dlpack__(max_version=(1, 0))
tensor = api.PyCapsule_GetPointer(capsule, b"dltensor_versioned")
api.PyCapsule_SetName(capsule, b"used_dltensor_versioned")   # consumed: ours to delete
del capsule
buf.release(defer=True)
deleter = ctypes.c_void_p.from_address(tensor + 16).value
tid = ctypes.c_ulong()
assert libc.pthread_create(ctypes.byref(tid), None, ctypes.c_void_p(deleter),
                           ctypes.c_void_p(tensor)) == 0
start = time.monotonic()
while not seen and time.monotonic() - start < 20:   # the main thread keeps taking the GIL
    pass
libc.pthread_join(tid, None)
(gil_held, ident), = seen
assert gil_held == 1, "on_release ran without the GIL"
assert ident == tid.value, "on_release ran on another thread's thread state"
print("ok")
'''

CONSUMER_OUTLIVES_THE_SUBINTERPRETER = r'''
import ctypes, sys, _testcapi
slot = (ctypes.c_void_p * 1)()
code = """
import ctypes, functools, os, membuf
api = ctypes.pythonapi
api.PyCapsule_GetPointer.restype = ctypes.c_void_p
api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
mem = ctypes.create_string_buffer(64)
buf = membuf.from_address(ctypes.addressof(mem), 64,
                          on_release=functools.partial(os.write, 1, b"released\\n"))
capsule = buf.__dlpack__(max_version=(1, 0))
tensor = api.PyCapsule_GetPointer(capsule, b"dltensor_versioned")
api.PyCapsule_SetName(capsule, b"used_dltensor_versioned")
(ctypes.c_void_p * 1).from_address(%d)[0] = tensor
buf.release(defer=True)
del capsule
""" % ctypes.addressof(slot)
assert _testcapi.run_in_subinterp(code) == 0          # the interpreter is gone now
tensor = slot[0]
deleter = ctypes.c_void_p.from_address(tensor + 16).value
junk = [bytearray(4096) for _ in range(2000)]          # reuse the freed interpreter's memory
call = (ctypes.CFUNCTYPE if sys.argv[1] == "without-the-gil" else ctypes.PYFUNCTYPE)(
    None, ctypes.c_void_p)
call(deleter)(tensor)                                  # must not touch the dead interpreter
print("ok")
'''


def _run_child(code, *args):
    import subprocess
    import sys

    try:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung: {exc}")


@pytest.mark.skipif(bool(membuf._membuf.LIMITED_API), reason="not the abi3 build: its deleter "
                    "always goes through PyGILState_Ensure (test_dlpack covers it)")
def test_dlpack_deleter_from_a_foreign_thread_while_another_holds_the_gil():
    # 3.11's current thread state is the process's: a foreign thread saw it
    # and ended the export without the GIL, on the main thread's state.
    result = _run_child(FOREIGN_THREAD_WHILE_ANOTHER_HOLDS_THE_GIL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "ok\n"


@pytest.mark.skipif(bool(membuf._membuf.LIMITED_API),
                    reason="the abi3 build makes no DLPack capsules in subinterpreters")
@pytest.mark.parametrize("how", ["without-the-gil", "with-the-gil"])
def test_dlpack_consumer_that_outlives_the_buffers_subinterpreter(how):
    # The deleter read the freed interpreter (SIGSEGV in PyThreadState_New).
    # Now: the export cannot end; the block is leaked, nothing is touched.
    result = _run_child(CONSUMER_OUTLIVES_THE_SUBINTERPRETER, how)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "ok\n"  # and never "released": the interpreter is gone
