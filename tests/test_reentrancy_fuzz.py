"""Re-entrancy fuzzer: random operations on a small graph of Buffers, where
the callbacks that run in the middle of those operations perform random
operations on the same graph.

What is fuzzed.  Hypothesis draws a sequence of up to MAX_STEPS operations:

* create   -- membuf.from_address over ctypes.create_string_buffer memory,
              with a Python on_release, sometimes readonly=False, sometimes an
              owner whose __del__ runs callbacks (``owner=Owner()``), that
              owner sometimes in a reference cycle with the Buffer
              (``owner.buf = buf``), sometimes also holding a memoryview of it
              (collected only by the garbage collector), and sometimes an
              on_release that raises (CallbackError) on purpose;
* slice    -- ``buf[i:j:k]`` of any live Buffer, slices of slices included,
              often with a weakref callback or a weakref.finalize attached;
* export   -- a memoryview, held in a list;
* drop     -- a held memoryview, by ``view.release()`` or by ``del``;
* read     -- ``tobytes()``, ``len()``, indexing, ``hex()``, ``==``;
* release  -- strict (``buf.release()``, ``with buf: pass``) and deferred
              (``buf.release(defer=True)``), of any live Buffer, also of one
              the test no longer holds (reached through a weak reference);
* del      -- of the test's last reference to a Buffer;
* forget   -- ``buf.release(defer=True)`` then ``del``;
* defer chain -- deferred release of a Buffer and of all its ancestors, and
              maybe ``del`` of them (``header = base[:4]; body = header[1:]``
              and only body is kept);
* attach   -- ``weakref.ref(buf, callback)`` or ``weakref.finalize(buf, ...)``;
* gc       -- ``gc.collect()``.

The twist: every callback -- on_release, the owner's ``__del__``, weakref
callbacks and weakref.finalize -- draws 0-2 further operations (release,
deferred release, drop, del, forget, read, gc, and outside teardown also
create, slice, export) and performs them on the same graph, preferring the
Buffer's parent and ancestors.  A depth counter (MAX_DEPTH) bounds the
nesting, and MAX_NODES the number of Buffers.  Automatic garbage collection is off while a sequence
runs, so every run of a sequence is the same (and Hypothesis can shrink it).

Invariants, checked inside the operations, inside the callbacks and after
EVERY step (and after the teardown, which drops every view and reference and
collects):

1. each on_release runs at most once, ever, and exactly once for every Buffer
   once everything is dropped and collected; when it runs, its Buffer is
   already marked released, and no view or unreleased slice of that memory
   is alive; its owner is alive exactly until then (and ``__del__`` runs
   once, after the callback, unless a garbage cycle finalizes it first);
2. no use after release: a released Buffer, or one whose deferred release is
   pending, refuses ``memoryview()``, slicing and reads with ValueError (and
   equals no bytes); a live view,
   and a live unreleased Buffer, implies that its memory's on_release has not
   run, and that every ancestor is alive and unreleased; the bytes read
   through every live view and Buffer are the bytes written at creation
   (on_release poisons the memory with 0xDD before "freeing" it, so a read
   after release shows up as a content mismatch instead of a crash);
3. ``exports`` is exactly the number of live views plus live unreleased
   slices (plus the owner's hidden view), hence >= 0, 0 once released and 0
   after everything is dropped; a pending release completes when it reaches 0;
4. a strict release succeeds (exports == 0), or raises BufferError (exports >
   0) and then changes nothing; a deferred release never raises (but the
   Buffer's own raising on_release, when it releases at once); a CallbackError
   from an on_release surfaces exactly once, either from the explicit
   release() of that very Buffer or through sys.unraisablehook; any other
   unraisable exception is a failure;
5. liveness: a Buffer nothing references (no reference, view, slice or cycle)
   is gone, and after gc.collect() also those in cycles.

Profiles (the environment variable MEMBUF_HYPOTHESIS_PROFILE, as for
tests/test_state_machine.py):

* ``ci`` (default): 400 sequences of up to 30 steps, derandomized (the same
  sequences every run), no example database; about 7 s on a 2-core machine
  (3-5x that under AddressSanitizer).  It also asserts that every
  interesting path (MUST_REACH) was taken.
* ``long``: 50 000 sequences, random seeds (in runs of BATCH), about 13 minutes::

      MEMBUF_HYPOTHESIS_PROFILE=long python -m pytest tests/test_reentrancy_fuzz.py -x -q

  MEMBUF_HYPOTHESIS_EXAMPLES=N overrides the number of sequences of either
  profile.

A crash (SIGSEGV) cannot be shrunk by Hypothesis.  To see the sequence that
crashed, set MEMBUF_FUZZ_TRACE=/some/file: every operation is then written
and flushed to that file as it starts (the file is truncated at the start of
each sequence), so after a crash it holds the crashing sequence, ready to be
turned into a script.

Found: release_now() released a parent twice when dropping the slice before
it ran a weakref callback or weakref.finalize that released that parent
(SIGSEGV; fixed in 3163ba7, regression tests in test_regressions.py).  On
the code before the fix, when this was written, the ci profile crashed at
its 68th sequence (under 2 s), and 20 runs with random seeds all crashed,
within 3-147 sequences.  MUST_REACH includes that state (WINDOW).
"""

