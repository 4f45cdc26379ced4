"""Allocation-failure sweeps, each in a child interpreter (as CPython's own
tests run _testcapi.set_nomemory(), which can take a process down).

For i = 0, 1, 2, ...: make CPython's allocation number i (counted from just
before the operation; all domains: raw, mem, object) fail, run one
operation, take the failure hook off, then drop everything.  Each operation
must either succeed or raise MemoryError -- never crash, never another
error -- and afterwards the release callback has run EXACTLY once, every
time.  The sweep goes on until 20 indexes in a row succeed: the operation
then makes fewer allocations than i, so its whole allocation sequence has
been covered (and the test asserts that at least one failure was hit).

Buffers are recycled through a free list (membuf._membuf._clear_freelist()
empties it): it is emptied before every armed operation, so that making a
Buffer really allocates.

The operations: creation through fakelib (MemBuf_FromMemory, MemBuf_FromSpec
with a typed 2-D layout and an owner, with a format that the struct module
parses, and with a C callback that calls back into Python), slicing a byte
and a typed Buffer, exporting a memoryview, and membuf.from_address(...,
on_release=cb) with and without an owner.

test_capi.TestAllocationFailures sweeps the creation calls in-process, from
the first allocation inside membuf on; here the sweep starts at the call
itself, so failures before membuf is entered are covered too: those must not
run the callback (the memory was never handed over), and they must all come
before the first failure that does.  test_capi.TestLibraryAllocationFailure
covers fakelib.fail_next() on fakelib.new(); the last test here makes the
library fail inside a release callback instead.
"""

import json
import os
import subprocess
import sys

import pytest

CHILD = r"""
import ctypes, gc, json, sys
sys.path.insert(0, sys.argv[1])
import fakelib, membuf, _testcapi

SCENARIO = sys.argv[2]
PATTERN = bytes(i % 251 for i in range(64))
set_nomemory = _testcapi.set_nomemory
remove_hooks = _testcapi.remove_mem_hooks
unraisable = []
sys.unraisablehook = lambda args: unraisable.append(
    f"{args.exc_type.__name__}: {args.exc_value}")


class Owner:
    pass


KEEPALIVE = []


clear_freelist = membuf._membuf._clear_freelist


def armed(i, fn, out):
    # out: [result, outcome]; preallocated so that storing allocates nothing.
    # Buffers are recycled through a free list: empty it, so that making one
    # really allocates.
    clear_freelist()
    set_nomemory(i, i + 1)
    try:
        out[0] = fn()
    except MemoryError:
        out[1] = "MemoryError"
    except BaseException as exc:
        remove_hooks()
        out[1] = f"{type(exc).__name__}: {exc}"
    finally:
        remove_hooks()


def creation(setup, owner=None):
    # One sweep step for an operation that hands memory over to membuf.
    # setup() -> (make, count, rewrap, extra): fresh memory for each step.
    def step(i):
        make, count, rewrap, extra = setup()
        owner_refs = sys.getrefcount(owner) if owner is not None else None
        out = [None, "ok"]
        armed(i, make, out)
        row = {"i": i, "outcome": out[1], "count_after": count()}
        if out[1] == "ok":
            row["contents_ok"] = out[0].tobytes() == PATTERN
        out[0] = None  # drop the Buffer (if any): its release runs now
        gc.collect()
        if out[1] != "ok" and row["count_after"] == 0:
            rewrap()  # never handed over: still ours, wrap and drop it now
        row["count_final"] = count()
        if owner is not None:
            row["owner_refs_same"] = sys.getrefcount(owner) == owner_refs
        row.update(extra())
        return row
    return step


def use(make_buffer, op):
    # One sweep step for an operation on an existing Buffer.
    def step(i):
        out = [None, "ok"]
        buf, count = make_buffer()
        armed(i, lambda: op(buf), out)
        row = {"i": i, "outcome": out[1], "count_after": count(),
               "exports": buf.exports}
        out[0] = None
        row["exports_after_drop"] = buf.exports
        del buf
        gc.collect()
        row["count_final"] = count()
        return row
    return step


def scenario(name):
    owner = Owner() if name.endswith("owner") else None
    if name in ("FromMemory", "FromSpec-d-2d-owner", "FromSpec-<d", "FromMemory-hook"):
        def setup():
            block = fakelib.alloc(64)
            hook_calls = [0]

            def hook():
                hook_calls[0] += 1

            make = {
                "FromMemory": lambda: fakelib.from_memory(block),
                "FromSpec-d-2d-owner": lambda: fakelib.from_spec(
                    block, format="d", ndim=2, shape=[2, 4], owner=owner),
                "FromSpec-<d": lambda: fakelib.from_spec(block, format="<d"),
                "FromMemory-hook": lambda: fakelib.wrap_with_hook(block, hook),
            }[name]
            extra = (lambda: {"hook_calls": hook_calls[0]}) if name == "FromMemory-hook" \
                else dict
            return (make, lambda: fakelib.releases(block),
                    lambda: fakelib.from_memory(block), extra)
        return creation(setup, owner)
    if name.startswith("from_address"):
        memory = ctypes.create_string_buffer(PATTERN, 64)
        KEEPALIVE.append(memory)
        address = ctypes.addressof(memory)
        kwargs = {"owner": owner} if owner is not None else {}

        def setup():
            calls = [0]

            def on_release():
                calls[0] += 1

            return (lambda: membuf.from_address(address, 64, on_release=on_release, **kwargs),
                    lambda: calls[0],
                    lambda: membuf.from_address(address, 64, on_release=on_release),
                    dict)
        return creation(setup, owner)

    def make_buffer():  # operations on an existing Buffer
        block = fakelib.alloc(64)
        count = lambda: fakelib.releases(block)
        if name == "slice-typed":
            return fakelib.from_spec(block, format="i"), count
        return fakelib.from_memory(block), count

    op = {
        "slice": lambda b: b[1:3],
        "slice-step": lambda b: b[::3],
        "slice-typed": lambda b: b[1:3],
        "memoryview": lambda b: memoryview(b),
    }[name]
    return use(make_buffer, op)


run = scenario(SCENARIO)
rows = []
in_a_row = 0
for i in range(2000):
    row = run(i)
    rows.append(row)
    in_a_row = in_a_row + 1 if row["outcome"] == "ok" else 0
    if in_a_row == 20:
        break
print(json.dumps({"rows": rows, "unraisable": unraisable}))
"""

