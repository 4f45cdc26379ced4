"""Model-based test of the lifetime contract: a Hypothesis state machine.

Random sequences of: creating Buffers (C API through fakelib.new and
fakelib.from_spec with an owner, sometimes in a reference cycle with it;
membuf.from_address over ctypes or malloc memory, with and without owner and
on_release), exporting them (memoryview, numpy.frombuffer,
_testbuffer.ndarray(getbuf=PyBUF_FULL_RO)), slicing them (buf[i:j], buf[::k],
slices of slices), writing through them, releasing views, strict and
deferred release (Python method, C API, `with`), dropping references to
Buffers and views, and gc.collect().

A pure-Python model predicts every outcome, and after EVERY step an
invariant compares the real objects with it:

* each release callback ran exactly as often as the model says: 0 before
  release, 1 after (fakelib.releases(id), a counter in on_release);
* a Buffer is alive (weakref) exactly while the model says something holds
  it, and its owner is alive exactly until its release;
* `released` and `exports` equal the model (slices count as exports of their
  parent, and so does a memoryview hidden in an owner cycle);
* a released or release-pending Buffer refuses new exports (ValueError);
* the contents of every live Buffer, and of every live export (also of a
  Buffer whose release is pending), equal the model's bytes, and `address`
  is where the model says (zero-copy).

The test ends by dropping everything and collecting: every callback has then
run exactly once.

Automatic garbage collection is disabled while a sequence runs, so that
cycles are collected only at the gc.collect() step and the model stays exact.

Profiles (chosen with the environment variable MEMBUF_HYPOTHESIS_PROFILE):

* ``ci`` (default): 2 000 sequences of up to 30 steps, derandomized (the same
  sequences every run), no example database; 15-30 s on a 2-core machine.
  It also asserts that every interesting path (MUST_REACH) was taken.
* ``long``: 100 000 sequences of up to 50 steps (about 43 on average), random
  seeds, no database; about 45 sequences/s, so some 35-40 minutes on a busy
  2-core machine.  Run it with::

      MEMBUF_HYPOTHESIS_PROFILE=long python -m pytest tests/test_state_machine.py -x -q

  (add ``-s`` and ``--hypothesis-show-statistics`` to see the progress figures).
  MEMBUF_HYPOTHESIS_EXAMPLES=N overrides the number of sequences of either
  profile.
"""

import collections
import ctypes
import gc
import struct
import weakref

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import _testbuffer
import membuf
from conftest import hypothesis_profile, libc

PyBUF_FULL_RO = _testbuffer.PyBUF_FULL_RO



LIBC = libc()
# What the sequences reached, counted over the whole test: the test asserts
# that every interesting path was taken (so the generator cannot quietly
# degenerate into sequences that test nothing).
REACHED = collections.Counter()
MAX_BUFFERS = 8  # held Buffers at once (slices included)
MAX_EXPORTS = 8  # held views at once


class Owner:
    """An owner object: weakly referenceable, can close a cycle."""


# Typed layouts for fakelib.from_spec: (name, block length, from_spec keywords,
# format, itemsize, nested item offsets, stride of the first dimension).
def _offsets_2d(shape, strides):
    return [[i * strides[0] + j * strides[1] for j in range(shape[1])] for i in range(shape[0])]


LAYOUTS = [
    ("i-1d", 24, dict(format="i"), "i", 4, [4 * k for k in range(6)], 4),
    ("h-2d-C", 24, dict(format="h", ndim=2, shape=[3, 4]), "h", 2, _offsets_2d((3, 4), (8, 2)),
     8),
    ("d-2d-F", 48, dict(format="d", ndim=2, shape=[2, 3], strides=[8, 16]), "d", 8,
     _offsets_2d((2, 3), (8, 16)), 8),
    ("B-strided", 16, dict(ndim=1, shape=[8], strides=[2]), "B", 1, [2 * k for k in range(8)],
     2),
    ("B-2d", 16, dict(ndim=2, shape=[4, 4]), "B", 1, _offsets_2d((4, 4), (4, 1)), 4),
]


