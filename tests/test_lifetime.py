"""The lifetime contract (README "The lifetime contract", membuf.h top
comment), line by line, counted by the fake C library: fakelib.releases(id)
is how often block id was given back."""

import ctypes
import gc
import sys
import threading
import weakref

import pytest

import membuf

N = 64
RAW = bytes(i % 251 for i in range(N))


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@pytest.fixture
def no_auto_gc():
    """Cycles are only collected where the test says gc.collect()."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.fixture
def unraisable(monkeypatch):
    seen = []

    def hook(args):
        seen.append((args.exc_type, str(args.exc_value), args.object))

    monkeypatch.setattr(sys, "unraisablehook", hook)
    return seen


class Owner:
    """A plain object that can be weakly referenced and can hold things."""


class Recorder:
    def __init__(self, action=None):
        self.count = 0
        self.action = action

    def __call__(self):
        self.count += 1
        if self.action is not None:
            self.action()


def ctypes_buffer(data=RAW, **kwargs):
    """(Buffer via from_address over a ctypes copy of data, ctypes object)."""
    cbuf = ctypes.create_string_buffer(data, len(data))
    return membuf.from_address(ctypes.addressof(cbuf), len(data), **kwargs), cbuf


def spec_buffer(fakelib, n=N, **kwargs):
    """(Buffer via MemBuf_FromSpec over a fresh fakelib block, block id)."""
    block_id = fakelib.alloc(n)
    return fakelib.from_spec(block_id, **kwargs), block_id


MEMORY_OPS = {
    "memoryview": lambda b: memoryview(b),
    "bytes": lambda b: bytes(b),
    "bytearray": lambda b: bytearray(b),
    "index": lambda b: b[0],
    "negative-index": lambda b: b[-1],
    "slice": lambda b: b[0:1],
    "step-slice": lambda b: b[::2],
    "empty-slice": lambda b: b[5:1],
    "len": lambda b: len(b),
    "tobytes": lambda b: b.tobytes(),
    "hex": lambda b: b.hex(),
    "hex-sep": lambda b: b.hex(":", 2),
    "with": lambda b: b.__enter__(),
    "iteration": lambda b: list(b),
    "next": lambda b: next(iter(b)),
    "reversed": lambda b: list(reversed(b)),
    "in": lambda b: 0 in b,
    "address_of": lambda b: membuf.address_of(b),
    "ctypes": lambda b: (ctypes.c_char * 1).from_buffer_copy(b),
}


def _with_block(b):
    with b:
        pass


MEMORY_OPS["with-block"] = _with_block


# ---------------------------------------------------------------------------
# 2. exactly once, at the first of release() / with / dealloc
# ---------------------------------------------------------------------------


def test_release_gives_memory_back_once(fakelib):
    buf, block_id = fakelib.new(N)
    assert fakelib.releases(block_id) == 0
    assert buf.released is False
    assert buf.release() is None
    assert fakelib.releases(block_id) == 1
    assert buf.released is True
    buf.release()
    buf.release(defer=True)
    buf.release(True)
    buf.release(defer=False)
    assert fakelib.releases(block_id) == 1
    del buf
    gc.collect()
    assert fakelib.releases(block_id) == 1


def test_with_gives_memory_back_once(fakelib):
    buf, block_id = fakelib.new(N)
    with buf as entered:
        assert entered is buf
        assert fakelib.releases(block_id) == 0
        assert entered[3] == RAW[3]
    assert fakelib.releases(block_id) == 1
    assert buf.released
    buf.release()
    del buf, entered
    assert fakelib.releases(block_id) == 1


def test_with_gives_memory_back_on_exception(fakelib):
    buf, block_id = fakelib.new(N)
    with pytest.raises(ZeroDivisionError):
        with buf:
            1 / 0
    assert fakelib.releases(block_id) == 1
    assert buf.released


def test_with_does_not_swallow_exceptions(fakelib):
    buf, _ = fakelib.new(N)
    assert buf.__exit__(None, None, None) is None
    buf2, _ = fakelib.new(N)
    assert not buf2.__exit__(KeyError, KeyError("x"), None)


def test_with_on_released_buffer_refused(fakelib):
    buf, block_id = fakelib.new(N)
    buf.release()
    with pytest.raises(ValueError, match="released"):
        with buf:
            pass
    assert fakelib.releases(block_id) == 1


def test_with_exit_with_live_export_is_strict(fakelib):
    buf, block_id = fakelib.new(N)
    with pytest.raises(BufferError, match=r"has 1 exported buffer"):
        with buf:
            view = memoryview(buf)
    assert fakelib.releases(block_id) == 0
    assert buf.released is False
    assert view[1] == RAW[1]
    view.release()
    buf.release()
    assert fakelib.releases(block_id) == 1


def test_dealloc_gives_memory_back_once(fakelib):
    buf, block_id = fakelib.new(N)
    del buf
    assert fakelib.releases(block_id) == 1
    gc.collect()
    assert fakelib.releases(block_id) == 1


def test_dealloc_after_release_does_nothing(fakelib):
    buf, block_id = fakelib.new(N)
    buf.release()
    del buf
    gc.collect()
    assert fakelib.releases(block_id) == 1


def test_dealloc_waits_for_exports(fakelib):
    buf, block_id = fakelib.new(N)
    view = memoryview(buf)
    del buf
    assert fakelib.releases(block_id) == 0
    assert view.tobytes() == RAW  # the memory is still valid
    view.release()
    assert fakelib.releases(block_id) == 1


def test_spec_buffer_gives_memory_back_once(fakelib):
    buf, block_id = spec_buffer(fakelib, format="i", ndim=2, shape=(4, 4))
    assert buf.shape == (4, 4)
    buf.release()
    buf.release()
    del buf
    assert fakelib.releases(block_id) == 1


def test_many_buffers_each_once(fakelib):
    pairs = [fakelib.new(N) for _ in range(50)]
    ids = [block_id for _, block_id in pairs]
    for k, (buf, _) in enumerate(pairs):
        if k % 3 == 0:
            buf.release()
    del pairs, buf
    gc.collect()
    assert [fakelib.releases(i) for i in ids] == [1] * 50


def test_deep_drop_is_not_held_up_by_another_threads_release():
    """A thread whose on_release waits (GIL released) inside a deallocation
    must not delay deallocations in other threads: the root callback of a
    chain dropped by the main thread runs there, at once (per-thread
    trashcan, in both builds)."""
    ba = bytearray(64)
    inside, go = threading.Event(), threading.Event()
    released_in = []

    def waiting_release():
        inside.set()
        go.wait(30)  # a handshake, not a timing: set below after the check

    def drop_in_thread():
        b = membuf.from_address(membuf.address_of(ba), 64, owner=ba, on_release=waiting_release)
        del b

    thread = threading.Thread(target=drop_in_thread)
    thread.start()
    try:
        inside.wait()
        chain = membuf.from_address(membuf.address_of(ba), 64, owner=ba,
                                    on_release=lambda: released_in.append(
                                        threading.current_thread().name))
        for _ in range(200):
            chain = membuf.from_address(membuf.address_of(ba), 64, owner=chain)
        del chain
        assert released_in == [threading.current_thread().name]
    finally:
        go.set()
        thread.join()


def test_objects_give_back_their_type_reference(fakelib):
    """In the abi3 build Buffer is a heap type: every object, live or on the
    free list, holds a reference to it and gives it back when freed.  (In the
    default build the type is static and the count is trivially flat.)"""
    def churn():
        bufs = [fakelib.new(N)[0] for _ in range(100)]            # compact, free list
        bufs += [spec_buffer(fakelib, 16, format="i", ndim=2, shape=(2, 2))[0] for _ in range(20)]
        bufs += [b[1:] for b in bufs[:20]]                        # slices own their parent
        owned = membuf.from_address(0, 0, owner=bufs)             # tracked, with an owner
        bufs.append(owned)
        bufs.append(membuf.from_address(0, 0, on_release=lambda: None))
        for b in bufs[::2]:
            b.release(defer=True)
        del bufs, owned, b
        gc.collect()

    churn()  # fills the free list
    membuf._membuf._clear_freelist()
    before = sys.getrefcount(membuf.Buffer)
    for _ in range(3):
        churn()
    membuf._membuf._clear_freelist()
    after = sys.getrefcount(membuf.Buffer)  # not inside assert: pytest would hold the type
    assert after == before


def test_release_from_another_thread(fakelib):
    threads = []
    box = []
    buf, block_id = fakelib.new(N)

    def hook():
        threads.append(threading.get_ident())
        box.append(fakelib.releases(block_id))

    hooked_id = fakelib.alloc(N)
    hooked = fakelib.wrap_with_hook(hooked_id, hook)
    worker = threading.Thread(target=lambda: (buf.release(), hooked.release()))
    worker.start()
    worker.join()
    assert fakelib.releases(block_id) == 1
    assert fakelib.releases(hooked_id) == 1
    assert threads == [worker.ident]
    assert buf.released and hooked.released


def test_python_on_release_runs_in_releasing_thread():
    idents = []
    buf, cbuf = ctypes_buffer(on_release=lambda: idents.append(threading.get_ident()))
    worker = threading.Thread(target=buf.release)
    worker.start()
    worker.join()
    assert idents == [worker.ident]


# ---------------------------------------------------------------------------
# 4. strict release
# ---------------------------------------------------------------------------


def test_strict_release_with_one_export_changes_nothing(fakelib):
    owner = Owner()
    buf, block_id = spec_buffer(fakelib, owner=owner)
    view = memoryview(buf)
    before = repr(buf)
    with pytest.raises(
        BufferError,
        match=r"^membuf\.Buffer has 1 exported buffer; release it first, "
        r"or call release\(defer=True\)$",
    ):
        buf.release()
    assert fakelib.releases(block_id) == 0
    assert buf.released is False
    assert buf.exports == 1
    assert buf.owner is owner
    assert repr(buf) == before
    # still fully usable, new exports included
    assert buf[5] == RAW[5]
    assert bytes(buf) == RAW
    view2 = memoryview(buf)
    assert buf.exports == 2
    view2.release()
    view.release()
    assert buf.exports == 0
    buf.release()
    assert fakelib.releases(block_id) == 1
    assert buf.owner is None


def test_strict_release_names_the_count(fakelib):
    buf, block_id = fakelib.new(N)
    views = [memoryview(buf) for _ in range(3)]
    with pytest.raises(BufferError, match=r"^membuf\.Buffer has 3 exported buffers; "
                                          r"release them first"):
        buf.release()
    with pytest.raises(BufferError, match=r"has 3 exported buffers"):
        buf.release(defer=False)
    with pytest.raises(BufferError, match=r"has 3 exported buffers"):
        buf.__exit__(None, None, None)
    views.pop().release()
    with pytest.raises(BufferError, match=r"has 2 exported buffers"):
        buf.release()
    assert fakelib.releases(block_id) == 0
    del views
    buf.release()
    assert fakelib.releases(block_id) == 1


def test_strict_release_through_c_api(fakelib):
    buf, block_id = fakelib.new(N)
    view = memoryview(buf)
    with pytest.raises(BufferError, match="has 1 exported buffer"):
        fakelib.release(buf, 0)
    assert fakelib.releases(block_id) == 0
    view.release()
    fakelib.release(buf, 0)
    fakelib.release(buf, 0)
    assert fakelib.releases(block_id) == 1


def test_release_argument_errors(fakelib):
    buf, block_id = fakelib.new(N)
    with pytest.raises(TypeError, match=r"release\(\) takes at most 1 argument \(2 given\)"):
        buf.release(True, True)
    with pytest.raises(TypeError, match=r"release\(\) takes at most 1 argument \(2 given\)"):
        buf.release(True, defer=True)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'deferred'"):
        buf.release(deferred=True)

    class NoTruth:
        def __bool__(self):
            raise ArithmeticError("no truth")

    # A safety switch, as readonly=: only True or False.
    for bad, name in [(NoTruth(), "NoTruth"), ("False", "str"), (0, "int"), (1, "int"),
                      (None, "NoneType")]:
        with pytest.raises(TypeError, match=rf"^defer must be True or False, not {name}$"):
            buf.release(defer=bad)
        with pytest.raises(TypeError, match=rf"^defer must be True or False, not {name}$"):
            buf.release(bad)
    assert fakelib.releases(block_id) == 0
    assert buf.released is False


# ---------------------------------------------------------------------------
# 5. deferred release
# ---------------------------------------------------------------------------


def test_deferred_release_without_exports_is_immediate(fakelib):
    buf, block_id = fakelib.new(N)
    buf.release(defer=True)
    assert fakelib.releases(block_id) == 1
    assert buf.released is True


def test_deferred_release_waits_for_last_export(fakelib):
    buf, block_id = fakelib.new(N)
    first = memoryview(buf)
    second = memoryview(buf)[10:20]
    assert buf.exports == 2
    assert buf.release(defer=True) is None
    assert fakelib.releases(block_id) == 0
    assert buf.released is False
    # the live exports still see valid memory
    assert first.tobytes() == RAW
    assert second.tobytes() == RAW[10:20]
    first.release()
    assert fakelib.releases(block_id) == 0
    assert buf.exports == 1
    second.release()
    assert fakelib.releases(block_id) == 1
    assert buf.released is True
    assert buf.exports == 0
    assert "released" in repr(buf)


def test_deferred_release_refuses_new_exports_at_once(fakelib):
    buf, block_id = fakelib.new(N)
    view = memoryview(buf)
    buf.release(defer=True)
    with pytest.raises(ValueError, match=r"pending release \(release\(defer=True\) was called\)"):
        memoryview(buf)
    assert buf.exports == 1
    view.release()
    assert fakelib.releases(block_id) == 1


@pytest.mark.parametrize("op", sorted(MEMORY_OPS), ids=str)
def test_deferred_release_refuses_memory_ops(fakelib, op):
    buf, block_id = fakelib.new(N)
    view = memoryview(buf)
    buf.release(defer=True)
    with pytest.raises(ValueError, match="pending release"):
        MEMORY_OPS[op](buf)
    assert buf.exports == 1
    assert fakelib.releases(block_id) == 0
    view.release()
    assert fakelib.releases(block_id) == 1


def test_deferred_release_refuses_item_assignment(fakelib):
    buf, block_id = fakelib.new(N, fakelib.WRITABLE)
    view = memoryview(buf)
    buf.release(defer=True)
    with pytest.raises(ValueError, match="pending release"):
        buf[0] = 1
    with pytest.raises(ValueError, match="pending release"):
        buf[0:2] = b"ab"
    assert view[0] == RAW[0]
    view.release()
    assert fakelib.releases(block_id) == 1


def test_deferred_release_attributes_and_repr(fakelib):
    owner = Owner()
    buf, block_id = spec_buffer(fakelib, owner=owner)
    view = memoryview(buf)
    buf.release(defer=True)
    assert buf.released is False
    assert buf.exports == 1
    assert buf.owner is owner  # kept until the memory goes back
    assert buf.nbytes == N and buf.shape == (N,)
    assert repr(buf).endswith(", release pending on 1 export>")
    assert buf == buf
    assert not (buf == RAW)  # a pending Buffer is equal only to itself
    view.release()
    assert buf.owner is None


def test_deferred_release_twice_and_strict_while_pending(fakelib):
    buf, block_id = fakelib.new(N)
    view = memoryview(buf)
    buf.release(defer=True)
    buf.release(defer=True)
    with pytest.raises(BufferError, match="has 1 exported buffer"):
        buf.release()
    assert fakelib.releases(block_id) == 0
    view.release()
    assert fakelib.releases(block_id) == 1
    buf.release()
    buf.release(defer=True)
    assert fakelib.releases(block_id) == 1


def test_deferred_release_through_c_api(fakelib):
    buf, block_id = fakelib.new(N)
    view = memoryview(buf)
    fakelib.release(buf, fakelib.DEFER)
    assert fakelib.releases(block_id) == 0
    with pytest.raises(ValueError, match="pending release"):
        bytes(buf)
    del view
    assert fakelib.releases(block_id) == 1


def test_deferred_release_then_dealloc_of_everything(fakelib):
    buf, block_id = fakelib.new(N)
    view = memoryview(buf)
    buf.release(defer=True)
    del buf
    assert fakelib.releases(block_id) == 0
    del view
    assert fakelib.releases(block_id) == 1


def test_deferred_release_python_callback_exception_is_unraisable(unraisable):
    def on_release():
        raise RuntimeError("deferred boom")

    buf, cbuf = ctypes_buffer(on_release=on_release)
    view = memoryview(buf)
    buf.release(defer=True)
    assert unraisable == []
    view.release()  # does not raise: nobody could catch it here
    assert buf.released
    assert len(unraisable) == 1
    assert unraisable[0][0] is RuntimeError
    assert unraisable[0][1] == "deferred boom"
    assert unraisable[0][2] is on_release


def test_deferred_release_without_exports_propagates_callback_exception(unraisable):
    calls = []

    def on_release():
        calls.append(1)
        raise RuntimeError("immediate boom")

    buf, cbuf = ctypes_buffer(on_release=on_release)
    with pytest.raises(RuntimeError, match="immediate boom"):
        buf.release(defer=True)
    assert buf.released and calls == [1]
    assert unraisable == []


# ---------------------------------------------------------------------------
# 6. no use after release
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(MEMORY_OPS), ids=str)
def test_released_refuses_memory_ops(fakelib, op):
    buf, block_id = fakelib.new(N)
    buf.release()
    with pytest.raises(ValueError, match="released"):
        MEMORY_OPS[op](buf)
    assert buf.exports == 0
    assert fakelib.releases(block_id) == 1


def test_released_refuses_memory_ops_exact_message(fakelib):
    buf, _ = fakelib.new(N)
    buf.release()
    with pytest.raises(ValueError, match=r"^operation forbidden on released membuf\.Buffer object$"):
        buf[0]


def test_released_refuses_item_assignment(fakelib):
    buf, block_id = fakelib.new(N, fakelib.WRITABLE)
    buf.release()
    with pytest.raises(ValueError, match="released"):
        buf[0] = 1
    with pytest.raises(ValueError, match="released"):
        buf[0:2] = b"ab"
    with pytest.raises(ValueError, match="released"):
        del buf[0]


def test_released_typed_buffer_refuses_memory_ops(fakelib):
    buf, block_id = spec_buffer(fakelib, format="i", ndim=2, shape=(4, 4))
    buf.release()
    for op in (lambda b: b[0, 0], lambda b: b[1:2], lambda b: len(b), lambda b: b.tobytes(),
               lambda b: memoryview(b), lambda b: b.hex(), lambda b: b[...]):
        with pytest.raises(ValueError, match="released"):
            op(buf)
    assert buf.shape == (4, 4) and buf.strides == (16, 4) and buf.format == "i"


def test_released_attributes_still_answer(fakelib):
    owner = Owner()
    buf, block_id = spec_buffer(fakelib, owner=owner)
    buf.release()
    assert buf.released is True
    assert buf.nbytes == N
    assert buf.address == fakelib.address(block_id)
    assert buf.format == "B"
    assert buf.itemsize == 1
    assert buf.ndim == 1
    assert buf.shape == (N,)
    assert buf.strides == (1,)
    assert buf.readonly is True
    assert buf.owner is None
    assert buf.exports == 0
    assert buf.contiguous and buf.c_contiguous and buf.f_contiguous
    assert repr(buf) == f"<membuf.Buffer address={fakelib.address(block_id):#x} nbytes={N} " \
                        "read-only, released>"


def test_released_buffer_equals_only_itself(fakelib):
    buf, _ = fakelib.new(N)
    twin, _ = fakelib.new(N)
    assert buf == twin
    buf.release()
    assert buf == buf
    assert not (buf != buf)
    assert buf != RAW
    assert not (buf == RAW)
    assert RAW != buf
    assert buf != twin and twin != buf
    twin.release()
    assert buf != twin  # two released Buffers are not equal


def test_released_buffer_compared_to_non_buffer(fakelib):
    buf, _ = fakelib.new(N)
    buf.release()
    assert (buf == 5) is False
    assert (buf != None) is True  # noqa: E711


# ---------------------------------------------------------------------------
# release from inside an operation (__index__, __eq__ running Python code)
# ---------------------------------------------------------------------------


class ReleasingIndex:
    def __init__(self, buf, value, defer=False):
        self.buf = buf
        self.value = value
        self.defer = defer

    def __index__(self):
        self.buf.release(defer=self.defer)
        return self.value


def test_index_that_releases_the_buffer(fakelib):
    buf, block_id = fakelib.new(N)
    with pytest.raises(ValueError, match="released"):
        buf[ReleasingIndex(buf, 1)]
    assert fakelib.releases(block_id) == 1


def test_slice_bound_that_releases_the_buffer(fakelib):
    buf, block_id = fakelib.new(N)
    with pytest.raises(ValueError, match="released"):
        buf[ReleasingIndex(buf, 1):5]
    assert fakelib.releases(block_id) == 1
    assert buf.exports == 0


def test_hex_argument_cannot_release_the_buffer_under_it(fakelib):
    buf, block_id = fakelib.new(N)
    with pytest.raises(BufferError, match="has 1 exported buffer"):
        buf.hex(":", ReleasingIndex(buf, 2))
    assert fakelib.releases(block_id) == 0
    assert buf.hex(":", 2) == RAW.hex(":", 2)


def test_assignment_index_with_deferred_release(fakelib):
    buf, block_id = fakelib.new(N, fakelib.WRITABLE)
    buf[ReleasingIndex(buf, 1, defer=True)] = 7  # the write went to live memory
    assert fakelib.releases(block_id) == 1
    assert buf.released


def test_membership_test_that_releases_the_buffer(fakelib):
    buf, block_id = fakelib.new(N)

    class Needle:
        def __eq__(self, other):
            buf.release()
            return False

    with pytest.raises(ValueError, match="released"):
        Needle() in buf
    assert fakelib.releases(block_id) == 1


# ---------------------------------------------------------------------------
# 9. slices share
# ---------------------------------------------------------------------------


def test_slice_holds_an_export_of_its_parent(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[2:5]
    assert buf.exports == 1
    assert part.exports == 0
    assert part.address == buf.address + 2
    assert bytes(part) == RAW[2:5]
    with pytest.raises(BufferError, match="has 1 exported buffer"):
        buf.release()
    assert fakelib.releases(block_id) == 0
    assert buf.released is False
    del part
    assert buf.exports == 0
    buf.release()
    assert fakelib.releases(block_id) == 1


def test_empty_slice_also_holds_an_export(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[10:2]
    assert part.nbytes == 0
    assert buf.exports == 1
    del buf
    assert fakelib.releases(block_id) == 0
    del part
    assert fakelib.releases(block_id) == 1


def test_parent_deleted_first(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[2:5]
    del buf
    gc.collect()
    assert fakelib.releases(block_id) == 0
    assert bytes(part) == RAW[2:5]
    assert part[0] == RAW[2]
    del part
    assert fakelib.releases(block_id) == 1


def test_slice_deleted_first(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[2:5]
    del part
    assert fakelib.releases(block_id) == 0
    assert buf.exports == 0
    del buf
    assert fakelib.releases(block_id) == 1


def test_many_slices(fakelib):
    buf, block_id = fakelib.new(N)
    parts = [buf[i:i + 4] for i in range(0, N, 4)]
    assert buf.exports == len(parts)
    assert b"".join(bytes(p) for p in parts) == RAW
    del buf
    while parts:
        assert fakelib.releases(block_id) == 0
        parts.pop(len(parts) // 2)
    assert fakelib.releases(block_id) == 1


def test_slice_of_a_slice(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[2:50]
    sub = part[3:10]
    assert buf.exports == 1
    assert part.exports == 1
    assert sub.address == buf.address + 5
    assert bytes(sub) == RAW[5:12]
    with pytest.raises(BufferError):
        part.release()
    del buf, part
    gc.collect()
    assert fakelib.releases(block_id) == 0
    assert bytes(sub) == RAW[5:12]
    del sub
    assert fakelib.releases(block_id) == 1


def test_slice_of_a_slice_deleted_innermost_first(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[2:50]
    sub = part[3:10]
    del sub
    assert part.exports == 0 and buf.exports == 1
    del part
    assert buf.exports == 0
    assert fakelib.releases(block_id) == 0
    buf.release()
    assert fakelib.releases(block_id) == 1


def test_releasing_a_slice_ends_its_export(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[2:5]
    part.release()
    assert part.released
    assert buf.exports == 0
    assert fakelib.releases(block_id) == 0
    with pytest.raises(ValueError, match="released"):
        bytes(part)
    part.release()  # no-op; must not end a second export
    assert buf.exports == 0
    other = memoryview(buf)
    part.release()
    del part
    assert buf.exports == 1
    other.release()
    buf.release()
    assert fakelib.releases(block_id) == 1


def test_slice_used_as_context_manager(fakelib):
    buf, block_id = fakelib.new(N)
    with buf[4:8] as part:
        assert buf.exports == 1
        assert bytes(part) == RAW[4:8]
    assert part.released
    assert buf.exports == 0
    buf.release()
    assert fakelib.releases(block_id) == 1


def test_slice_with_its_own_export(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[2:10]
    view = memoryview(part)
    assert part.exports == 1
    assert buf.exports == 1  # the slice's one export of its parent
    with pytest.raises(BufferError, match="has 1 exported buffer"):
        part.release()
    del part, buf
    gc.collect()
    assert fakelib.releases(block_id) == 0
    assert view.tobytes() == RAW[2:10]
    view.release()
    assert fakelib.releases(block_id) == 1


def test_deferred_release_of_parent_with_live_slice(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[2:5]
    buf.release(defer=True)
    assert fakelib.releases(block_id) == 0
    assert buf.released is False
    with pytest.raises(ValueError, match="pending release"):
        buf[0:1]
    with pytest.raises(ValueError, match="pending release"):
        buf[0]
    assert bytes(part) == RAW[2:5]  # the slice still works
    sub = part[1:]  # and can be sliced: its parent is the slice, not buf
    assert bytes(sub) == RAW[3:5]
    del part
    assert fakelib.releases(block_id) == 0
    del sub
    assert fakelib.releases(block_id) == 1
    assert buf.released is True


def test_deferred_release_of_parent_ended_by_releasing_the_slice(fakelib):
    buf, block_id = fakelib.new(N)
    part = buf[2:5]
    buf.release(defer=True)
    part.release()
    assert fakelib.releases(block_id) == 1
    assert buf.released


def test_released_parent_cannot_be_sliced(fakelib):
    buf, block_id = fakelib.new(N)
    buf.release()
    with pytest.raises(ValueError, match="released"):
        buf[1:3]
    assert buf.exports == 0


DEEP_DEFERRED_CHAIN = r"""
import ctypes, sys
import membuf