import collections
import ctypes
import gc
import os
import sys
import traceback
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st

import membuf
from conftest import hypothesis_profile

MAX_STEPS = 30  # top-level operations per sequence
MAX_NODES = 10  # Buffers created per sequence (roots and slices, callbacks' included)
MAX_VIEWS = 8  # held memoryviews at once
MAX_DEPTH = 3  # nesting of callbacks that still perform operations
# Sequences per Hypothesis run in the long profile: Hypothesis keeps some 60 kB
# of bookkeeping per sequence until the run ends.
BATCH = 2000
POISON = 0xDD

# What the sequences reached, over the whole test: the test asserts that every
# interesting path was taken, so the generator cannot quietly degenerate.
REACHED = collections.Counter()
# ctypes memory whose Buffers did not all go away (a failed sequence): never
# freed, so that a view left behind cannot read freed memory.
LEAKED_MEMORY = []

# Weighted operation menus (sampled_from shrinks towards the front).  The
# weights favour chains of slices whose parents wait on deferred releases and
# whose references are dropped, with callbacks that release a parent: with
# uniform weights, sequences reached that state ten times less often.
TOP_OPS = (["create"] * 2 + ["slice"] * 11 + ["defer"] * 2 + ["forget"] * 2
           + ["defer_chain"] * 3 + ["del"] * 2 + ["strict"] * 2 + ["export"] * 2 + ["drop"] * 2
           + ["attach", "read", "gc"])
CALLBACK_OPS = (["defer"] * 6 + ["strict"] * 4 + ["del"] * 2 + ["drop"] * 2 + ["forget", "slice",
                "create", "export", "read", "gc"])
CREATING_OPS = {"create", "slice", "export", "attach"}  # not during teardown
WINDOW = "callback releases the parent a release walk is about to release"


class CallbackError(Exception):
    """Raised on purpose by an on_release created with raises=True."""

    def __init__(self, nid):
        super().__init__(f"on_release of #{nid} raises on purpose")
        self.nid = nid


class Violation(AssertionError):
    """A broken invariant.  Each check() call site raises its own subclass,
    so that Hypothesis tells the failures apart and shrinks each one to
    itself instead of sliding from one to another."""


_VIOLATION_CLASSES = {}


def violation_class(lineno):
    cls = _VIOLATION_CLASSES.get(lineno)
    if cls is None:
        cls = _VIOLATION_CLASSES[lineno] = type(f"Violation_line{lineno}", (Violation,), {})
    return cls


def check(condition, message):
    if not condition:
        raise violation_class(sys._getframe(1).f_lineno)(message)


class Node:
    """The model of one Buffer.  Holds no reference to it (only a weak one):
    the fuzzer's strong references live in Fuzz.held."""

    def __init__(self, nid, buf, parent, offsets, root=None):
        self.nid = nid
        self.wref = weakref.ref(buf)
        self.parent = parent
        self.root = root if root is not None else self
        self.offsets = offsets  # offsets of the items into the root's memory
        self.defer_called = False
        # roots only
        self.count = 0  # on_release calls
        self.data = b""
        self.cmem = None
        self.raises = False
        self.owner_kind = "none"
        self.owner_wref = None
        self.owner_dels = 0

    @property
    def is_root(self):
        return self.parent is None

    def expected(self):
        data = self.root.data
        return bytes(data[o] for o in self.offsets)

    def ancestors(self):
        node, out = self.parent, []
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def __repr__(self):
        kind = "root" if self.is_root else f"slice of #{self.parent.nid}"
        return f"#{self.nid}({kind})"


class Owner:
    """An owner whose __del__ runs a callback with random operations."""

    def __init__(self, fuzz, root):
        self.fuzz = fuzz
        self.root = root

    def __del__(self):
        fuzz, root = self.fuzz, self.root
        root.owner_dels += 1
        if fuzz.abandoned:
            return
        try:
            check(root.owner_dels == 1, f"owner of {root} finalized twice")
            if root.owner_kind in ("del", "none"):
                # Not in a garbage cycle: the owner goes only when the Buffer
                # drops it, right after on_release.
                check(root.count == 1, f"owner of {root} dropped while on_release ran "
                      f"{root.count} times")
        except Violation as exc:
            fuzz.violations.append((type(exc), f"in owner __del__: {exc}"))
        fire(fuzz, "owner __del__", root)


def fire(fuzz, kind, node):
    """A callback fires: perform 0-2 random operations on the graph."""
    REACHED[f"{kind} fired"] += 1
    if not fuzz.active:
        return
    fuzz.depth += 1
    try:
        if fuzz.depth > MAX_DEPTH:
            REACHED["callback depth limit"] += 1
            return
        if fuzz.depth >= 2:
            REACHED["nested callback performs operations"] += 1
        count = fuzz.draw(st.sampled_from([0, 1, 1, 2, 2]), f"{kind} of #{node.nid}: operations")
        for _ in range(count):
            op = fuzz.draw(st.sampled_from(CALLBACK_OPS), f"{kind} of #{node.nid}: operation")
            fuzz.perform(op, context=node, where=kind)
    except BaseException as exc:  # noqa: BLE001 - reported by the step that triggered it
        fuzz.callback_exception(kind, node, exc)
    finally:
        fuzz.depth -= 1