def flatten(items):
    if items and isinstance(items[0], list):
        return [o for row in items for o in row]
    return list(items)


def c_contiguous(offsets, itemsize):
    """PyBuffer_IsContiguous(view, 'C'): the items follow each other in C
    order (an empty layout is contiguous)."""
    return all(o == offsets[0] + k * itemsize for k, o in enumerate(offsets))


def memoryview_c_contiguous(b):
    """memoryview's own flag (Objects/memoryobject.c, init_flags), which
    numpy.frombuffer goes through: for one dimension it is shape[0] == 1 or
    strides[0] == itemsize, so an EMPTY strided 1-D layout counts as
    non-contiguous there although PyBuffer_IsContiguous() says contiguous."""
    if b.ndim == 1:
        return len(b.items) == 1 or b.stride0 == b.itemsize
    return c_contiguous(b.offsets, b.itemsize)


def raises(exc_type, fn, *args, **kwargs):
    """True if fn raises exc_type; the result of fn otherwise would be a
    failure of the caller's expectation, so it is returned for the message.
    (No pytest.raises: an ExceptionInfo kept in a frame forms a cycle that,
    with the GC off, would keep Buffers alive and blur the model.)"""
    try:
        fn(*args, **kwargs)
    except exc_type:
        return True
    return False


def same_value(a, b):
    return a == b or (a != a and b != b)  # NaN from arbitrary bytes as 'd'


class Root:
    """Memory one creation handed out: the model's copy of its bytes and how
    to read the real release count (None when nothing counts)."""

    def __init__(self, data, base, count):
        self.mem = bytearray(data)
        self.base = base
        self.count = count


class BufModel:
    def __init__(self, obj, root, items, fmt, itemsize, writable, stride0, parent=None,
                 cycle="", owner=None, address=None):
        self.ref = obj  # the machine's strong reference (None once dropped)
        self.wref = weakref.ref(obj)
        self.root = root
        self.items = items
        self.stride0 = stride0
        self.fmt = fmt
        self.itemsize = itemsize
        self.ndim = 2 if items and isinstance(items[0], list) else (parent.ndim if parent else 1)
        self.writable = writable
        self.parent = parent
        self.cycle = cycle  # "", "buf" (owner.buf = buf) or "view" (+ owner.view = memoryview)
        self.owner_wref = weakref.ref(owner) if owner is not None else None
        self.released = False
        self.pending = False
        self.dead = False
        self.address = address

    @property
    def offsets(self):
        return flatten(self.items)

    def contents(self):
        mem = self.root.mem
        return b"".join(bytes(mem[o : o + self.itemsize]) for o in self.offsets)

    def expected_count(self):
        return 1 if self.released else 0


class ExportModel:
    def __init__(self, kind, obj, target):
        self.kind = kind
        self.obj = obj
        self.target = target
        self.released = False  # memoryview.release()