cbuf = ctypes.create_string_buffer(b"x" * 16, 16)
calls = []
buf = membuf.from_address(ctypes.addressof(cbuf), 16, on_release=lambda: calls.append(1))
chain = [buf]
for _ in range(int(sys.argv[1])):
    chain.append(chain[-1][:])       # each slice holds an export of the one before
for part in chain[:-1]:
    part.release(defer=True)         # all pending on their one export
chain[-1].release()                  # ... which ends them all, one after the other
print("CALLS", calls, all(p.released for p in chain), flush=True)
"""


def test_deep_chain_of_deferred_slices(tmp_path):
    """Ending the last export of a long chain of pending slices releases them
    all (without exhausting the C stack: run in a child interpreter)."""
    import subprocess

    script = tmp_path / "chain.py"
    script.write_text(DEEP_DEFERRED_CHAIN)
    result = subprocess.run([sys.executable, str(script), str(10**6)], capture_output=True,
                            text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "CALLS [1] True" in result.stdout


DEEP_DROPPED_CHAIN = r"""
import ctypes, sys
import membuf

cbuf = ctypes.create_string_buffer(b"x" * 16, 16)
calls = []
buf = membuf.from_address(ctypes.addressof(cbuf), 16, on_release=lambda: calls.append(1))
for _ in range(int(sys.argv[1])):
    buf = buf[:]                     # only the newest slice is referenced