class Fuzz:
    def __init__(self, draw, trace=None):
        self._draw = draw
        self.trace_file = trace
        self.nodes = []
        self.held = {}  # nid -> Buffer: the fuzzer's own references
        self.views = []  # [node, memoryview, expected bytes]
        self.finalizers = []
        self.weakrefs = []  # weakref.ref objects with a callback (kept alive)
        self.weakref_fired = []
        self.violations = []
        self.propagated = []  # nids of CallbackErrors raised by an explicit release()
        self.unraisable_callback = []  # nids of CallbackErrors reported as unraisable
        self.unraisable_other = []
        self.log = []
        self.depth = 0
        self.active = True  # callbacks perform operations
        self.closing = False  # teardown: callbacks create nothing
        self.base_exception = None  # Hypothesis control flow raised inside a callback
        self.abandoned = False  # the sequence is over

    # -- plumbing --------------------------------------------------------------

    def draw(self, strategy, label):
        return self._draw(strategy, label)

    def note(self, text):
        line = "  " * self.depth + text
        self.log.append(line)
        if self.trace_file is not None and not self.abandoned:
            self.trace_file.write(line + "\n")
            self.trace_file.flush()

    def unraisablehook(self, args):
        if args.exc_type is CallbackError:
            self.unraisable_callback.append(args.exc_value.nid)
            REACHED["CallbackError unraisable"] += 1
        else:
            self.unraisable_other.append(
                f"{args.exc_type.__name__}: {args.exc_value} ({args.err_msg}, {args.object!r})")

    def callback_exception(self, kind, node, exc):
        if isinstance(exc, Exception):
            text = "".join(traceback.format_exception(exc)).rstrip()
            cls = type(exc) if isinstance(exc, Violation) else violation_class(0)
            self.violations.append((cls, f"in {kind} of {node}: {text}"))
        elif self.base_exception is None:
            # Hypothesis ends a test case with a BaseException (StopTest): it
            # must not vanish into sys.unraisablehook. Re-raised after the step.
            self.base_exception = exc
            self.active = False

    def after_callbacks(self):
        if self.base_exception is not None:
            exc, self.base_exception = self.base_exception, None
            raise exc
        if self.violations:
            raise self.violations[0][0]("\n".join(v[1] for v in self.violations)
                                        + self.trail())

    def trail(self):
        return "\n-- operations (most recent last):\n" + "\n".join(self.log[-80:])

    def alive(self):
        return [n for n in self.nodes if n.wref() is not None]

    def pick(self, candidates, label, prefer_first=False):
        if not candidates:
            return None
        index = st.integers(0, len(candidates) - 1)
        if prefer_first:  # half of the time the first: a callback's parent
            index = st.just(0) | index
        return candidates[self.draw(index, label)]

    def candidates(self, context):
        """Nodes in the order a callback prefers them: the ancestors of its
        own Buffer (parent first), the Buffer itself, then the most recent."""
        order = []
        if context is not None:
            order = context.ancestors() + [context]
        order += [n for n in reversed(self.nodes) if n not in order]
        return order

    def pick_alive(self, context, label):
        return self.pick([n for n in self.candidates(context) if n.wref() is not None], label,
                         prefer_first=context is not None)

    def can_create(self):
        return not self.closing and len(self.nodes) < MAX_NODES

    # -- operations ----------------------------------------------------------------

    def perform(self, op, context=None, where="step"):
        if op in CREATING_OPS and self.closing:
            return
        REACHED[f"{op} ({'callback' if context is not None else 'step'})"] += 1
        getattr(self, "op_" + op)(context, where)

    def new_node(self, buf, parent, offsets, root=None):
        node = Node(len(self.nodes), buf, parent, offsets, root)
        self.nodes.append(node)
        return node

    def op_create(self, context, where):
        if not self.can_create():
            return
        size = self.draw(st.integers(0, 12), "create: size")
        readonly = self.draw(st.booleans(), "create: readonly")
        owner_kind = self.draw(st.sampled_from(["none", "del", "del", "cycle", "cycle-view"]),
                               "create: owner")
        raises = self.draw(st.sampled_from([False, False, False, True]), "create: raises")
        nid = len(self.nodes)
        data = bytes(b if b != POISON else POISON - 1
                     for b in ((nid * 31 + 7 * i + 1) % 256 for i in range(size)))
        cmem = ctypes.create_string_buffer(data, max(size, 1))
        address = ctypes.addressof(cmem)
        box = []  # the node, once it exists (on_release refers to it)
        owner = None
        on_release = make_on_release(self, box, address, max(size, 1))
        if owner_kind != "none":
            owner = Owner(self, None)
        buf = membuf.from_address(address, size, readonly=readonly, owner=owner,
                                  on_release=on_release)
        del on_release
        node = self.new_node(buf, None, list(range(size)))
        box.append(node)
        node.data, node.cmem, node.raises, node.owner_kind = data, cmem, raises, owner_kind
        self.note(f"{where}: create {node} size={size} readonly={readonly} owner={owner_kind}"
                  f" raises={raises}")
        if owner is not None:
            owner.root = node
            node.owner_wref = weakref.ref(owner)
            if owner_kind in ("cycle", "cycle-view"):
                owner.buf = buf
            if owner_kind == "cycle-view":
                owner.view = memoryview(buf)
            del owner
        self.held[node.nid] = buf
        check(buf.address == address and buf.nbytes == size and buf.readonly == readonly,
              f"{node}: wrong address, size or readonly")
        check(not buf.released and buf.exports == (owner_kind == "cycle-view"),
              f"{node}: a new Buffer is released or has exports ({buf.exports})")
        check(buf.tobytes() == data, f"{node}: a new Buffer reads {buf.tobytes()!r}")

    def op_slice(self, context, where):
        node = self.pick_alive(context, "slice: of which Buffer")
        if node is None or not self.can_create():
            return
        n = len(node.offsets)
        bound = st.none() | st.integers(-n - 2, n + 2)
        start = self.draw(bound, "slice: start")
        stop = self.draw(bound, "slice: stop")
        step = self.draw(st.sampled_from([None, 1, 2, -1, 3]), "slice: step")
        hook = self.draw(st.sampled_from(["none", "finalize", "weakref", "finalize"]),
                         "slice: callback on the new slice")
        key = slice(start, stop, step)
        buf = node.wref()
        refuse = buf.released or node.defer_called
        exports = buf.exports
        self.note(f"{where}: slice {node}[{start}:{stop}:{step}] (refused: {refuse})")
        try:
            part = buf[key]
        except ValueError:
            check(refuse, f"slicing {node} raised ValueError although it is neither released"
                  " nor pending")
            REACHED["slicing refused"] += 1
            return
        check(not refuse, f"slicing {node} worked although it is released or pending")
        check(buf.exports == exports + 1, f"slicing {node}: exports {exports} -> {buf.exports}")
        del buf
        child = self.new_node(part, node, node.offsets[key], node.root)
        self.held[child.nid] = part
        check(part.tobytes() == child.expected(), f"{child} reads {part.tobytes()!r}")
        self.note(f"   -> {child}")
        if not node.is_root:
            REACHED["slice of a slice"] += 1
        if hook != "none":
            self.attach(child, part, hook, where)

    def op_export(self, context, where):
        node = self.pick_alive(context, "export: of which Buffer")
        if node is None or len(self.views) >= MAX_VIEWS:
            return
        buf = node.wref()
        refuse = buf.released or node.defer_called
        exports = buf.exports
        self.note(f"{where}: export {node} (refused: {refuse})")
        try:
            view = memoryview(buf)
        except ValueError:
            check(refuse, f"memoryview({node}) raised ValueError although it is neither"
                  " released nor pending")
            REACHED["export refused"] += 1
            return
        check(not refuse, f"memoryview({node}) worked although it is released or pending")
        check(buf.exports == exports + 1, f"export of {node}: exports {exports} -> {buf.exports}")
        del buf
        expected = node.expected()
        check(view.tobytes() == expected, f"a new view of {node} reads {view.tobytes()!r}")
        self.views.append([node, view, expected])

    def op_read(self, context, where):
        """An operation that reads the memory: refused (ValueError) by a
        released or release-pending Buffer, the model's bytes otherwise."""
        node = self.pick_alive(context, "read: which Buffer")
        if node is None:
            return
        how = self.draw(st.sampled_from(["tobytes", "len", "item", "hex", "=="]), "read: how")
        buf = node.wref()
        refuse = buf.released or node.defer_called
        expected = node.expected()
        self.note(f"{where}: read {node} by {how} (refused: {refuse})")
        if how == "==":  # never raises: a released Buffer equals only itself
            equal = buf == expected
            check(equal == (not refuse), f"({node} == its bytes) is {equal}")
            return
        try:
            if how == "tobytes":
                got, want = buf.tobytes(), expected
            elif how == "len":
                got, want = len(buf), len(expected)
            elif how == "hex":
                got, want = buf.hex(), expected.hex()
            elif expected:
                got, want = buf[-1], expected[-1]
            else:  # nothing to index
                got, want = len(buf), 0
        except ValueError:
            check(refuse, f"{how} of {node} raised ValueError although it is neither released"
                  " nor pending")
            REACHED["read refused"] += 1
            return
        check(not refuse, f"{how} of {node} worked although it is released or pending")
        check(got == want, f"{how} of {node} gave {got!r}, expected {want!r}")

    def op_drop(self, context, where):
        if not self.views:
            return
        i = self.draw(st.integers(0, len(self.views) - 1), "drop: which view")
        how = self.draw(st.sampled_from(["release", "del"]), "drop: how")
        node, view, _expected = self.views.pop(i)
        buf = node.wref()
        check(buf is not None, f"{node} is gone under a live view")
        exports, released = buf.exports, buf.released
        pending = node.defer_called and not released
        del buf  # the view's reference may be the last one
        self.note(f"{where}: drop a view of {node} by {how} (exports {exports},"
                  f" pending {pending})")
        check(not released, f"{node} is released under a live view")
        if how == "release":
            view.release()
        del view
        buf = node.wref()
        if pending and exports == 1:
            REACHED["deferred release completed by the last view"] += 1
            check(buf is None or buf.released,
                  f"{node}: the last view ended but the deferred release did not happen")
        elif buf is not None:
            check(buf.exports == exports - 1,
                  f"dropping a view of {node}: exports {exports} -> {buf.exports}")

    def op_strict(self, context, where):
        self.release(context, where, defer=False)

    def op_defer(self, context, where):
        self.release(context, where, defer=True)

    def op_forget(self, context, where):
        """release(defer=True), then del: "give it back when the views are
        done, I am done with it"."""
        held = [n for n in self.candidates(context) if n.nid in self.held]
        node = self.pick(held, "forget: which Buffer")
        if node is None:
            return
        self.release(context, where, defer=True, node=node)
        if node.nid in self.held:  # (a callback may have dropped it already)
            self.drop_reference(node, where)

    def op_defer_chain(self, context, where):
        """release(defer=True) of a Buffer and of each of its ancestors, and
        maybe del of the references to them: what code does that builds
        ``header = base[:4]; body = header[1:]``, hands out body, and has no
        more use for base and header."""
        node = self.pick_alive(context, "defer chain: from which Buffer")
        forget = self.draw(st.booleans(), "defer chain: and del")
        while node is not None:
            if node.wref() is not None:
                self.release(context, where, defer=True, node=node)
            if forget and node.nid in self.held:
                self.drop_reference(node, where)
            node = node.parent

    def release(self, context, where, defer, node=None):
        if node is None:
            node = self.pick_alive(context, "release: which Buffer")
        if node is None:
            return
        how = "defer" if defer else self.draw(st.sampled_from(["method", "with"]),
                                              "release: how")
        buf = node.wref()
        released, exports = buf.released, buf.exports
        pending = node.defer_called and not released
        count = node.root.count
        waiting = [a for a in node.ancestors() if a.defer_called and not self.is_released(a)]
        relation = ""
        if context is not None:
            if node in context.ancestors():
                relation = " (an ancestor of the callback's Buffer)"
                REACHED[f"{where} releases an ancestor"] += 1
                REACHED[f"{where} releases an ancestor ({how})"] += 1
                if pending and exports == 0:
                    # Only inside the walk that releases a chain of deferred
                    # parents (release_now), between the end of the last
                    # export and the parent's own release: the walk must
                    # notice that the parent is released under it.
                    REACHED[WINDOW] += 1
            elif node is context:
                relation = " (the callback's own Buffer)"
                REACHED[f"{where} releases its own Buffer"] += 1
        self.note(f"{where}: release {node} {how}{relation} (released {released},"
                  f" exports {exports}, pending {pending})")
        if defer and not released:
            node.defer_called = True
        try:
            if how == "with":
                try:
                    with buf:
                        pass
                except ValueError:
                    check(released or pending, f"`with {node}` refused although it is neither"
                          " released nor pending")
                    REACHED["with refused"] += 1
                    return
                check(not (released or pending), f"`with {node}` entered although released or"
                      " pending")
            elif defer:
                buf.release(defer=True)
            else:
                buf.release()
        except BufferError as exc:
            check(not defer, f"release(defer=True) of {node} raised {exc!r}")
            check(not released and exports > 0,
                  f"strict release of {node} raised BufferError with exports={exports},"
                  f" released={released}: {exc}")
            check(not buf.released and buf.exports == exports and node.root.count == count,
                  f"a refused strict release of {node} changed something: released"
                  f" {buf.released}, exports {exports} -> {buf.exports}, on_release ran"
                  f" {node.root.count - count} times")
            REACHED["strict release refused"] += 1
            return
        except CallbackError as exc:
            check(exc.nid == node.nid and not released and exports == 0,
                  f"release of {node} raised {exc!r}: only the Buffer's own on_release may"
                  " raise out of its release")
            self.propagated.append(exc.nid)
            REACHED["CallbackError propagated"] += 1
        if defer and not released and exports > 0:
            check(not buf.released and buf.exports == exports,
                  f"release(defer=True) of {node} with {exports} exports: released"
                  f" {buf.released}, exports {buf.exports}")
            REACHED["deferred release pending"] += 1
        else:
            check(released or exports == 0, f"strict release of {node} with {exports} exports"
                  " did not raise")
            check(buf.released, f"{node} is not released after release()")
            if node.is_root:
                check(node.root.count == 1, f"{node} released, on_release ran"
                      f" {node.root.count} times")
        del buf
        for a in waiting:
            if self.is_released(a):
                REACHED["a release completed a chain of deferred parents"] += 1

    def is_released(self, node):
        buf = node.wref()
        return buf is None or buf.released

    def op_del(self, context, where):
        held = [n for n in self.candidates(context) if n.nid in self.held]
        node = self.pick(held, "del: which reference")
        if node is None:
            return
        self.drop_reference(node, where)

    def drop_reference(self, node, where):
        self.note(f"{where}: del {node}")
        self.held.pop(node.nid)  # the result is dropped at once: maybe the last reference

    def op_attach(self, context, where):
        node = self.pick_alive(context, "attach: to which Buffer")
        if node is None:
            return
        kind = self.draw(st.sampled_from(["finalize", "weakref"]), "attach: kind")
        buf = node.wref()
        self.attach(node, buf, kind, where)

    def attach(self, node, buf, kind, where):
        self.note(f"{where}: attach {kind} to {node}")
        if kind == "finalize":
            fin = weakref.finalize(buf, fire, self, "finalize", node)
            fin.atexit = False
            self.finalizers.append(fin)
        else:
            fired = self.weakref_fired

            def callback(_ref, fuzz=self, node=node):
                fired.append(node.nid)
                fire(fuzz, "weakref callback", node)

            self.weakrefs.append(weakref.ref(buf, callback))

    def op_gc(self, context, where):
        # Cyclic garbage now (alive, yet nothing but a cycle references it)
        # must be gone after the collection; callbacks cannot resurrect it
        # (the weak references to garbage are cleared before they run).
        # Only at the top level: in a callback, the model cannot see every
        # reference (a Buffer being deallocated still holds its parent), and
        # gc.collect() inside a collection does nothing.
        garbage = [] if context is not None else [
            n for n in self.alive() if not self.referenced(n)]
        self.note(f"{where}: gc.collect() (garbage: {garbage})")
        gc.collect()
        if garbage:
            REACHED["gc collected a cycle"] += 1
        for node in garbage:
            check(node.wref() is None, f"{node} survived gc.collect() in a garbage cycle")

    # -- the model's checks ------------------------------------------------------

    def expected_exports(self, node):
        n = sum(1 for v in self.views if v[0] is node)
        for child in self.nodes:
            if child.parent is node and not self.is_released(child):
                n += 1
        if node.is_root and node.owner_kind == "cycle-view" and node.owner_wref() is not None:
            n += 1  # the owner's memoryview
        return n

    def referenced(self, node):
        if node.nid in self.held or any(v[0] is node for v in self.views):
            return True
        return any(c.parent is node and not self.is_released(c) for c in self.nodes)

    def check_all(self):
        for node in self.nodes:
            root = node.root
            check(root.count <= 1, f"on_release of {root} ran {root.count} times")
            buf = node.wref()
            if buf is None:
                check(node.nid not in self.held, f"{node} is gone while the test holds it")
                if node.is_root:
                    check(node.count == 1, f"{node} is gone but on_release ran {node.count}"
                          " times")
                continue
            exports, released = buf.exports, buf.released
            expected = self.expected_exports(node)
            check(exports >= 0, f"{node}: exports = {exports}")
            check(exports == expected, f"{node}: exports = {exports}, but {expected} views and"
                  " unreleased slices are alive")
            if node.is_root:
                check(released == (node.count == 1), f"{node}: released={released} but"
                      f" on_release ran {node.count} times")
                if node.owner_wref is not None:
                    check((node.owner_wref() is not None) == (node.count == 0),
                          f"{node}: owner alive={node.owner_wref() is not None} but on_release"
                          f" ran {node.count} times")
            if released:
                check(exports == 0, f"{node} is released with {exports} exports")
                self.check_refused(node, buf)
            else:
                check(root.count == 0, f"{node} is not released but the memory's on_release"
                      " ran")
                for a in node.ancestors():
                    check(not self.is_released(a), f"{node} is not released but its ancestor"
                          f" {a} is")
                if node.defer_called:
                    check(exports > 0, f"{node}: deferred release not done although no"
                          " export is left")
                    self.check_refused(node, buf)
                else:
                    with memoryview(buf) as view:
                        got = view.tobytes()
                    check(got == node.expected(), f"{node} reads {got!r}, expected"
                          f" {node.expected()!r} (memory given back?)")
            unreferenced = not self.referenced(node)
            in_cycle = node.is_root and node.owner_kind.startswith("cycle") and not released
            if unreferenced and not in_cycle:
                raise Violation(f"{node} is alive but nothing references it")
            del buf
        for node, view, expected in self.views:  # (top level only: nothing runs here)
            check(node.wref() is not None, f"{node} is gone under a live view")
            check(node.root.count == 0, f"a view of {node} is alive but on_release of"
                  f" {node.root} ran")
            check(not self.is_released(node), f"a view of {node} is alive but it is released")
            got = view.tobytes()
            check(got == expected, f"a view of {node} reads {got!r}, expected {expected!r}"
                  " (use after release)")
        check(self.unraisable_other == [], f"unexpected unraisable exceptions:"
              f" {self.unraisable_other}")
        raised = sorted(self.propagated + self.unraisable_callback)
        due = sorted(n.nid for n in self.nodes if n.is_root and n.raises and n.count >= 1)
        check(raised == due, f"CallbackErrors seen for {raised}, raised by {due}")

    def check_refused(self, node, buf):
        try:
            view = memoryview(buf)
        except ValueError:
            pass
        else:
            view.release()
            raise Violation(f"memoryview({node}) worked although it is released or pending")
        try:
            part = buf[0:0]
        except ValueError:
            pass
        else:
            del part
            raise Violation(f"{node}[0:0] worked although it is released or pending")

    # -- a whole sequence --------------------------------------------------------------

    def step(self):
        if not self.alive() and self.can_create():
            op = "create"
        else:
            op = self.draw(st.sampled_from(TOP_OPS), "step")
        self.perform(op)
        self.after_callbacks()
        self.check_all()

    def teardown(self):
        """Drop every view and reference (callbacks may still release and
        drop things, but create nothing), collect, and check that every
        on_release ran exactly once."""
        self.closing = True
        self.note("teardown")
        while self.views:
            node, view, _expected = self.views.pop()
            self.note(f"teardown: drop a view of {node}")
            del view
            self.after_callbacks()
        self.check_all()  # exports: only unreleased slices are left
        for nid in list(self.held):
            if nid in self.held:  # (a callback may have dropped it already)
                self.drop_reference(self.nodes[nid], "teardown")
            self.after_callbacks()
        self.note("teardown: gc.collect()")
        gc.collect()
        self.after_callbacks()
        self.check_all()
        for node in self.nodes:
            check(node.wref() is None, f"{node} survived the teardown")
            if node.is_root:
                check(node.count == 1, f"{node}: on_release ran {node.count} times in all")
                if node.owner_wref is not None:
                    check(node.owner_wref() is None and node.owner_dels == 1,
                          f"{node}: its owner ran __del__ {node.owner_dels} times")
        check(all(not f.alive for f in self.finalizers), "a weakref.finalize never ran")
        check(len(self.weakref_fired) == len(self.weakrefs),
              f"{len(self.weakref_fired)} of {len(self.weakrefs)} weakref callbacks ran")
        if self.finalizers or self.weakrefs:
            REACHED["teardown with callbacks"] += 1

    def abandon(self):
        """After a failure: callbacks do nothing, everything is dropped; the
        memory is kept if a Buffer survived."""
        self.active = False
        self.closing = True
        self.abandoned = True
        self.views.clear()
        self.held.clear()
        for fin in self.finalizers:
            fin.detach()
        self.finalizers.clear()
        self.weakrefs.clear()  # (their callbacks refer to self: a cycle less)
        gc.collect()
        if any(n.wref() is not None for n in self.nodes):
            LEAKED_MEMORY.extend(n.cmem for n in self.nodes if n.is_root)


