"""The object layout of issue #14 (docs/design.md, "Speed"): a plain Buffer
is the 64-byte head alone, without a GC header; everything else is extended,
with a GC header only where a reference cycle is possible.  Each form is
recycled through its own free list without carrying anything over."""

import ctypes
import gc
import sys
import sysconfig
import weakref

import pytest

import membuf

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
HEAD = 64  # PyObject_HEAD 16 + buf, nbytes, flags/exports, release, ctx, weakreflist

block = ctypes.create_string_buffer(64)
ADDR = ctypes.addressof(block)


@pytest.mark.skipif(sys.maxsize < 2**32 or FREE_THREADED,
                    reason="the 64-byte head is the layout of 64-bit builds with the GIL")
def test_a_plain_buffer_is_the_64_byte_head():
    buf = membuf.from_address(ADDR, 64)
    assert buf.__sizeof__() == HEAD
    # sys.getsizeof adds a GC header by type (CPython's rule), not by object.
    assert sys.getsizeof(buf) == HEAD + (sys.getsizeof(()) - ().__sizeof__())


def test_everything_else_is_larger_and_grows_with_its_layout():
    plain = membuf.from_address(ADDR, 64).__sizeof__()
    owning = membuf.from_address(ADDR, 64, owner=b"x").__sizeof__()
    typed_1d = membuf.from_address(ADDR, 64, format="d").__sizeof__()
    typed_2d = membuf.from_address(ADDR, 64, format="d", shape=(2, 4)).__sizeof__()
    assert plain < owning < typed_1d < typed_2d
    # two more Py_ssize_t for shape and stride of the second dimension
    assert typed_2d - typed_1d == 2 * ctypes.sizeof(ctypes.c_ssize_t)


@pytest.mark.parametrize("make, tracked", [
    (lambda: membuf.from_address(ADDR, 64), False),
    (lambda: membuf.from_address(0, 0), False),
    (lambda: membuf.from_address(ADDR, 64, owner=b"bytes: holds no reference back"), False),
    (lambda: membuf.from_address(ADDR, 64, owner=object()), False),
    (lambda: membuf.from_address(ADDR, 64, format="d", shape=(2, 4)), False),
    (lambda: membuf.from_address(ADDR, 64, owner=[]), True),
    (lambda: membuf.from_address(ADDR, 64, on_release=lambda: None), True),
    (lambda: membuf.from_address(ADDR, 64)[1:5], True),  # a slice owns its parent
    (lambda: membuf.from_buffer(bytearray(8), on_release=lambda: None), True),
    (lambda: membuf.from_buffer(b"bytes"), False),
], ids=["plain", "null", "owner-bytes", "owner-object", "typed", "owner-list", "on_release",
        "slice", "from_buffer-on_release", "from_buffer-bytes"])
def test_only_buffers_that_can_close_a_cycle_are_tracked(make, tracked):
    buf = make()
    assert gc.is_tracked(buf) == tracked
    assert bytes(memoryview(buf)) == bytes(memoryview(buf))  # usable either way
    if not tracked:
        assert gc.get_referents(buf) == [] or FREE_THREADED


def test_a_cycle_through_an_owner_is_collected():
    released = []
    holder = []
    buf = membuf.from_address(ADDR, 64, owner=holder, on_release=lambda: released.append(1))
    holder.append(buf)  # buf -> holder -> buf
    ref = weakref.ref(buf)
    del buf, holder
    gc.collect()
    assert ref() is None and released == [1]


class Holder:  # a GC type: a Buffer owning one is tracked
    pass


@pytest.mark.parametrize("kw", [
    {},
    {"owner": object()},
    {"owner": Holder()},
    {"on_release": None},  # replaced by a fresh callable below
], ids=["plain", "owner-untracked", "owner-tracked", "on_release"])
def test_a_recycled_buffer_carries_nothing_over(kw):
    # Each form has its own free list: fill it, then take every object back
    # with new arguments and check none keeps the old owner or callback.
    calls = []

    def make(tag):
        args = dict(kw)
        if "on_release" in args:
            args["on_release"] = lambda: calls.append(tag)
        if "owner" in args:
            args["owner"] = type(kw["owner"])()
        return membuf.from_address(ADDR + tag, 64 - tag, **args), args.get("owner")

    first = [make(1) for _ in range(40)]
    old_owners = [weakref.ref(o) for _, o in first if isinstance(o, Holder)]
    del first
    gc.collect()
    assert all(r() is None for r in old_owners)  # owners dropped with their Buffers
    second = [make(2) for _ in range(40)]
    for buf, owner in second:
        assert buf.address == ADDR + 2 and buf.nbytes == 62
        assert buf.owner is owner
        assert not buf.released and buf.exports == 0
        assert (buf.format, buf.shape, buf.strides, buf.itemsize, buf.ndim) == \
            ("B", (62,), (1,), 1, 1)
    if "on_release" in kw:
        assert calls == [1] * 40
        del second, buf, owner
        gc.collect()
        assert calls == [1] * 40 + [2] * 40


def test_weak_references_to_a_plain_buffer_die_before_its_release():
    order = []
    buf = membuf.from_address(ADDR, 64)
    ref = weakref.ref(buf, lambda r: order.append("weakref"))
    finalizer = weakref.finalize(buf, order.append, "finalize")
    del buf
    assert ref() is None and not finalizer.alive
    assert sorted(order) == ["finalize", "weakref"]
