"""Re-entrancy: Python code that runs in the middle of a Buffer operation and
releases, exports, reads, drops or creates Buffers.

Where Python code can run inside an operation:

* ``__index__`` of an index, of a slice's start / stop / step, of an item
  assignment's key or value;
* release callbacks: a Python ``on_release`` (from_address) and a C callback
  that calls back into Python (fakelib.wrap_with_hook), triggered by
  release(), a deferred release's last view, deallocation and gc.collect();
* ``==``: the other operand's reflected ``__eq__``;
* any allocation of a GC-tracked object: in CPython 3.11 it may start a
  collection on the spot, which runs the finalizers (``__del__``) of cyclic
  garbage.  That is how "an object whose export releases the Buffer" is done
  honestly on 3.11, where Python classes cannot export buffers: a trap object
  in a garbage cycle whose ``__del__`` releases the Buffer, with the GC
  threshold at 1 so that the first GC allocation inside the operation
  collects it.  Each such test asserts that the trap really fired inside the
  operation.

Every case must either raise (ValueError for a released Buffer, BufferError
for a strict release refused, as documented) or work -- never crash, never
hand out a view of memory that was given back, never call a callback twice.
Counts are checked with fakelib.releases() and Python counters.
"""

import ctypes
import gc
import sys

import pytest

import membuf

N = 32
RAW = bytes(i % 251 for i in range(N))
RELEASED = "released"  # part of both ValueError messages ("released", "release pending")