def make_on_release(fuzz, box, address, length):
    def on_release():
        node = box[0] if box else None
        if node is None:  # from_address failed and gave the memory back at once
            fuzz.violations.append((violation_class(-1), "from_address failed"))
            return
        node.count += 1
        if node.count > 1:
            fuzz.violations.append((violation_class(-2),
                                    f"on_release of {node} ran {node.count} times"))
            return
        if fuzz.abandoned:
            # A sequence ended by an exception (a failure, or Hypothesis's own
            # StopTest) leaves Buffers in the frames of its traceback, released
            # whenever that goes, maybe during a later sequence: nothing to
            # check, do or raise there.
            ctypes.memset(address, POISON, length)
            return
        fuzz.note(f"on_release of {node}")
        try:
            buf = node.wref()
            check(buf is None or buf.released,
                  f"on_release of {node} runs but the Buffer is not marked released")
            if buf is not None:
                check(buf.exports == 0, f"on_release of {node} runs with {buf.exports} exports")
            del buf
            for other in fuzz.nodes:
                if other.root is node and other is not node:
                    check(fuzz.is_released(other), f"on_release of {node} runs but its slice"
                          f" {other} is alive and not released")
            # (no loop variable bound to a view: this frame outlives the loop)
            for vnode in [entry[0] for entry in fuzz.views]:
                check(vnode.root is not node, f"on_release of {node} runs but a view of"
                      f" {vnode} is alive")
            if node.owner_wref is not None:
                check(node.owner_wref() is not None or node.owner_kind.startswith("cycle"),
                      f"on_release of {node} runs after its owner is gone")
        except Violation as exc:
            fuzz.violations.append((type(exc), str(exc)))
        ctypes.memset(address, POISON, length)  # "free" the memory
        fire(fuzz, "on_release", node)
        if node.raises and not fuzz.abandoned:
            raise CallbackError(node.nid)

    return on_release