class MembufMachine(RuleBasedStateMachine):
    def __init__(self, fakelib):
        super().__init__()
        self.fakelib = fakelib
        self.gc_was_enabled = gc.isenabled()
        gc.disable()
        self.bufs = []
        self.exports = []
        self.keepalive = []  # ctypes memory with no owner

    # -- model helpers -----------------------------------------------------

    def held_bufs(self):
        return [b for b in self.bufs if b.ref is not None]

    def held_exports(self):
        return [e for e in self.exports if e.obj is not None]

    def pick_buf(self, i):
        held = self.held_bufs()
        return held[i % len(held)]

    def can_create(self):
        return len(self.held_bufs()) < MAX_BUFFERS

    def nexports(self, b):
        n = sum(1 for e in self.exports if e.target is b and e.obj is not None and not e.released)
        n += sum(1 for s in self.bufs if s.parent is b and not s.released)
        if b.cycle == "view" and not b.dead:
            n += 1  # the memoryview the owner holds, until the cycle is collected
        return n

    def referenced(self, b):
        """Something outside a garbage cycle holds b."""
        if b.ref is not None:
            return True
        if any(e.target is b and e.obj is not None and not e.released for e in self.exports):
            return True
        return any(s.parent is b and not s.released for s in self.bufs)

    def model_release(self, b):
        b.released = True
        b.pending = False

    def settle(self):
        """Refcount-driven consequences: deallocation of unreferenced Buffers
        (which releases them) and deferred releases whose last export ended."""
        changed = True
        while changed:
            changed = False
            for b in self.bufs:
                if b.dead:
                    continue
                if b.pending and not b.released and self.nexports(b) == 0:
                    REACHED["deferred release completed by the last export's end"] += 1
                    if b.parent is None and any(s.parent is b for s in self.bufs):
                        REACHED["deferred release completed by a slice's end"] += 1
                    self.model_release(b)
                    changed = True
                in_cycle = b.cycle and not b.released
                if not self.referenced(b) and not in_cycle:
                    b.dead = True
                    if not b.released:
                        REACHED["released by deallocation"] += 1
                        self.model_release(b)
                    changed = True

    def add_root(self, obj, root, items, fmt, itemsize, writable, stride0=1, cycle="",
                 owner=None):
        b = BufModel(obj, root, items, fmt, itemsize, writable, stride0, cycle=cycle,
                     owner=owner, address=root.base)
        self.bufs.append(b)
        return b

    # -- creation ------------------------------------------------------------

    @precondition(lambda self: self.can_create())
    @rule(n=st.integers(0, 24), writable=st.booleans())
    def create_fakelib_new(self, n, writable):
        fl = self.fakelib
        obj, block = fl.new(n, fl.WRITABLE if writable else 0)
        root = Root(bytes(i % 251 for i in range(n)), fl.address(block),
                    lambda block=block: fl.releases(block))
        self.add_root(obj, root, list(range(n)), "B", 1, writable)

    @precondition(lambda self: self.can_create())
    @rule(layout=st.sampled_from(LAYOUTS), writable=st.booleans(),
          cycle=st.sampled_from(["", "", "buf", "view"]))
    def create_fakelib_spec(self, layout, writable, cycle):
        fl = self.fakelib
        _name, length, kwargs, fmt, itemsize, items, stride0 = layout
        block = fl.alloc(length)
        owner = Owner()
        obj = fl.from_spec(block, flags=fl.WRITABLE if writable else 0, owner=owner, **kwargs)
        assert obj.owner is owner
        if cycle:
            owner.buf = obj
        if cycle == "view":
            owner.view = memoryview(obj)
        root = Root(bytes(i % 251 for i in range(length)), fl.address(block),
                    lambda block=block: fl.releases(block))
        self.add_root(obj, root, [list(r) if isinstance(r, list) else r for r in items], fmt,
                      itemsize, writable, stride0, cycle=cycle, owner=owner)

    @precondition(lambda self: self.can_create())
    @rule(memory=st.sampled_from(["ctypes", "malloc"]), n=st.integers(0, 24),
          writable=st.booleans(), with_owner=st.booleans(), with_callback=st.booleans(),
          cycle=st.sampled_from(["", "buf", "view"]), seed=st.integers(0, 255))
    def create_from_address(self, memory, n, writable, with_owner, with_callback, cycle, seed):
        data = bytes((seed + 7 * i) % 256 for i in range(n))
        owner = Owner() if with_owner else None
        counter = [0]
        on_release = None
        if memory == "malloc":
            address = LIBC.malloc(max(n, 1))
            assert address
            ctypes.memmove(address, data, n)

            def on_release(address=address, counter=counter):
                counter[0] += 1
                if counter[0] == 1:  # a second call is reported, not a double free
                    LIBC.free(address)

        else:
            cmem = ctypes.create_string_buffer(data, max(n, 1))
            address = ctypes.addressof(cmem)
            if owner is not None:
                owner.memory = cmem  # the owner keeps the memory alive until release
            else:
                self.keepalive.append(cmem)
            if with_callback:

                def on_release(counter=counter):
                    counter[0] += 1

        obj = membuf.from_address(address, n, readonly=not writable, owner=owner,
                                  on_release=on_release)
        del on_release
        if owner is None:
            cycle = ""
        if cycle:
            owner.buf = obj
        if cycle == "view":
            owner.view = memoryview(obj)
        count = (lambda counter=counter: counter[0]) if memory == "malloc" or with_callback else None
        root = Root(data, address, count)
        self.add_root(obj, root, list(range(n)), "B", 1, writable, cycle=cycle, owner=owner)

    # -- slices ----------------------------------------------------------------

    @precondition(lambda self: self.held_bufs() and self.can_create())
    @rule(i=st.integers(0, 255), start=st.none() | st.integers(-30, 30),
          stop=st.none() | st.integers(-30, 30), step=st.sampled_from([None, 1, 2, 3, -1, -2]))
    def slice_buffer(self, i, start, stop, step):
        b = self.pick_buf(i)
        key = slice(start, stop, step)
        if b.released or b.pending:
            assert raises(ValueError, lambda: b.ref[key])
            REACHED["slicing refused"] += 1
            return
        s = b.ref[key]
        REACHED["slice of a slice" if b.parent else "slice"] += 1
        assert isinstance(s, membuf.Buffer)
        items = b.items[key]
        flat = flatten(items)
        address = b.root.base + flat[0] if flat else b.address
        stride0 = b.stride0 * (step or 1)
        if b.fmt == "B" and b.ndim == 1 and len(items) <= 1:
            stride0 = 1  # such a slice is plain bytes, answered like bytes
        sm = BufModel(s, b.root, items, b.fmt, b.itemsize, b.writable, stride0, parent=b,
                      address=address)
        assert s.owner is b.ref
        assert s.readonly is (not b.writable)
        self.bufs.append(sm)

    # -- exports ---------------------------------------------------------------

    @precondition(lambda self: self.held_bufs() and len(self.held_exports()) < MAX_EXPORTS)
    @rule(i=st.integers(0, 255), kind=st.sampled_from(["memoryview", "numpy", "ndarray"]))
    def export(self, i, kind):
        b = self.pick_buf(i)
        make = {
            "memoryview": memoryview,
            "numpy": lambda o: np.frombuffer(o, dtype=np.uint8),
            "ndarray": lambda o: _testbuffer.ndarray(o, getbuf=PyBUF_FULL_RO),
        }[kind]
        if b.released or b.pending:
            assert raises(ValueError, make, b.ref)
            REACHED[f"{kind} refused after release"] += 1
            return
        if kind == "numpy" and not memoryview_c_contiguous(b):
            # frombuffer asks the memoryview it makes for C-contiguous bytes
            assert raises(BufferError, make, b.ref)
            REACHED["numpy refused a non-contiguous layout"] += 1
            return
        obj = make(b.ref)
        REACHED[f"{kind} export"] += 1
        self.exports.append(ExportModel(kind, obj, b))

    @precondition(lambda self: self.held_bufs() and len(self.held_exports()) < MAX_EXPORTS)
    @rule(i=st.integers(0, 255))
    def export_memoryview(self, i):
        """memoryview, the commonest export, gets a rule of its own too."""
        self.export(i, "memoryview")

    @precondition(lambda self: any(e.kind == "memoryview" for e in self.held_exports()))
    @rule(i=st.integers(0, 255))
    def release_view(self, i):
        views = [e for e in self.held_exports() if e.kind == "memoryview"]
        e = views[i % len(views)]
        e.obj.release()
        e.released = True
        self.settle()

    @precondition(lambda self: self.held_exports())
    @rule(i=st.integers(0, 255))
    def drop_view(self, i):
        held = self.held_exports()
        e = held[i % len(held)]
        e.obj = None
        self.settle()

    # -- release -----------------------------------------------------------------

    @precondition(lambda self: self.held_bufs())
    @rule(i=st.integers(0, 255), how=st.sampled_from(["method", "capi", "with"]))
    def strict_release(self, i, how):
        b = self.pick_buf(i)
        obj = b.ref
        if how == "method":
            call = obj.release
        elif how == "capi":
            call = lambda: self.fakelib.release(obj, 0)  # noqa: E731
        else:

            def call():
                with obj:
                    pass

        if how == "with" and (b.released or b.pending):
            assert raises(ValueError, call)  # __enter__ refuses
        elif b.released:
            call()  # a no-op
        elif self.nexports(b) > 0:
            assert raises(BufferError, call)  # and changes nothing
            REACHED[f"strict release ({how}) refused"] += 1
        else:
            call()
            REACHED[f"strict release ({how})"] += 1
            self.model_release(b)
        del call, obj
        self.settle()

    @precondition(lambda self: self.held_bufs())
    @rule(i=st.integers(0, 255), how=st.sampled_from(["method", "capi"]))
    def deferred_release(self, i, how):
        b = self.pick_buf(i)
        if how == "method":
            b.ref.release(defer=True)
        else:
            self.fakelib.release(b.ref, self.fakelib.DEFER)
        if not b.released:
            if self.nexports(b) > 0:
                REACHED["deferred release pending"] += 1
                b.pending = True
            else:
                REACHED["deferred release at once"] += 1
                self.model_release(b)
        self.settle()

    @precondition(lambda self: self.held_bufs())
    @rule(i=st.integers(0, 255))
    def drop_buffer(self, i):
        b = self.pick_buf(i)
        b.ref = None
        self.settle()

    @rule()
    def collect(self):
        gc.collect()
        for b in self.bufs:
            if not b.dead and b.cycle and not b.released and not self.referenced(b):
                b.dead = True  # cyclic garbage: finalized, released once, freed
                REACHED[f"cycle through the owner ({b.cycle}) collected"] += 1
                self.model_release(b)
        self.settle()

    # -- reading and writing -------------------------------------------------------

    def multi_index(self, b, k):
        if b.ndim == 2:
            width = len(b.items[0])
            return (k // width, k % width)
        return k

    @precondition(lambda self: self.held_bufs())
    @rule(i=st.integers(0, 255), k=st.integers(-30, 30))
    def read_item(self, i, k):
        b = self.pick_buf(i)
        n = len(b.offsets)
        key = self.multi_index(b, k % n) if (b.ndim == 2 and n) else k
        if b.released or b.pending:
            assert raises(ValueError, lambda: b.ref[key])
            return
        if b.ndim == 1 and not -n <= k < n:
            assert raises(IndexError, lambda: b.ref[key])
            return
        if n == 0:
            return  # 2-D with no rows: nothing to index
        got = b.ref[key]
        offset = b.offsets[k % n]
        (expected,) = struct.unpack(b.fmt, bytes(b.root.mem[offset : offset + b.itemsize]))
        assert same_value(got, expected), (got, expected)

    @precondition(lambda self: self.held_bufs() or self.held_exports())
    @rule(i=st.integers(0, 255), k=st.integers(0, 255), value=st.integers(0, 127),
          through=st.sampled_from(["buffer", "buffer", "memoryview"]))
    def write_item(self, i, k, value, through):
        if through == "memoryview":
            views = [e for e in self.held_exports() if e.kind == "memoryview"]
            if not views:
                return
            writable = [e for e in views if e.target.writable]
            e = (writable or views)[i % len(writable or views)]
            b, target = e.target, e.obj
            refuses = e.released  # a pending Buffer's views still see live memory
        else:
            if not self.held_bufs():
                return
            b = self.pick_buf(i)
            target = b.ref
            refuses = b.released or b.pending
        n = len(b.offsets)
        if n == 0:
            return
        key = self.multi_index(b, k % n)
        item = value + 0.5 if b.fmt == "d" else value
        if refuses:
            assert raises(ValueError, target.__setitem__, key, item)
            return
        if not b.writable:
            assert raises(TypeError, target.__setitem__, key, item)  # read-only memory
            return
        target[key] = item
        REACHED[f"write through the {through}" + (" of a pending Buffer" if b.pending else "")] += 1
        offset = b.offsets[k % n]
        b.root.mem[offset : offset + b.itemsize] = struct.pack(b.fmt, item)

    # -- the checks, after every step ----------------------------------------------

    @invariant()
    def matches_model(self):
        REACHED["steps"] += 1
        for b in self.bufs:
            obj = b.wref()
            assert (obj is None) == b.dead, ("alive" if obj is not None else "dead", vars(b))
            if b.root.count is not None and b.parent is None:
                assert b.root.count() == b.expected_count(), (b.root.count(), vars(b))
            if b.owner_wref is not None:
                assert (b.owner_wref() is None) == b.released, vars(b)
            if obj is None:
                continue
            assert obj.released is b.released
            assert obj.exports == self.nexports(b), (obj.exports, self.nexports(b), vars(b))
            assert obj.address == b.address
            assert obj.c_contiguous is c_contiguous(b.offsets, b.itemsize)
            assert obj.strides[0] == b.stride0
            if b.released:
                assert obj.owner is None
            elif b.parent is not None:
                assert obj.owner is b.parent.wref()
            if b.released or b.pending:
                assert raises(ValueError, memoryview, obj)  # no export after release
            else:
                assert obj.tobytes() == b.contents()
            del obj
        for e in self.held_exports():
            if e.released:
                continue
            assert not e.target.released  # a live view pins the memory
            assert e.obj.tobytes() == e.target.contents()

    def teardown(self):
        try:
            for e in self.exports:
                e.obj = None
            for b in self.bufs:
                b.ref = None
            gc.collect()
            # What survives is Hypothesis's own state: keep later collections
            # from scanning it again (see test_state_machine).
            gc.freeze()
            for b in self.bufs:
                assert b.wref() is None, vars(b)
                if b.root.count is not None and b.parent is None:
                    assert b.root.count() == 1, vars(b)  # exactly once, in the end
        finally:
            self.keepalive.clear()
            if self.gc_was_enabled:
                gc.enable()


def test_state_machine(fakelib, tmp_path_factory):
    # database=None keeps no examples; this keeps Hypothesis's other caches
    # (e.g. the constants it collects from the source) out of the work tree.
    from hypothesis.configuration import set_hypothesis_home_dir, storage_directory

    home = storage_directory(intent_to_write=False).home_directory
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    try:
        run_machine(fakelib)
    finally:
        set_hypothesis_home_dir(home)


def run_machine(fakelib):
    chosen = hypothesis_profile("membuf", ci_examples=2000, long_examples=100_000,
                                stateful_step_count=30,
                                long_extra=dict(stateful_step_count=50))
    # Everything that exists before the test (pytest, NumPy, Hypothesis) goes
    # to the GC's permanent generation, so that each gc.collect() scans only
    # what the test made: the same collection of our cycles, 50x cheaper.
    gc.collect()
    gc.freeze()
    REACHED.clear()
    try:
        run_state_machine_as_test(lambda: MembufMachine(fakelib), settings=chosen)
    finally:
        gc.unfreeze()
    print("\nreached:", dict(sorted(REACHED.items())))
    if chosen.max_examples >= 2000:  # the profiles (fewer: a quick local try)
        missing = [path for path in MUST_REACH if REACHED[path] == 0]
        assert missing == [], f"the sequences never reached {missing}"


MUST_REACH = [
    "slice", "slice of a slice", "slicing refused",
    "memoryview export", "numpy export", "ndarray export",
    "memoryview refused after release", "numpy refused after release",
    "ndarray refused after release", "numpy refused a non-contiguous layout",
    "strict release (method)", "strict release (capi)", "strict release (with)",
    "strict release (method) refused", "strict release (capi) refused",
    "strict release (with) refused",
    "deferred release pending", "deferred release at once",
    "deferred release completed by the last export's end",
    "deferred release completed by a slice's end",
    "released by deallocation",
    "cycle through the owner (buf) collected", "cycle through the owner (view) collected",
    "write through the buffer", "write through the memoryview",
    "write through the memoryview of a pending Buffer",
]
