"""Threads: eight threads export, slice, read and release (strict and
deferred) the same Buffers, with the GIL handed over as often as CPython
allows (sys.setswitchinterval(1e-6)); and threads that each create and drop
their own Buffers.  All threads start together at a threading.Barrier; there
are no sleeps and no timing assertions.

What must hold whatever the interleaving: the release callback runs exactly
once (C callbacks counted by fakelib.releases(), Python on_release by a
counter; a Python on_release also invites thread switches while it runs);
a view never sees memory that was given back (every read is compared with
the known contents); `exports` returns to 0; the only errors are the
documented ones (ValueError after release or while a release is pending,
BufferError for a strict release with exports alive); no crash.
"""

import collections
import ctypes
import gc
import random
import sys
import threading

import pytest

import membuf

THREADS = 8
N = 64
RAW = bytes(i % 251 for i in range(N))


@pytest.fixture(autouse=True)
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(target, n=THREADS, other_barriers=()):
    """Run target(index, barrier) in n threads started together; re-raise
    the first failure of any of them."""
    barrier = threading.Barrier(n)
    errors = []

    def body(index):
        try:
            target(index, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((index, exc))
            for b in (barrier, *other_barriers):
                b.abort()  # nobody waits forever for a dead thread

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        # The first real failure, not a BrokenBarrierError it caused.
        errors.sort(key=lambda e: isinstance(e[1], threading.BrokenBarrierError))
        raise errors[0][1]


class Shared:
    """One Buffer per round, shared by all threads, and how to count its
    release callback."""

    def __init__(self, fakelib, kind, allow_release=True):
        self.fakelib = fakelib
        self.kind = kind
        self.allow_release = allow_release
        self.calls = []
        if kind == "fakelib":
            self.buf, self.block = fakelib.new(N)
            self.count = lambda: fakelib.releases(self.block)
        else:
            self.memory = ctypes.create_string_buffer(RAW, N)
            calls = self.calls

            def on_release():
                # Python code in the callback: the GIL may switch in here,
                # while the Buffer is already marked released.
                total = 0
                for i in range(50):
                    total += i
                calls.append(total)

            self.buf = membuf.from_address(ctypes.addressof(self.memory), N,
                                           on_release=on_release)
            self.count = lambda: len(calls)


ALLOWED = (ValueError, BufferError)


def hammer(shared, rng, steps, fakelib, outcomes):
    """Random operations on shared.buf; every read is checked.  outcomes
    (a Counter per thread) records what happened."""
    buf = shared.buf
    views = []
    for _ in range(steps):
        op = rng.random()
        name = "?"
        try:
            if op < 0.30:
                name = "export"
                view = memoryview(buf)
                assert view[5] == RAW[5] and view.tobytes() == RAW
                views.append(view)
            elif op < 0.50:
                name = "slice"
                part = buf[3:40:3] if op < 0.40 else buf[10:20]
                expected = RAW[3:40:3] if op < 0.40 else RAW[10:20]
                assert part.tobytes() == expected
                views.append(part)
            elif op < 0.58:
                name = "index"
                assert buf[7] == RAW[7]
            elif op < 0.88:
                name = "end view"
                if views:
                    gone = views.pop(rng.randrange(len(views)))
                    gone.release()  # a memoryview or a slice Buffer: both end their export
                    del gone
            elif not shared.allow_release:
                name = "check views"
                for view in views:  # whatever this thread still sees is intact
                    assert view.tobytes() in (RAW, RAW[3:40:3], RAW[10:20])
            elif op < 0.92:
                name = "strict release"  # BufferError while any thread holds a view
                buf.release()
            elif op < 0.96:
                name = "deferred release"
                buf.release(defer=True)
            else:
                name = "deferred release (C API)"
                fakelib.release(buf, fakelib.DEFER)
            outcomes[name] += 1
        except ALLOWED as exc:
            outcomes[f"{name}: {type(exc).__name__}"] += 1
        assert shared.count() <= 1
    # End of the round for this thread: check and drop its views.
    for view in views:
        data = view.tobytes()
        assert data in (RAW, RAW[3:40:3], RAW[10:20]), data
    views.clear()


@pytest.mark.parametrize("kind", ["fakelib", "python-callback"])
def test_eight_threads_share_one_buffer(fakelib, kind):
    rounds = 150
    steps = 100
    shared_box = [None]
    round_barrier = threading.Barrier(THREADS + 1)
    results = []

    outcomes = collections.Counter()

    def worker(index, start):
        rng = random.Random(1000 * index + 7)
        mine = collections.Counter()
        start.wait()
        for _ in range(rounds):
            round_barrier.wait()  # the main thread has made a new Buffer
            hammer(shared_box[0], rng, steps, fakelib, mine)
            round_barrier.wait()  # all threads are done with it
        outcomes.update(mine)

    def main(index, start):
        # Thread 0 of run_threads plays the main thread of each round.
        if index != 0:
            return worker(index, start)
        start.wait()
        for r in range(rounds):
            # Every third round nobody releases: the Buffer ends by deallocation.
            shared = Shared(fakelib, kind, allow_release=r % 3 != 0)
            shared_box[0] = shared
            round_barrier.wait()
            round_barrier.wait()
            assert shared.buf.exports == 0  # every view the threads took has ended
            released_during_round = shared.buf.released
            assert shared.count() == (1 if released_during_round else 0)
            shared_box[0] = None
            buf = shared.buf
            shared.buf = None
            del buf  # the last reference (no cycles): released now if not before
            assert shared.count() == 1
            results.append(released_during_round)

    # THREADS workers plus one coordinator.
    run_threads(main, THREADS + 1, (round_barrier,))
    assert len(results) == rounds
    # Both endings were reached: released by the threads, and at deallocation.
    assert True in results and False in results, results
    # And the threads really got in each other's way: views taken and ended
    # concurrently, strict releases refused because of other threads' views
    # and accepted, deferred releases, operations refused after release.
    for name in ["export", "slice", "end view", "strict release", "strict release: BufferError",
                 "deferred release", "export: ValueError", "slice: ValueError",
                 "index: ValueError"]:
        assert outcomes[name] > 0, (name, outcomes)


def test_last_slice_released_in_any_thread_completes_a_deferred_release(fakelib):
    rounds = 200
    for r in range(rounds):
        parent, block = fakelib.new(N)
        parts = [parent[i : i + 8] for i in range(THREADS)]
        parent.release(defer=True)  # pending on eight slices
        assert parent.exports == THREADS

        def release_mine(index, barrier):
            barrier.wait()
            part = parts[index]
            assert part.tobytes() == RAW[index : index + 8]  # still live memory
            if index % 2:
                part.release()
            else:
                fakelib.release(part, fakelib.DEFER)

        run_threads(release_mine)
        assert fakelib.releases(block) == 1  # exactly one thread completed it
        assert parent.released and parent.exports == 0
        del parts, parent
        assert fakelib.releases(block) == 1


def test_threads_create_and_drop_their_own_buffers(fakelib):
    iterations = 400
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def worker(index, barrier):
        rng = random.Random(index)
        blocks = []
        python_calls = []
        barrier.wait()
        for i in range(iterations):
            choice = rng.randrange(5)
            if choice == 0:
                buf, block = fakelib.new(rng.randrange(1, 64))
                blocks.append(block)
            elif choice == 1:
                block = fakelib.alloc(32)
                buf = fakelib.from_spec(block, format="i", owner=object())
                blocks.append(block)
            elif choice == 2:
                address = libc.malloc(32)
                ctypes.memmove(address, RAW, 32)
                slot = len(python_calls)
                python_calls.append(0)

                def on_release(address=address, slot=slot):
                    python_calls[slot] += 1
                    if python_calls[slot] == 1:
                        libc.free(address)

                buf = membuf.from_address(address, 32, on_release=on_release)
                del on_release
                assert buf.tobytes() == RAW[:32]
            else:
                buf, block = fakelib.new(32)
                blocks.append(block)
            # use it, then end it one of several ways
            view = memoryview(buf)
            part = buf[1:5]
            end = rng.randrange(4)
            if end == 0:
                del view, part, buf
            elif end == 1:
                buf.release(defer=True)
                part.release()
                view.release()
                assert buf.released
                del view, part, buf
            elif end == 2:
                with pytest.raises(BufferError):
                    buf.release()
                view.release()
                part.release()
                buf.release()
                del view, part, buf
            else:
                del buf  # views keep it alive
                assert part.tobytes() == view[1:5].tobytes()
                del view, part
        gc.collect()
        assert [fakelib.releases(b) for b in blocks] == [1] * len(blocks)
        assert python_calls == [1] * len(python_calls)

    run_threads(worker)