def run_sequence(draw, trace=None):
    """One sequence of operations, drawn with draw(strategy, label)."""
    fuzz = Fuzz(draw, trace)
    old_hook = sys.unraisablehook
    sys.unraisablehook = fuzz.unraisablehook
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        steps = draw(st.integers(1, MAX_STEPS), "number of steps")
        for _ in range(steps):
            fuzz.step()
        fuzz.teardown()
        fuzz.after_callbacks()
        fuzz.check_all()
    except Violation as exc:
        if "-- operations" not in str(exc):
            raise type(exc)(f"{exc}{fuzz.trail()}") from None
        raise
    finally:
        try:
            fuzz.abandon()
        finally:
            sys.unraisablehook = old_hook
            if gc_was_enabled:
                gc.enable()


def test_reentrancy_fuzz(tmp_path_factory):
    from hypothesis.configuration import set_hypothesis_home_dir, storage_directory

    # database=None keeps no examples; this keeps Hypothesis's other caches
    # out of the work tree.
    home = storage_directory(intent_to_write=False).home_directory
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    chosen = hypothesis_profile("membuf-reentrancy", ci_examples=400, long_examples=50_000)
    trace_path = os.environ.get("MEMBUF_FUZZ_TRACE")
    examples = [0]

    def sequence(data):
        examples[0] += 1
        if trace_path:
            with open(trace_path, "w") as trace:
                trace.write(f"# sequence {examples[0]}\n")
                run_sequence(lambda s, label: data.draw(s, label=label), trace)
        else:
            run_sequence(lambda s, label: data.draw(s, label=label))
        # What survives a sequence that ended normally is Hypothesis's own
        # state, which grows with every sequence: keep later collections from
        # scanning it again.  (Not after an exception: its traceback still
        # holds the sequence's objects, garbage once Hypothesis drops it.)
        gc.collect()
        gc.freeze()

    # Derandomized, every run would draw the same sequences: one run.
    batch = chosen.max_examples if chosen.derandomize else BATCH
    remaining = chosen.max_examples
    REACHED.clear()
    try:
        while remaining > 0:
            gc.unfreeze()  # the previous run's bookkeeping is garbage now
            gc.collect()
            gc.freeze()  # later collections scan only what the sequences make
            run = settings(chosen, max_examples=min(batch, remaining))
            run(given(st.data())(sequence))()  # a new test function: a new engine
            remaining -= batch
    finally:
        gc.unfreeze()
        set_hypothesis_home_dir(home)
    print(f"\n{examples[0]} sequences; reached:", dict(sorted(REACHED.items())))
    if chosen.max_examples >= 400:  # the profiles (fewer: a quick local try)
        missing = [path for path in MUST_REACH if REACHED[path] == 0]
        assert missing == [], f"the sequences never reached {missing}"