del buf                              # frees the whole chain, newest first
print("CALLS", calls, flush=True)
"""


def test_dropping_a_deep_chain_of_slices(tmp_path):
    """Freeing the head of a million slices of slices frees them all and
    releases the memory once, without exhausting the C stack (the trashcan in
    the default build, membuf's own postponed deallocation in the abi3 build;
    run in a child interpreter)."""
    import subprocess

    script = tmp_path / "dropped.py"
    script.write_text(DEEP_DROPPED_CHAIN)
    result = subprocess.run([sys.executable, str(script), str(10**6)], capture_output=True,
                            text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "CALLS [1]" in result.stdout


# ---------------------------------------------------------------------------
# 10. owners
# ---------------------------------------------------------------------------


def test_owner_kept_alive_until_release(fakelib):
    owner = Owner()
    ref = weakref.ref(owner)
    buf, block_id = spec_buffer(fakelib, owner=owner)
    del owner
    gc.collect()
    assert ref() is not None
    assert buf.owner is ref()
    buf.release()
    assert ref() is None
    assert buf.owner is None
    assert fakelib.releases(block_id) == 1


def test_owner_dropped_at_dealloc(fakelib):
    owner = Owner()
    ref = weakref.ref(owner)
    buf, block_id = spec_buffer(fakelib, owner=owner)
    del owner, buf
    gc.collect()
    assert ref() is None
    assert fakelib.releases(block_id) == 1


def test_owner_reference_dropped_exactly_once(fakelib):
    owner = Owner()
    base = sys.getrefcount(owner)
    buf, block_id = spec_buffer(fakelib, owner=owner)
    assert sys.getrefcount(owner) == base + 1
    view = memoryview(buf)
    with pytest.raises(BufferError):
        buf.release()
    assert sys.getrefcount(owner) == base + 1
    view.release()
    buf.release()
    assert sys.getrefcount(owner) == base
    buf.release()
    del buf
    gc.collect()
    assert sys.getrefcount(owner) == base


def test_owner_alive_during_callback_and_dropped_after():
    owner = Owner()
    ref = weakref.ref(owner)
    seen = []
    cbuf = ctypes.create_string_buffer(RAW, N)
    buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=owner,
                              on_release=lambda: seen.append(ref() is not None))
    del owner
    buf.release()
    assert seen == [True]
    assert ref() is None


def test_owner_alive_during_callback_at_dealloc():
    owner = Owner()
    ref = weakref.ref(owner)
    seen = []
    cbuf = ctypes.create_string_buffer(RAW, N)
    buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=owner,
                              on_release=lambda: seen.append(ref() is not None))
    del owner, buf
    gc.collect()
    assert seen == [True]
    assert ref() is None


def test_owner_alive_during_callback_at_deferred_release():
    owner = Owner()
    ref = weakref.ref(owner)
    seen = []
    cbuf = ctypes.create_string_buffer(RAW, N)
    buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=owner,
                              on_release=lambda: seen.append(ref() is not None))
    del owner
    view = memoryview(buf)
    buf.release(defer=True)
    assert seen == [] and ref() is not None
    view.release()
    assert seen == [True]
    assert ref() is None


def test_owner_is_the_memory_for_ctypes():
    """The classic use: the ctypes object owning the memory is the owner."""
    cbuf = ctypes.create_string_buffer(RAW, N)
    ref = weakref.ref(cbuf)
    buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=cbuf)
    del cbuf
    gc.collect()
    assert ref() is not None
    assert bytes(buf) == RAW  # still valid memory
    del buf
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------------------
# 2. the callback sees a released Buffer
# ---------------------------------------------------------------------------


def test_python_callback_sees_released_buffer():
    box = []
    seen = []

    def on_release():
        buf = box[0]
        seen.append((buf.released, buf.exports, buf.owner))
        with pytest.raises(ValueError, match="released"):
            memoryview(buf)
        with pytest.raises(ValueError, match="released"):
            buf[0]
        buf.release()  # re-entrant release: a no-op
        seen.append("done")

    cbuf = ctypes.create_string_buffer(RAW, N)
    buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=cbuf, on_release=on_release)
    box.append(buf)
    buf.release()
    assert seen == [(True, 0, None), "done"]
    box.clear()


def test_c_callback_sees_released_buffer(fakelib):
    box = []
    seen = []
    block_id = fakelib.alloc(N)

    def hook():  # runs inside the C release callback, after the block is freed
        buf = box[0]
        seen.append((buf.released, fakelib.releases(block_id)))
        with pytest.raises(ValueError, match="released"):
            bytes(buf)
        buf.release()
        fakelib.release(buf, 0)
        fakelib.release(buf, fakelib.DEFER)

    buf = fakelib.wrap_with_hook(block_id, hook)
    box.append(buf)
    buf.release()
    assert seen == [(True, 1)]
    assert fakelib.releases(block_id) == 1
    box.clear()


def test_c_callback_sees_released_buffer_at_deferred_release(fakelib):
    box = []
    seen = []
    block_id = fakelib.alloc(N)
    buf = fakelib.wrap_with_hook(block_id, lambda: seen.append((box[0].released,
                                                                box[0].exports)))
    box.append(buf)
    view = memoryview(buf)
    buf.release(defer=True)
    assert seen == []
    view.release()
    assert seen == [(True, 0)]
    box.clear()


def test_c_hook_exception_goes_to_unraisablehook(fakelib, unraisable):
    def hook():
        raise RuntimeError("hook failed")

    block_id = fakelib.alloc(N)
    buf = fakelib.wrap_with_hook(block_id, hook)
    buf.release()  # a C callback cannot raise: reported, not propagated
    assert fakelib.releases(block_id) == 1
    assert len(unraisable) == 1 and unraisable[0][2] is hook


# ---------------------------------------------------------------------------
# 10. cycles and the garbage collector
# ---------------------------------------------------------------------------


def test_cycle_through_owner_is_collected(fakelib, no_auto_gc):
    def make():
        owner = Owner()
        buf, block_id = spec_buffer(fakelib, owner=owner)
        owner.buf = buf  # buf -> owner -> buf
        return block_id, weakref.ref(owner), weakref.ref(buf)

    block_id, owner_ref, buf_ref = make()
    assert fakelib.releases(block_id) == 0  # really a cycle
    assert owner_ref() is not None
    gc.collect()
    assert fakelib.releases(block_id) == 1
    assert owner_ref() is None
    assert buf_ref() is None
    gc.collect()
    assert fakelib.releases(block_id) == 1


def test_cycle_through_on_release_closure_is_collected(no_auto_gc):
    calls = []
    cbuf = ctypes.create_string_buffer(RAW, N)

    def make():
        box = []

        def on_release():
            # the Buffer is reachable from its own callback: a cycle
            calls.append((box[0].released, box[0].owner))

        buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=cbuf, on_release=on_release)
        box.append(buf)
        return weakref.ref(buf)

    buf_ref = make()
    assert calls == []
    assert buf_ref() is not None
    gc.collect()
    assert calls == [(True, None)]
    assert buf_ref() is None
    gc.collect()
    assert len(calls) == 1


def test_cycle_with_memoryview_in_owner_is_collected(fakelib, no_auto_gc):
    def make():
        owner = Owner()
        buf, block_id = spec_buffer(fakelib, owner=owner)
        owner.view = memoryview(buf)  # buf -> owner -> memoryview -> buf (an export)
        assert buf.exports == 1
        return block_id, weakref.ref(owner)

    block_id, owner_ref = make()
    assert fakelib.releases(block_id) == 0
    gc.collect()
    assert fakelib.releases(block_id) == 1
    assert owner_ref() is None


def test_cycle_with_slice_in_owner_is_collected(fakelib, no_auto_gc):
    def make():
        owner = Owner()
        buf, block_id = spec_buffer(fakelib, owner=owner)
        owner.part = buf[3:9]
        return block_id, weakref.ref(owner)

    block_id, owner_ref = make()
    assert fakelib.releases(block_id) == 0
    gc.collect()
    assert fakelib.releases(block_id) == 1
    assert owner_ref() is None


def test_cycle_callback_sees_intact_owner(no_auto_gc):
    """Without exports the callback runs when the GC finalizes the cycle,
    before anything in it is cleared: the owner is intact."""
    cbuf = ctypes.create_string_buffer(RAW, N)
    calls = []

    def make():
        owner = Owner()
        owner.tag = "intact"

        def on_release():
            calls.append((owner.tag, owner.buf.released, owner.buf.owner))

        owner.buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=owner,
                                        on_release=on_release)
        return weakref.ref(owner)

    owner_ref = make()
    gc.collect()
    assert calls == [("intact", True, None)]
    assert owner_ref() is None


# A Python on_release in a cycle that also holds an export of the Buffer (a
# memoryview stored in the owner): the release must wait for the export, so
# it happens while the GC clears the garbage.  The callable (and what it
# uses) is part of that garbage; it must still work when it is called.
# Run in a child interpreter: a failure here may be a crash.

CYCLE_SCRIPT = r"""
import ctypes, gc, sys
import membuf

