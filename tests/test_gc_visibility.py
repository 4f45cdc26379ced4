"""Every reference membuf holds is visible to the garbage collector.

For each kind of holder that membuf itself creates (a slice, a slice of a
slice, a Buffer rebuilt by pickle from in-band or out-of-band data) and, for
comparison, CPython's memoryview: a reference cycle that runs through the
holder back to the Buffer through the Buffer's owner is collected, and the
release callback runs exactly once; so is a cycle through its Python
on_release, except through a memoryview (see the test).
A reference the GC cannot see (as a rebuilt Buffer's export of the original
was) makes such a cycle immortal, and its callback never runs.

Not covered, by design: a DLPack capsule (PyCapsule has no GC support in the
C API) and the consumers that take it over (NumPy arrays and PyTorch tensors
are not GC-tracked either) hide their export, as any NumPy array over a
memoryview does; see the README's interpreter-exit rule.
"""

import ctypes
import gc
import pickle

import pytest

import membuf


class Node:
    """A GC-tracked object to close cycles with."""


def _slice(buf):
    return buf[1:]


def _slice_of_slice(buf):
    return buf[1:][1:]


def _memoryview(buf):
    return memoryview(buf)


def _rebuilt_out_of_band(buf):
    frames = []
    data = pickle.dumps(buf, protocol=5, buffer_callback=frames.append)
    rebuilt = pickle.loads(data, buffers=frames)
    assert rebuilt.address == buf.address  # zero-copy: it holds an export of buf
    return rebuilt


def _rebuilt_from_a_slice_out_of_band(buf):
    return _rebuilt_out_of_band(buf[2:])


def _rebuilt_in_band(buf):
    rebuilt = pickle.loads(pickle.dumps(buf, protocol=4))
    assert rebuilt.address != buf.address  # a copy: the cycle runs through the owner only
    return rebuilt


HOLDERS = [_slice, _slice_of_slice, _memoryview, _rebuilt_out_of_band,
           _rebuilt_from_a_slice_out_of_band, _rebuilt_in_band]


def _buffer(calls, **kwargs):
    mem = ctypes.create_string_buffer(b"0123456789abcdef", 16)
    return membuf.from_address(ctypes.addressof(mem), 16, readonly=False, **kwargs), mem


@pytest.mark.parametrize("make_holder", HOLDERS, ids=lambda f: f.__name__.strip("_"))
def test_a_cycle_through_the_owner_and_the_holder_is_collected(make_holder):
    calls = []
    owner = Node()
    buf, mem = _buffer(calls, owner=owner, on_release=lambda: calls.append(1))
    owner.holder = make_holder(buf)
    owner.mem = mem
    del buf, owner, mem
    gc.collect()
    assert calls == [1]


@pytest.mark.parametrize("make_holder", HOLDERS, ids=lambda f: f.__name__.strip("_"))
def test_a_cycle_through_on_release_and_the_holder(make_holder):
    """A cycle through the Python on_release is collected when membuf made
    the holder: a slice or a rebuilt Buffer ends its export when the GC
    finalizes it, and the callback then runs while the cycle is intact.  A
    memoryview ends its export only when the GC clears it, after the
    callback may have been cleared: such a cycle is kept alive instead
    (contract 10's known limitation) until the export ends."""
    calls = []
    node = Node()
    buf, node.mem = _buffer(calls, on_release=lambda node=node: calls.append(1))
    node.holder = make_holder(buf)
    node_id = id(node)
    del buf, node
    gc.collect()
    if make_holder is not _memoryview:
        assert calls == [1]
        assert not any(id(o) == node_id for o in gc.get_objects())
        return
    assert calls == []
    (node,) = [o for o in gc.get_objects() if id(o) == node_id]  # kept alive, unreachable
    node.holder.release()  # the way out: end the export
    assert calls == [1]
    del node
    gc.collect()
    assert calls == [1]


def _referents(obj):
    """What obj shows the GC, less its type (which an instance of a heap
    type, as in the abi3 build, visits too)."""
    return [r for r in gc.get_referents(obj) if r is not type(obj)]


def test_a_rebuilt_buffer_shows_the_gc_what_it_exports_from():
    calls = []
    buf, mem = _buffer(calls, on_release=lambda: calls.append(1))
    frames = []
    data = pickle.dumps(buf, protocol=5, buffer_callback=frames.append)
    rebuilt = pickle.loads(data, buffers=frames)
    referents = gc.get_referents(rebuilt)
    assert any(r is buf for r in referents), "the export of the original is not traversed"
    assert any(r is frames[0] for r in referents), "the owner (the PickleBuffer) is not traversed"
    rebuilt.release()
    assert _referents(rebuilt) == []
    frames[0].release()  # the PickleBuffer's own export
    assert buf.exports == 0
    del mem


def test_a_slice_shows_the_gc_its_parent():
    calls = []
    buf, mem = _buffer(calls, on_release=lambda: calls.append(1))
    part = buf[3:]
    assert any(r is buf for r in gc.get_referents(part))
    part.release()
    assert _referents(part) == []
    del mem