MUST_REACH = [
    WINDOW,  # where release_now() crashed before 3163ba7
    "create (callback)", "slice (callback)", "export (callback)", "gc (callback)",
    "forget (step)", "defer_chain (step)", "read (step)", "read (callback)",
    "slice of a slice", "slicing refused", "read refused", "export refused", "with refused",
    "strict release refused", "deferred release pending",
    "deferred release completed by the last view",
    "a release completed a chain of deferred parents",
    "on_release fired", "owner __del__ fired", "weakref callback fired", "finalize fired",
    "finalize releases an ancestor (defer)", "finalize releases an ancestor (method)",
    "weakref callback releases an ancestor", "on_release releases its own Buffer",
    "gc collected a cycle", "CallbackError unraisable",
    "nested callback performs operations",
    "CallbackError propagated", "teardown with callbacks",
]


# ---------------------------------------------------------------------------
# The checker itself: planted contract violations must be caught
# ---------------------------------------------------------------------------


class Script:
    """A draw function that answers from a list (label -> value in order);
    the draws of callbacks answer 0 operations."""

    def __init__(self, answers):
        self.answers = list(answers)

    def __call__(self, strategy, label):
        if label.endswith(": operations"):
            return 0
        expected_label, value = self.answers.pop(0)
        assert label == expected_label, (label, expected_label)
        return value


