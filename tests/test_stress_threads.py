"""Threads sharing Buffers, checked against counters: the exactly-once and
no-use-after-release promises under real parallelism (free-threaded CPython
with PYTHON_GIL=0 runs these threads at once; with the GIL they interleave
at every switch interval).

Eight threads share a few slots, each holding a Buffer over fresh memory
filled with a pattern.  Every thread, over and over: takes a memoryview and
reads it, slices and reads the slice, releases strictly or deferred, swaps
in a fresh Buffer, makes and drops a DLPack capsule, pickles out-of-band and
reads the copy, collects garbage; the release callbacks call back into
membuf (they make and release a Buffer of their own).

Checked: every release callback runs exactly once (its count, under a lock);
no read through a live view ever sees memory after its callback ran (the
callback poisons the memory first); `exports` is never negative and is 0
once everything is dropped.  MEMBUF_STRESS_ITERATIONS sets the work per
thread and round (CI runs the default); MEMBUF_STRESS_SECONDS repeats
rounds for that long (a soak: 600 or more);
MEMBUF_REQUIRE_NO_GIL=1 asserts that the threads really run at once
(free-threaded CPython with the GIL off, as CI's 3.13t job runs it).
"""

import ctypes
import gc
import os
import pickle
import random
import sys
import sysconfig
import threading
import time

import pytest

import membuf

THREADS = 8
SLOTS = 4
SIZE = 64
POISON = 0xDD
ITERATIONS = int(os.environ.get("MEMBUF_STRESS_ITERATIONS", "3000"))


class Memory:
    """Fresh memory with a pattern, and the count of its release callback."""

    # Reentrant: a collection may start inside `with lock:` (at any check of
    # the eval loop) and run another Memory's on_release on this thread.
    lock = threading.RLock()
    all = []

    def __init__(self, seed):
        self.pattern = bytes((seed + i) % 200 for i in range(SIZE))  # never POISON
        self.raw = ctypes.create_string_buffer(self.pattern, SIZE)
        self.calls = 0
        with Memory.lock:
            Memory.all.append(self)

    def on_release(self):
        ctypes.memset(self.raw, POISON, SIZE)  # a read after this is a violation
        with Memory.lock:
            self.calls += 1
        # Call back into membuf from the callback.
        inner = membuf.from_address(0, 0)
        inner.release()

    def buffer(self):
        return membuf.from_address(ctypes.addressof(self.raw), SIZE, readonly=False,
                                   on_release=self.on_release)


def worker(slots, seed, violations, barrier):
    rng = random.Random(seed)
    barrier.wait()
    for i in range(ITERATIONS):
        k = rng.randrange(SLOTS)
        buf, memory = slots[k]
        op = rng.randrange(9)
        try:
            if op == 0:
                with memoryview(buf) as view:
                    if bytes(view) != memory.pattern:
                        violations.append(f"read after release through a view of slot {k}")
            elif op == 1:
                part = buf[1:-1]
                if part.tobytes() != memory.pattern[1:-1]:
                    violations.append(f"read after release through a slice of slot {k}")
                if rng.random() < 0.5:
                    part.release(defer=rng.random() < 0.5)
                del part
            elif op == 2:
                buf.release()
            elif op == 3:
                buf.release(defer=True)
            elif op == 4:
                fresh = Memory(seed * 100003 + i)
                slots[k] = (fresh.buffer(), fresh)
            elif op == 5:
                capsule = buf.__dlpack__(max_version=(1, 0))
                del capsule
            elif op == 6:
                frames = []
                data = pickle.dumps(buf, protocol=5, buffer_callback=frames.append)
                same = pickle.loads(data, buffers=frames)
                if same.tobytes() != memory.pattern:
                    violations.append(f"read after release through a pickle of slot {k}")
                del same, frames
            elif op == 7:
                if buf.exports < 0:
                    violations.append(f"exports {buf.exports} < 0 on slot {k}")
            elif i % 50 == 0:
                gc.collect()
        except (ValueError, BufferError):
            pass  # released, pending, or views alive: refused, as documented
        del buf, memory


def one_round(seed):
    """Eight threads over fresh slots; every promise checked at the end."""
    Memory.all.clear()
    firsts = [Memory(j) for j in range(SLOTS)]
    slots = [(m.buffer(), m) for m in firsts]
    violations = []
    barrier = threading.Barrier(THREADS)
    threads = [threading.Thread(target=worker, args=(slots, seed * 1000 + t, violations, barrier))
               for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert violations == []
    for buf, _ in slots:
        assert buf.exports == 0
    del slots, firsts, buf
    gc.collect()
    counts = [m.calls for m in Memory.all]
    assert counts and all(c == 1 for c in counts), (
        f"{sum(c != 1 for c in counts)} of {len(counts)} callbacks did not run exactly once: "
        f"{sorted(set(counts))}")
    return len(counts)


@pytest.mark.parametrize("round_", range(2))
def test_threads_share_buffers(round_):
    """One round each (CI); MEMBUF_STRESS_SECONDS=600 repeats rounds, each
    with fresh memory and checked in full, until that much time has passed
    (the soak: a long run with bounded memory)."""
    if os.environ.get("MEMBUF_REQUIRE_NO_GIL") == "1":
        # CI's free-threaded job: these threads must really run at once.  (In
        # a whole-suite run a module that does not declare free-threading
        # support, such as the examples, may have turned the GIL back on.)
        assert sysconfig.get_config_var("Py_GIL_DISABLED"), "not a free-threaded build"
        assert not sys._is_gil_enabled(), "the GIL is on: these threads would not run at once"
    seconds = float(os.environ.get("MEMBUF_STRESS_SECONDS", "0"))
    start = time.monotonic()
    rounds = callbacks = 0
    while True:
        callbacks += one_round(round_ * 100003 + rounds)
        rounds += 1
        if time.monotonic() - start >= seconds:
            break
    if seconds:
        print(f"\nsoak: {rounds} rounds, {callbacks} callbacks exactly once, "
              f"{time.monotonic() - start:.0f} s, GIL {'on' if _gil_on() else 'off'}")


def _gil_on():
    return getattr(sys, "_is_gil_enabled", lambda: True)()