gc.disable()
cbuf = ctypes.create_string_buffer(b"x" * 16, 16)
calls = []

class Owner:
    pass

class Callback:
    def __init__(self):
        self.size = len(cbuf)
    def __call__(self):
        calls.append(self.size)

def unraisable(args):
    print("UNRAISABLE", args.exc_type.__name__, args.exc_value, flush=True)

sys.unraisablehook = unraisable

def make(kind):
    size = len(cbuf)
    if kind == "function":
        def on_release():          # created first: first in the GC's list
            calls.append(size)
    else:
        on_release = Callback()
    owner = Owner()
    buf = membuf.from_address(ctypes.addressof(cbuf), 16, owner=owner, on_release=on_release)
    owner.view = memoryview(buf)   # buf -> owner -> memoryview -> buf
    owner.buf = buf

make(sys.argv[1])
gc.collect()
print("CALLS", calls, flush=True)
"""


@pytest.mark.parametrize("kind", ["function", "instance"])
def test_cycle_with_python_callback_and_memoryview(kind, tmp_path):
    import subprocess

    script = tmp_path / "cycle.py"
    script.write_text(CYCLE_SCRIPT)
    result = subprocess.run([sys.executable, str(script), kind], capture_output=True,
                            text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "UNRAISABLE" not in result.stdout, result.stdout
    assert "CALLS [16]" in result.stdout, result.stdout


def test_cycle_with_slice_in_owner_and_python_callback(no_auto_gc):
    """A slice in the cycle is a Buffer too: both are finalized before the GC
    clears anything, so the parent's callback finds its state intact."""
    cbuf = ctypes.create_string_buffer(RAW, N)
    calls = []

    class Callback:
        def __init__(self):
            self.size = N

        def __call__(self):
            calls.append(self.size)

    def make():
        owner = Owner()
        buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=owner,
                                  on_release=Callback())
        owner.part = buf[1:5]
        owner.buf = buf

    make()
    assert calls == []
    gc.collect()
    assert calls == [N]