CREATE = [("create: size", 8), ("create: readonly", True), ("create: owner", "none"),
          ("create: raises", False)]


def test_checker_catches_a_view_of_released_memory():
    fuzz = Fuzz(Script(CREATE + [("export: of which Buffer", 0)]))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        fuzz.perform("create")
        fuzz.perform("export")
        fuzz.check_all()
        # Plant the bugs: the memory is overwritten (freed) under the live
        # view; on_release has run under the live view.
        cmem = fuzz.nodes[0].cmem
        ctypes.memset(ctypes.addressof(cmem), POISON, 8)
        try:
            fuzz.check_all()
        except Violation as exc:
            assert "reads" in str(exc), exc
        else:
            raise AssertionError("a view of overwritten memory went unnoticed")
        ctypes.memmove(ctypes.addressof(cmem), fuzz.nodes[0].data, 8)
        fuzz.check_all()
        fuzz.nodes[0].count = 1
        try:
            fuzz.check_all()
        except Violation as exc:
            assert "on_release ran" in str(exc), exc
        else:
            raise AssertionError("a view of released memory went unnoticed")
    finally:
        fuzz.nodes[0].count = 0
        fuzz.abandon()
        if gc_was_enabled:
            gc.enable()


def test_checker_catches_a_second_callback_a_missing_one_and_stray_unraisables():
    fuzz = Fuzz(Script(CREATE + [("release: which Buffer", 0), ("release: how", "method")]))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        fuzz.perform("create")
        fuzz.perform("strict")
        fuzz.after_callbacks()
        fuzz.check_all()
        assert fuzz.nodes[0].count == 1
        # Plant the bugs: on_release called again; a stray unraisable exception.
        on_release = make_on_release(fuzz, [fuzz.nodes[0]], ctypes.addressof(fuzz.nodes[0].cmem),
                                     8)
        on_release()
        try:
            fuzz.after_callbacks()
        except Violation as exc:
            assert "ran 2 times" in str(exc), exc
        else:
            raise AssertionError("a second on_release went unnoticed")
        fuzz.violations.clear()
        fuzz.nodes[0].count = 1
        fuzz.unraisable_other.append("RuntimeError: planted")
        try:
            fuzz.check_all()
        except Violation as exc:
            assert "planted" in str(exc), exc
        else:
            raise AssertionError("an unexpected unraisable exception went unnoticed")
        fuzz.unraisable_other.clear()
        fuzz.held.clear()  # the Buffer goes
        fuzz.check_all()
        fuzz.nodes[0].count = 0  # plant: it went without its on_release
        try:
            fuzz.check_all()
        except Violation as exc:
            assert "on_release ran 0 times" in str(exc), exc
        else:
            raise AssertionError("a Buffer gone without its on_release went unnoticed")
        fuzz.nodes[0].count = 1
    finally:
        fuzz.unraisable_other.clear()
        fuzz.abandon()
        if gc_was_enabled:
            gc.enable()