@pytest.fixture(scope="module", autouse=True)
def cheap_collections():
    """Move what exists before this module (pytest, NumPy, ...) to the GC's
    permanent generation: the many gc.collect() calls below then scan only
    what the tests made (the same collection of their cycles, much faster)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def unraisable(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook",
                        lambda args: seen.append((args.exc_type, str(args.exc_value))))
    return seen


def release(buf, mode):
    """Release buf the given way: strict or deferred, Python or C API."""
    if mode == "strict":
        buf.release()
    elif mode == "defer":
        buf.release(defer=True)
    else:
        import fakelib  # built and imported by the fakelib fixture

        fakelib.release(buf, 0 if mode == "capi-strict" else fakelib.DEFER)


MODES = ["strict", "defer", "capi-strict", "capi-defer"]


def is_strict(mode):
    return mode.endswith("strict")


class ReleasingIndex:
    """An int whose __index__ releases a Buffer first (once)."""

    def __init__(self, buf, value, mode):
        self.buf = buf
        self.value = value
        self.mode = mode
        self.calls = 0

    def __index__(self):
        self.calls += 1
        if self.calls == 1:
            release(self.buf, self.mode)
        return self.value


def make(fakelib, kind, flags=0):
    """(Buffer, block id) of the given kind over a fresh fakelib block."""
    if kind == "bytes":
        return fakelib.new(N, flags)
    block = fakelib.alloc(N)
    if kind == "typed":
        return fakelib.from_spec(block, format="i", flags=flags), block
    if kind == "typed-2d":
        return fakelib.from_spec(block, format="h", ndim=2, shape=[4, 4], flags=flags), block
    raise AssertionError(kind)


# ---------------------------------------------------------------------------
# __index__ releasing the Buffer being indexed / sliced
# ---------------------------------------------------------------------------

KEYS = {
    "index": lambda r: r(1),
    "negative-index": lambda r: r(-2),
    "start": lambda r: slice(r(1), 5),
    "stop": lambda r: slice(1, r(5)),
    "step": lambda r: slice(None, None, r(2)),
    "negative-step": lambda r: slice(None, None, r(-1)),
}
CASES = [(kind, where) for kind in ("bytes", "typed", "typed-2d") for where in KEYS
         if not (kind == "typed-2d" and "index" in where)]  # 2-D: no sub-views by int


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,where", CASES)
def test_index_releases_the_buffer_being_indexed(fakelib, kind, where, mode):
    buf, block = make(fakelib, kind)
    key = KEYS[where](lambda v: ReleasingIndex(buf, v, mode))
    with pytest.raises(ValueError, match=RELEASED):
        buf[key]
    # No export was alive, so even a deferred release happened at once.
    assert fakelib.releases(block) == 1
    assert buf.released and buf.exports == 0
    with pytest.raises(ValueError, match=RELEASED):
        memoryview(buf)
    del buf, key
    gc.collect()
    assert fakelib.releases(block) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,where", CASES)
def test_index_releases_the_buffer_while_a_view_is_alive(fakelib, kind, where, mode):
    buf, block = make(fakelib, kind)
    view = memoryview(buf)
    expected = view.tobytes()
    key = KEYS[where](lambda v: ReleasingIndex(buf, v, mode))
    if is_strict(mode):
        # The strict release is refused inside __index__; its BufferError
        # propagates and nothing changed.
        with pytest.raises(BufferError, match="has 1 exported buffer"):
            buf[key]
        assert fakelib.releases(block) == 0
        assert not buf.released and buf.exports == 1
        buf[key]  # __index__ does nothing the second time: works
        assert buf.exports == 1
    else:
        # Deferred: pending at once, so the operation is refused ...
        with pytest.raises(ValueError, match="pending"):
            buf[key]
        # ... while the view still sees the live memory.
        assert fakelib.releases(block) == 0
        assert view.tobytes() == expected
    view.release()
    if not is_strict(mode):
        assert fakelib.releases(block) == 1
    del buf, key
    gc.collect()
    assert fakelib.releases(block) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["start", "stop", "step", "index"])
def test_index_of_a_slice_releases_its_parent(fakelib, mode, where):
    parent, block = fakelib.new(N)
    part = parent[2:20]
    key = {"index": 3, "start": slice(1, 4), "stop": slice(1, 4), "step": slice(1, 9, 2)}[where]
    releasing = ReleasingIndex(parent, 0, mode)
    if where == "index":
        releasing.value = key
        key = releasing
    elif where == "start":
        releasing.value = key.start
        key = slice(releasing, key.stop)
    elif where == "stop":
        releasing.value = key.stop
        key = slice(key.start, releasing)
    else:
        releasing.value = key.step
        key = slice(key.start, key.stop, releasing)
    if is_strict(mode):
        with pytest.raises(BufferError, match="has 1 exported buffer"):
            part[key]
        assert not parent.released
    else:
        # The parent only goes pending: the slice itself is intact and works.
        result = part[key]
        assert parent.exports == 1 and not parent.released
        if where == "index":
            assert result == RAW[2:20][3]
        else:
            bounds = {"start": slice(1, 4), "stop": slice(1, 4), "step": slice(1, 9, 2)}[where]
            assert result.tobytes() == RAW[2:20][bounds]
            del result
    assert fakelib.releases(block) == 0
    del part
    if not is_strict(mode):
        assert fakelib.releases(block) == 1  # the slice's end completed it
        assert parent.released
    del parent, key, releasing
    gc.collect()
    assert fakelib.releases(block) == 1


def test_index_drops_the_last_reference_to_the_buffer_being_indexed(fakelib):
    holder = list(fakelib.new(N))
    block = holder[1]

    class Dropping:
        def __index__(self):
            holder.clear()  # the subscript's operand still holds the Buffer
            return 3

    assert holder[0][Dropping()] == RAW[3]
    assert holder == []
    assert fakelib.releases(block) == 1  # deallocated right after, once


@pytest.mark.parametrize("kind", ["bytes", "typed"])
def test_index_drops_the_last_reference_while_slicing(fakelib, kind):
    buf, block = make(fakelib, kind)
    holder = [buf]
    del buf

    class Dropping:
        def __index__(self):
            holder.clear()
            return 1

    part = holder[0][Dropping():3]
    assert fakelib.releases(block) == 0  # the slice keeps its parent alive
    assert part.owner is not None and part.owner.exports == 1
    assert part.tobytes() == RAW[part.itemsize : 3 * part.itemsize]
    del part
    assert fakelib.releases(block) == 1


# ---------------------------------------------------------------------------
# item assignment whose key or value releases the Buffer
# ---------------------------------------------------------------------------


def ctypes_buffer(readonly=False):
    """A writable Buffer over ctypes memory (which stays valid after release,
    so writes can be checked), its counter and the memory."""
    memory = ctypes.create_string_buffer(RAW, N)
    calls = []
    buf = membuf.from_address(ctypes.addressof(memory), N, readonly=readonly,
                              on_release=lambda: calls.append(1))
    return buf, calls, memory


@pytest.mark.parametrize("mode", ["strict", "defer"])
@pytest.mark.parametrize("part", ["value", "key", "slice-start"])
def test_assignment_that_releases_the_buffer(mode, part):
    buf, calls, memory = ctypes_buffer()
    if part == "value":
        key, value, written = 1, ReleasingIndex(buf, 77, mode), 77
    elif part == "key":
        key, value, written = ReleasingIndex(buf, 1, mode), 77, 77
    else:
        key, value, written = slice(ReleasingIndex(buf, 1, mode), 2), b"\x4d", 0x4D
    if mode == "strict":
        # The assignment holds an export (a memoryview) while it converts
        # key and value: the strict release is refused, nothing is written.
        with pytest.raises(BufferError, match="has 1 exported buffer"):
            buf[key] = value
        assert calls == [] and not buf.released and buf.exports == 0
        assert memory.raw[1] == RAW[1]
        buf.release()
    else:
        # Deferred: the write lands in live memory, then the release completes.
        buf[key] = value
        assert memory.raw[1] == written
    assert calls == [1] and buf.released and buf.exports == 0
    with pytest.raises(ValueError, match=RELEASED):
        buf[1] = 5
    del buf, key, value
    gc.collect()
    assert calls == [1]


@pytest.mark.parametrize("mode", ["strict", "defer"])
@pytest.mark.parametrize("kind", ["bytes", "typed", "typed-2d"])
def test_assignment_value_releases_the_buffer(fakelib, kind, mode):
    buf, block = make(fakelib, kind, fakelib.WRITABLE)
    key = (1, 1) if kind == "typed-2d" else 1
    view = memoryview(buf)  # to read the memory afterwards, while it lives
    value = ReleasingIndex(buf, 77, mode)
    if mode == "strict":
        with pytest.raises(BufferError):
            buf[key] = value
        assert view[key] != 77  # nothing was written
        assert not buf.released
    else:
        buf[key] = value
        assert view[key] == 77  # written while the memory was alive
        assert buf.exports == 1 and not buf.released  # pending on the view
    assert fakelib.releases(block) == 0
    view.release()
    assert fakelib.releases(block) == (0 if mode == "strict" else 1)
    del buf, value, view
    gc.collect()
    assert fakelib.releases(block) == 1


# ---------------------------------------------------------------------------
# release callbacks that use Buffers
# ---------------------------------------------------------------------------

SELF_ACTIONS = ["release", "release-defer", "capi-release", "memoryview", "index", "slice",
                "tobytes", "len", "with"]
OTHER_ACTIONS = ["drop-other", "release-other", "create-new"]


def run_action(action, me, others, fakelib, log):
    """What a release callback does with its own Buffer `me` (already marked
    released) or with other Buffers; records the outcome instead of raising."""
    try:
        if action == "release":
            result = me.release()
        elif action == "release-defer":
            result = me.release(defer=True)
        elif action == "capi-release":
            result = fakelib.release(me, 0)
        elif action == "memoryview":
            result = memoryview(me)
        elif action == "index":
            result = me[0]
        elif action == "slice":
            result = me[0:2]
        elif action == "tobytes":
            result = me.tobytes()
        elif action == "len":
            result = len(me)
        elif action == "with":
            with me:
                result = None
        elif action == "drop-other":
            others["buf"] = None  # the last reference: its callback runs here
            result = fakelib.releases(others["block"])
        elif action == "release-other":
            others["buf"].release()
            result = fakelib.releases(others["block"])
        elif action == "create-new":
            new, block = fakelib.new(8)
            result = (new.tobytes(), fakelib.releases(block))
            others["new"] = (new, block)
        else:
            raise AssertionError(action)
        log.append(("ok", result))
    except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
        log.append((type(exc).__name__, str(exc)))


def expected_outcome(action):
    if action in ("release", "release-defer", "capi-release"):
        return ("ok", None)  # releasing a released Buffer is a no-op
    if action in ("drop-other", "release-other"):
        return ("ok", 1)  # the other Buffer's callback ran, once, nested in ours
    if action == "create-new":
        return ("ok", (bytes(i % 251 for i in range(8)), 0))  # a new, working Buffer
    return ("ValueError", "operation forbidden on released membuf.Buffer object")


def trigger(how, holder):
    """Make the Buffer in holder[0] be released the given way."""
    if how == "release":
        holder[0].release()
    elif how == "capi-release":
        import fakelib  # built and imported by the fakelib fixture

        fakelib.release(holder[0], 0)
    elif how == "defer-last-view":
        view = memoryview(holder[0])
        holder[0].release(defer=True)
        view.release()
    elif how == "dealloc":
        holder.clear()
    elif how == "gc-cycle":
        holder.clear()  # only the cycle through the owner holds it now
        gc.collect()
    else:
        raise AssertionError(how)


def callback_cases(triggers):
    # A callback reaches its own Buffer through a reference the test keeps,
    # or (gc-cycle) through its owner; a deallocated Buffer is unreachable,
    # so there it acts on other Buffers only.
    for how in triggers:
        for action in SELF_ACTIONS + OTHER_ACTIONS:
            if how == "dealloc" and action in SELF_ACTIONS:
                continue
            yield how, action


class Owner:
    pass


class Callback:
    """A Python on_release that runs an action on its own Buffer (reached
    through self.via.me) or on others."""

    def __init__(self, action, others, fakelib, log, calls):
        self.action, self.others, self.fakelib, self.log, self.calls = (
            action, others, fakelib, log, calls)
        self.via = None

    def __call__(self):
        self.calls.append(1)
        me = self.via.me if self.via is not None else None
        run_action(self.action, me, self.others, self.fakelib, self.log)


@pytest.mark.parametrize(
    "how,action", list(callback_cases(["release", "defer-last-view", "dealloc", "gc-cycle"])))
def test_python_on_release_that_uses_buffers(fakelib, how, action, unraisable):
    memory = ctypes.create_string_buffer(RAW, N)
    others = {}
    others["buf"], others["block"] = fakelib.new(8)
    log = []
    calls = []
    callback = Callback(action, others, fakelib, log, calls)
    owner = Owner()
    holder = [membuf.from_address(ctypes.addressof(memory), N, owner=owner,
                                  on_release=callback)]
    if how == "gc-cycle":
        owner.me = holder[0]  # owner -> Buffer -> owner
        callback.via = owner  # the callback finds its Buffer through the owner
    elif how != "dealloc":
        callback.via = Owner()
        callback.via.me = holder[0]
    del owner, callback
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the cycle goes only at the explicit gc.collect()
    try:
        trigger(how, holder)
        assert calls == [1]
    finally:
        if gc_was_enabled:
            gc.enable()
    assert log == [expected_outcome(action)], log
    assert unraisable == []
    new = others.pop("new", None)
    others.pop("buf", None)
    holder.clear()
    gc.collect()
    assert calls == [1]  # never a second time
    assert fakelib.releases(others["block"]) == 1
    if new is not None:
        new_block = new[1]
        del new
        assert fakelib.releases(new_block) == 1


@pytest.mark.parametrize(
    "how,action", list(callback_cases(["release", "capi-release", "defer-last-view", "dealloc"])))
def test_c_callback_hook_that_uses_buffers(fakelib, how, action, unraisable):
    block = fakelib.alloc(N)
    others = {}
    others["buf"], others["block"] = fakelib.new(8)
    log = []
    seen_releases = []
    holder = []

    def hook():
        # The C callback has given the block back before calling us.
        seen_releases.append(fakelib.releases(block))
        run_action(action, holder[0] if holder else None, others, fakelib, log)

    holder.append(fakelib.wrap_with_hook(block, hook))
    trigger(how, holder)
    assert seen_releases == [1]
    assert log == [expected_outcome(action)], log
    assert unraisable == []
    new = others.pop("new", None)
    others.pop("buf", None)
    holder.clear()
    gc.collect()
    assert fakelib.releases(block) == 1  # never a second time
    assert seen_releases == [1]
    assert fakelib.releases(others["block"]) == 1
    if new is not None:
        new_block = new[1]
        del new
        assert fakelib.releases(new_block) == 1


def test_callback_chain_of_nested_releases(fakelib):
    """Each callback drops the last reference to the next Buffer: a chain of
    nested releases, each exactly once."""
    blocks = []
    chain = {}

    def hook_for(i):
        def hook():
            chain.pop(i + 1, None)  # the next Buffer's release runs inside ours
        return hook

    for i in range(50):
        block = fakelib.alloc(4)
        blocks.append(block)
        chain[i] = fakelib.wrap_with_hook(block, hook_for(i))
    chain.pop(0)
    assert chain == {}
    assert [fakelib.releases(b) for b in blocks] == [1] * 50


# ---------------------------------------------------------------------------
# == against operands that release the Buffer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "typed"])
@pytest.mark.parametrize("mode", MODES)
def test_reflected_eq_releases_the_buffer(fakelib, kind, mode):
    buf, block = make(fakelib, kind)

    class Other:
        def __eq__(self, other):
            release(buf, mode)
            return NotImplemented

    # The Buffer answers NotImplemented (not a buffer), the reflected __eq__
    # releases it, and identity decides.
    assert (buf == Other()) is False
    assert (Other() != buf) is True or buf.released
    assert fakelib.releases(block) == 1
    assert buf == buf  # a released Buffer equals only itself
    del buf
    assert fakelib.releases(block) == 1


def test_eq_other_operand_hook_releases_the_buffer(fakelib):
    """`buf == other` where other is a Buffer whose C release hook releases
    buf, and other's release is completed by the comparison's own export of
    it ending (other was deferred-released while a view of it lived, and the
    comparison drops that last view)."""
    buf, block = fakelib.new(N)
    other_block = fakelib.alloc(N)
    other = fakelib.wrap_with_hook(other_block, lambda: buf.release())
    views = [memoryview(other)]
    other.release(defer=True)
    # The last view is the comparison's operand; its end releases other,
    # whose hook releases buf: afterwards, not during, the comparison.
    assert (buf == views.pop()) is True
    assert fakelib.releases(other_block) == 1
    assert fakelib.releases(block) == 1 and buf.released


# ---------------------------------------------------------------------------
# A garbage collection inside an operation releases the Buffer
# ---------------------------------------------------------------------------


# CPython 3.12 moved the start of a collection out of the allocator: an
# allocation that crosses the threshold only schedules one, which runs at the
# next check of the eval loop (between bytecodes), never inside a C function.
# From 3.12 on, no collection can interrupt a Buffer operation, and these
# tests have nothing to trigger (Python code that runs inside an operation,
# e.g. __index__, is tested above on every version).
GC_INSIDE_C_CALLS = pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="3.12+ runs the cyclic GC from the eval loop, never inside a C allocation")


class GCTrap:
    """Armed: a garbage cycle whose finalizer runs `action` at the next
    collection, which the GC threshold of 1 starts at the next allocation of a
    GC-tracked object -- inside the operation under test."""

    def __init__(self, action):
        self.action = action
        self.inside = [False]
        self.fired_inside = None

    def run(self, operation):
        class Trap:
            def __del__(trap):
                self.fired_inside = self.inside[0]
                self.action()

        old = gc.get_threshold()
        enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        membuf._membuf._clear_freelist()  # so that a new Buffer is allocated
        trap = Trap()
        trap.cycle = trap
        del trap
        gc.set_threshold(1)
        gc.enable()
        inside = self.inside
        try:
            inside[0] = True
            return operation()
        finally:
            inside[0] = False
            gc.set_threshold(*old)
            if not enabled:
                gc.disable()


def _swallow(action):
    def run():
        try:
            action()
        except BufferError:
            pass  # a refused strict release: the operation holds an export
    return run


GC_OPERATIONS = {
    "slice": lambda b: b[1:3],
    "step-slice": lambda b: b[::2],
    "memoryview": lambda b: memoryview(b),
    "index": lambda b: b[1],
    "tobytes": lambda b: b.tobytes(),
    "hex": lambda b: b.hex(),
    "eq-bytes": lambda b: b == RAW,
}
GC_KINDS = {
    "bytes": (lambda fl, block: fl.from_memory(block)),
    "typed": (lambda fl, block: fl.from_spec(block, format="i")),
    "strided": (lambda fl, block: fl.from_spec(block, ndim=1, shape=[N // 2], strides=[2])),
}


NO_GC_ALLOCATION = {
    ("bytes", "index"), ("bytes", "tobytes"), ("bytes", "eq-bytes"),  # read in place
    ("typed", "tobytes"),  # C-contiguous: copied straight into a bytes object
    ("strided", "index"),  # byte items are read in place whatever the stride
}


def gc_cases():
    for kind in GC_KINDS:
        for op in GC_OPERATIONS:
            # Operations on plain bytes that allocate no GC object cannot host
            # the trap (the test would prove nothing): left out.
            if (kind, op) in NO_GC_ALLOCATION:
                continue
            yield kind, op


@GC_INSIDE_C_CALLS
@pytest.mark.parametrize("mode", ["strict", "defer"])
@pytest.mark.parametrize("kind,op", list(gc_cases()))
def test_gc_inside_an_operation_releases_the_buffer(fakelib, kind, op, mode, unraisable):
    block = fakelib.alloc(N)
    buf = GC_KINDS[kind](fakelib, block)
    trap = GCTrap(_swallow(lambda: release(buf, mode)))
    try:
        result = trap.run(lambda: GC_OPERATIONS[op](buf))
        error = None
    except ValueError as exc:
        result, error = None, str(exc)
    assert trap.fired_inside is True, "the collection did not happen inside the operation"
    assert unraisable == []
    if error is not None:
        # Refused: the release happened (during the operation), nothing leaked.
        assert RELEASED in error
        assert fakelib.releases(block) == 1 and buf.released and buf.exports == 0
    elif isinstance(result, (membuf.Buffer, memoryview)):
        # A view came out: the memory under it must still be there.
        assert fakelib.releases(block) == 0, (
            f"{op} returned a live view of a Buffer whose memory was given back "
            f"(released={buf.released}, exports={buf.exports})")
        assert not buf.released and buf.exports == 1
        del result
        if mode == "defer":
            assert fakelib.releases(block) == 1
    else:
        # A plain value, computed from live memory.
        assert result is not None
    del buf, result
    gc.collect()
    assert fakelib.releases(block) == 1


@GC_INSIDE_C_CALLS
@pytest.mark.parametrize("mode", ["strict", "defer"])
def test_gc_inside_slicing_a_slice_releases_the_parent_chain(fakelib, mode, unraisable):
    parent, block = fakelib.new(N)
    part = parent[::2]  # not compact: its slices are allocated, never recycled
    trap = GCTrap(_swallow(lambda: (release(part, mode), release(parent, mode))))
    try:
        result = trap.run(lambda: part[1:4])
    except ValueError as exc:
        assert RELEASED in str(exc)
        result = None
    assert trap.fired_inside is True
    if result is not None:
        assert fakelib.releases(block) == 0
        assert not part.released
        assert result.tobytes() == RAW[::2][1:4]
    del result, part, parent
    gc.collect()
    assert fakelib.releases(block) == 1