CREATION = ["FromMemory", "FromSpec-d-2d-owner", "FromSpec-<d", "FromMemory-hook",
            "from_address", "from_address-owner"]
USES = ["slice", "slice-step", "slice-typed", "memoryview"]


def run_child(fakelib, scenario):
    fakelib_dir = os.path.dirname(sys.modules["fakelib"].__file__)
    result = subprocess.run([sys.executable, "-c", CHILD, fakelib_dir, scenario],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:],
                                    result.stderr[-4000:])
    report = json.loads(result.stdout)
    return report["rows"], report["unraisable"], result.stderr


def check_sweep(rows, unraisable, stderr):
    outcomes = {row["outcome"] for row in rows}
    assert outcomes <= {"ok", "MemoryError"}, [r for r in rows if r["outcome"] not in
                                               ("ok", "MemoryError")]
    assert "MemoryError" in outcomes, "no allocation of the operation ever failed"
    assert [r["outcome"] for r in rows[-20:]] == ["ok"] * 20, "the sweep did not end"
    assert [r for r in rows if r["count_final"] != 1] == []  # exactly once, every time
    # A failing allocation inside a Python callback is reported, not lost:
    # nothing else may reach sys.unraisablehook, or stderr.
    assert all(u.startswith("MemoryError") for u in unraisable), unraisable
    assert stderr == ""


@pytest.mark.parametrize("scenario", CREATION)
def test_creation_sweep(fakelib, scenario):
    rows, unraisable, stderr = run_child(fakelib, scenario)
    check_sweep(rows, unraisable, stderr)
    failed = [r for r in rows if r["outcome"] == "MemoryError"]
    # Ownership passes on entry: a failure either came before membuf was
    # entered (callback not run) or inside it (callback already run) -- and
    # all of the first kind come before all of the second.
    handed_over = [r["count_after"] for r in failed]
    assert set(handed_over) <= {0, 1}, failed
    assert handed_over == sorted(handed_over), failed
    assert 1 in handed_over, "no failure inside membuf was hit"
    # A success is a usable Buffer whose callback had not run.
    assert all(r["count_after"] == 0 and r["contents_ok"] for r in rows
               if r["outcome"] == "ok"), rows
    if "owner" in scenario:
        assert all(r["owner_refs_same"] for r in rows), rows
    if scenario == "FromMemory-hook":
        # The C callback called into Python exactly once as well.
        assert [r for r in rows if r["hook_calls"] != r["count_final"]] == []


@pytest.mark.parametrize("scenario", USES)
def test_use_sweep(fakelib, scenario):
    rows, unraisable, stderr = run_child(fakelib, scenario)
    check_sweep(rows, unraisable, stderr)
    for r in rows:
        # Nothing released the memory while the Buffer was alive ...
        assert r["count_after"] == 0, r
        # ... a failed slice or export holds no export, a successful one holds one ...
        assert r["exports"] == (1 if r["outcome"] == "ok" else 0), r
        # ... and gave it back when dropped.
        assert r["exports_after_drop"] == 0, r


LIBRARY_FAILS_IN_CALLBACK = r"""
import gc, sys
sys.path.insert(0, sys.argv[1])
import fakelib

seen = []
sys.unraisablehook = lambda args: seen.append((args.exc_type.__name__, str(args.exc_value)))
before = fakelib.outstanding()
block = fakelib.alloc(16)
got = []

def hook():
    # The library is out of memory while the release callback runs: the
    # callback's own allocation fails, and that must not disturb the release.
    fakelib.fail_next(1)
    got.append(fakelib.new(8))

buf = fakelib.wrap_with_hook(block, hook)
buf.release()
print("RELEASES", fakelib.releases(block), "RELEASED", buf.released)
print("UNRAISABLE", seen)
print("OUTSTANDING", fakelib.outstanding() - before, "GOT", len(got))
buf.release()
del buf
gc.collect()
print("AFTER", fakelib.releases(block))
buf2, block2 = fakelib.new(8)   # the injected failure was used up
del buf2
print("NEXT", fakelib.releases(block2), fakelib.outstanding() - before)
"""


def test_library_allocation_failure_inside_a_release_callback(fakelib):
    fakelib_dir = os.path.dirname(sys.modules["fakelib"].__file__)
    result = subprocess.run([sys.executable, "-c", LIBRARY_FAILS_IN_CALLBACK, fakelib_dir],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0] == "RELEASES 1 RELEASED True"
    # The hook's MemoryError cannot propagate out of a C release callback: it
    # goes to sys.unraisablehook, once.
    assert lines[1] == ("UNRAISABLE [('MemoryError', 'fakelib: allocation failed "
                        "(injected)')]")
    assert lines[2] == "OUTSTANDING 0 GOT 0"
    assert lines[3] == "AFTER 1"
    assert lines[4] == "NEXT 1 0"