def test_cycle_callback_exception_goes_to_unraisablehook(no_auto_gc, unraisable):
    cbuf = ctypes.create_string_buffer(RAW, N)
    calls = []

    def make():
        owner = Owner()

        def on_release():
            calls.append(1)
            raise RuntimeError("boom in gc")

        owner.buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=owner,
                                        on_release=on_release)

    make()
    gc.collect()
    assert calls == [1]
    assert len(unraisable) == 1
    assert unraisable[0][0] is RuntimeError
    assert unraisable[0][1] == "boom in gc"


def test_callback_resurrecting_the_buffer_does_not_run_twice(no_auto_gc):
    cbuf = ctypes.create_string_buffer(RAW, N)
    calls = []
    saved = []

    def make():
        owner = Owner()
        box = []

        def on_release():
            calls.append(1)
            saved.append(box[0])  # resurrect the Buffer

        buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=owner, on_release=on_release)
        owner.buf = buf
        box.append(buf)

    make()
    gc.collect()
    assert calls == [1]
    assert len(saved) == 1
    assert saved[0].released is True
    assert saved[0].owner is None
    with pytest.raises(ValueError, match="released"):
        bytes(saved[0])
    saved.clear()
    gc.collect()
    assert calls == [1]


def test_buffer_without_owner_or_callback_is_not_gc_tracked(fakelib):
    buf, _ = fakelib.new(N)
    assert not gc.is_tracked(buf)
    owned, _ = spec_buffer(fakelib, owner=Owner())
    assert gc.is_tracked(owned)
    cbuf = ctypes.create_string_buffer(RAW, N)
    with_callback = membuf.from_address(ctypes.addressof(cbuf), N, on_release=lambda: None)
    assert gc.is_tracked(with_callback)
    assert gc.is_tracked(buf[1:2])


def test_gc_get_referents_sees_owner_and_callback():
    owner = Owner()

    def on_release():
        pass

    cbuf = ctypes.create_string_buffer(RAW, N)
    buf = membuf.from_address(ctypes.addressof(cbuf), N, owner=owner, on_release=on_release)
    referents = gc.get_referents(buf)
    assert any(r is owner for r in referents)
    assert any(r is on_release for r in referents)
    buf.release()
    assert not any(r is owner or r is on_release for r in gc.get_referents(buf))
