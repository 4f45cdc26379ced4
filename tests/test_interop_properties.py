"""Property tests of the two ways memory leaves a Buffer: pickle and DLPack.

Hypothesis draws random layouts over fakelib memory and checks them against
a pure-Python model of that memory (fakelib fills byte i of a block with
i % 251), so that a wrong answer from the Buffer itself cannot hide:

* formats: every DLPack format (b h i l q n, B H I L Q N, e f d, ?, Zf Zd,
  also with the native prefixes @ = < or >), and formats DLPack cannot carry
  (c, P, x, 4s, 2i, ?B, a foreign byte order);
* ndim 0..4, dimensions of 0..4 items (so empty layouts too);
* from_spec without strides (C order, exactly len bytes), or with explicit
  strides in C order, Fortran order, or any other order of the dimensions,
  with gaps between items, sometimes with a stride of 0 or a stride that is
  not a whole number of items, and sometimes more memory than the layout
  reaches;
* then up to two slices of the first dimension (buf[i:j:k], k negative too,
  a slice of a slice), which is where negative strides come from;
* read-only and writable.

The properties:

1. pickle: every protocol 0..5 in-band, and protocol 5 out-of-band, gives
   back a Buffer of the same format, shape, readonly flag and contents (in C
   order); out-of-band is zero-copy exactly for C-contiguous layouts (others
   travel in-band); the memory goes back only when the original and every
   copy that shares it are gone, whichever goes first, and then exactly once.
2. DLPack: np.from_dlpack(buf) is a zero-copy array of the same shape and
   contents, writable exactly when the Buffer is; strict release() is
   refused while it lives; after it dies the Buffer releases and the
   callback has run exactly once.  Layouts DLPack cannot describe raise
   BufferError and leave no export behind.

Profiles, as in test_state_machine.py (environment variable
MEMBUF_HYPOTHESIS_PROFILE):

* ``ci`` (default): a few hundred examples per property, derandomized (the
  same examples every run), no example database: a few seconds.
* ``long``: random seeds, 20 000 examples per property::

      MEMBUF_HYPOTHESIS_PROFILE=long python -m pytest tests/test_interop_properties.py -q

MEMBUF_HYPOTHESIS_EXAMPLES=N overrides the number of examples of either profile.
"""

import itertools
import pickle
import struct
import sys

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis import event, given

import membuf
from conftest import hypothesis_profile

# ---------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------



PROFILE = hypothesis_profile("membuf-interop", ci_examples=1000, long_examples=20_000)


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory):
    """Keep Hypothesis's caches out of the work tree (as test_state_machine does)."""
    from hypothesis.configuration import set_hypothesis_home_dir, storage_directory

    home = storage_directory(intent_to_write=False).home_directory
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(home)


# ---------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------

LITTLE = sys.byteorder == "little"
NATIVE = "<" if LITTLE else ">"
FOREIGN = ">" if LITTLE else "<"

DLPACK_CODES = ["b", "h", "i", "l", "q", "n", "B", "H", "I", "L", "Q", "N",
                "e", "f", "d", "?", "Zf", "Zd"]
# the same, spelled with a native byte-order prefix (standard sizes: only
# where they equal the native ones)
DLPACK_PREFIXED = ["@i", "=h", "=q", NATIVE + "Q", "@d", "=e", "=f", NATIVE + "Zd",
                   "=Zf", "@?", "@n", "=B"]
DLPACK_FORMATS = DLPACK_CODES + DLPACK_PREFIXED
# pickle carries these as well; DLPack has no data type for them
NO_DLPACK_FORMATS = ["c", "P", "x", "4s", "2i", "?B", FOREIGN + "i", FOREIGN + "d", "3e"]


def itemsize_of(fmt):
    code = fmt.lstrip("@=<>!")
    if code == "Zf":
        return 8
    if code == "Zd":
        return 16
    return struct.calcsize(fmt)


def numpy_versioned():
    """NumPy 2.1+ passes max_version (and copy) to __dlpack__."""
    major, minor = (int(part) for part in np.__version__.split(".")[:2])
    return (major, minor) >= (2, 1)


NUMPY_VERSIONED = numpy_versioned()

# ---------------------------------------------------------------------------
# layouts and their model
# ---------------------------------------------------------------------------

_PATTERN = bytes(range(251))


def fakelib_bytes(n):
    """What fakelib puts in a block of n bytes: byte i is i % 251."""
    return (_PATTERN * (n // 251 + 1))[:n]


@st.composite
def layouts(draw, formats=DLPACK_FORMATS + NO_DLPACK_FORMATS):
    """A plain description (no Buffers: Hypothesis keeps what it draws) of a
    from_spec call and the slices taken of it."""
    fmt = draw(st.sampled_from(formats))
    itemsize = itemsize_of(fmt)
    ndim = draw(st.integers(0, 4))
    # dimensions of 0..4 items; 0 (an empty layout) less often than the others
    sizes = st.sampled_from([0] + [1, 2, 3, 4] * 3)
    shape = tuple(draw(st.lists(sizes, min_size=ndim, max_size=ndim)))
    empty = 0 in shape
    kind = draw(st.sampled_from(["implicit", "C", "F", "permuted"]))
    if kind == "implicit":
        strides = None
        size = itemsize
        for n in shape:
            size *= n
        length = size
    else:
        order = list(range(ndim))[::-1]  # innermost (smallest stride) first
        if kind == "F":
            order = list(range(ndim))
        elif kind == "permuted":
            order = draw(st.permutations(order))
        strides = [0] * ndim
        step = itemsize
        for d in order:
            special = draw(st.sampled_from(["whole"] * 5 + ["zero", "skewed"]))
            gap = draw(st.integers(0, 2)) * itemsize  # unused items after this dimension
            if special == "zero":
                strides[d] = 0  # every index of d is the same memory (broadcast)
            else:
                strides[d] = step
                if special == "skewed" and itemsize > 1:
                    strides[d] += draw(st.integers(1, itemsize - 1))  # not whole items
            step = max(step, strides[d] * shape[d]) + gap
        strides = tuple(strides)
        # bytes the layout reaches, plus sometimes some that it does not
        reach = 0 if empty else itemsize + sum(s * (n - 1) for s, n in zip(strides, shape))
        length = reach + draw(st.integers(0, 3))
    slices = []
    if ndim >= 1:
        for _ in range(draw(st.integers(0, 2))):
            start = draw(st.none() | st.integers(-5, 5))
            stop = draw(st.none() | st.integers(-5, 5))
            step = draw(st.none() | st.sampled_from([-3, -2, -1, 1, 2, 3]))
            slices.append(slice(start, stop, step))
    writable = draw(st.booleans())
    return dict(format=fmt, itemsize=itemsize, shape=shape, strides=strides,
                length=length, slices=slices, writable=writable)


class Made:
    """The Buffers made from one layout (root first), the block, and the
    model's view of the last one: byte offset into the block, shape, strides."""

    def __init__(self, chain, block_id, layout, offset, shape, strides):
        self.chain = chain
        self.block_id = block_id
        self.layout = layout
        self.offset = offset
        self.shape = shape
        self.strides = strides

    @property
    def buf(self):
        return self.chain[-1]

    def expected_bytes(self):
        """The contents of the last Buffer in C order, read off the model of
        the block (never off the Buffer)."""
        raw = fakelib_bytes(self.layout["length"])
        n = self.layout["itemsize"]
        out = bytearray()
        for index in itertools.product(*(range(d) for d in self.shape)):
            at = self.offset + sum(i * s for i, s in zip(index, self.strides))
            out += raw[at:at + n]
        return bytes(out)

    def contiguous(self, order):
        """PyBuffer_IsContiguous, on the model."""
        if 0 in self.shape:
            return True
        dims = range(len(self.shape))
        expected = self.layout["itemsize"]
        for d in (reversed(dims) if order == "C" else dims):
            if self.shape[d] > 1 and self.strides[d] != expected:
                return False
            expected *= self.shape[d]
        return True

    def dlpack_ok(self):
        """DLPack can describe it as it is: a DLPack format and strides of
        whole items (a stride that never moves, over fewer than two items or
        in a layout without any, does not matter)."""
        if not self.dlpack_format():
            return False
        n = self.layout["itemsize"]
        return 0 in self.shape or \
            all(s % n == 0 for s, d in zip(self.strides, self.shape) if d > 1)

    def dlpack_format(self):
        return self.layout["format"] in DLPACK_FORMATS


def make(fakelib, layout):
    """Build the layout over a fresh fakelib block; check every Buffer made
    against the model on the way."""
    block_id = fakelib.alloc(layout["length"])
    base = fakelib.address(block_id)
    shape = layout["shape"]
    root = fakelib.from_spec(block_id, format=layout["format"], ndim=len(shape), shape=shape,
                             strides=layout["strides"],
                             flags=fakelib.WRITABLE if layout["writable"] else 0)
    strides = layout["strides"]
    if strides is None:  # C order
        strides, step = [], layout["itemsize"]
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
        strides = tuple(strides)
    made = Made([root], block_id, layout, 0, shape, strides)
    check_against_model(made, base)
    for part in layout["slices"]:
        start, stop, step = part.indices(made.shape[0])
        count = len(range(start, stop, step))
        sliced = made.buf[part]
        made.chain.append(sliced)
        if count:
            made.offset += start * made.strides[0]
        made.shape = (count,) + made.shape[1:]
        made.strides = (made.strides[0] * step,) + made.strides[1:]
        check_against_model(made, base)
    # what was drawn (pytest --hypothesis-show-statistics)
    event(f"ndim {len(made.shape)}, {'empty' if 0 in made.shape else 'not empty'}")
    event(("implicit strides" if layout["strides"] is None else "explicit strides")
          + (", C-contiguous" if made.contiguous("C") else ", not C-contiguous"))
    event(f"negative stride: {any(s < 0 for s in made.strides)}")
    if made.dlpack_ok():
        event("DLPack: yes")
    else:
        event("DLPack: no, " + ("strides" if made.dlpack_format() else "format"))
    return made


def check_against_model(made, base):
    buf = made.buf
    layout = made.layout
    assert type(buf) is membuf.Buffer
    assert buf.format == layout["format"]
    assert buf.itemsize == layout["itemsize"]
    assert buf.shape == made.shape
    assert buf.ndim == len(made.shape)
    assert buf.readonly == (not layout["writable"])
    assert buf.nbytes == len(made.expected_bytes())
    if buf.nbytes:
        # (a stride over fewer than two items never moves: its value is free)
        assert len(buf.strides) == buf.ndim
        assert all(a == b for a, b, n in zip(buf.strides, made.strides, made.shape) if n > 1)
        assert buf.address == base + made.offset
    assert buf.c_contiguous == made.contiguous("C")
    assert buf.f_contiguous == made.contiguous("F")
    assert buf.tobytes() == made.expected_bytes()


def release_all(fakelib, made):
    """Strictly release every Buffer, last slice first: each release must go
    through (nothing else holds an export), the block's callback runs exactly
    once, at the root."""
    for buf in reversed(made.chain):
        assert fakelib.releases(made.block_id) == 0
        assert buf.exports == 0
        buf.release()
        assert buf.released
    assert fakelib.releases(made.block_id) == 1


def describe(made):
    """For failure messages."""
    return dict(made.layout, model_shape=made.shape, model_strides=made.strides,
                model_offset=made.offset)


# ---------------------------------------------------------------------------
# 1. pickle
# ---------------------------------------------------------------------------


@PROFILE
@given(layout=layouts(), original_first=st.booleans())
def test_pickle_round_trips(fakelib, layout, original_first):
    made = make(fakelib, layout)
    buf = made.buf
    expected = made.expected_bytes()
    loaded_all = []  # Buffers that may share the block's memory
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        loaded = pickle.loads(pickle.dumps(buf, protocol=protocol))
        assert (loaded.format, loaded.shape, loaded.readonly) == \
            (buf.format, buf.shape, buf.readonly), (protocol, describe(made))
        assert loaded.c_contiguous
        assert loaded.tobytes() == expected, (protocol, describe(made))
        if loaded.nbytes:
            assert loaded.address != buf.address  # in-band: a copy
        loaded_all.append(loaded)
    assert buf.exports == 0  # in-band copies hold nothing of the original

    frames = []
    header = pickle.dumps(buf, protocol=5, buffer_callback=frames.append)
    # out-of-band exactly when the memory is one C-contiguous piece
    assert len(frames) == (1 if made.contiguous("C") else 0), describe(made)
    loaded = pickle.loads(header, buffers=frames)
    assert (loaded.format, loaded.shape, loaded.readonly) == \
        (buf.format, buf.shape, buf.readonly), describe(made)
    assert loaded.tobytes() == expected, describe(made)
    if frames:
        assert loaded.address == buf.address  # zero-copy
        assert buf.exports == 2  # the PickleBuffer, and the loaded Buffer through it
        with pytest.raises(BufferError):
            buf.release()
        assert not buf.released
    else:
        assert loaded.c_contiguous
        assert buf.exports == 0
    loaded_all.append(loaded)
    del loaded, frames

    # the memory goes back when the last sharer goes, whichever that is
    if original_first:
        del buf
        del made.chain[:]
        assert fakelib.releases(made.block_id) == (0 if made.contiguous("C") else 1)
        assert loaded_all[-1].tobytes() == expected  # still valid memory
        del loaded_all[:]
    else:
        del loaded_all[:]
        assert fakelib.releases(made.block_id) == 0
        assert made.buf.exports == 0
        del buf
        del made.chain[:]
    assert fakelib.releases(made.block_id) == 1, describe(made)


# ---------------------------------------------------------------------------
# 2. DLPack through NumPy
# ---------------------------------------------------------------------------


def data_address(arr):
    return arr.__array_interface__["data"][0]


@PROFILE
@given(layout=layouts())
def test_numpy_from_dlpack(fakelib, layout):
    made = make(fakelib, layout)
    buf = made.buf
    expected = made.expected_bytes()
    readonly = buf.readonly
    supported = made.dlpack_ok() and (NUMPY_VERSIONED or not readonly)

    if not supported:
        with pytest.raises(BufferError):
            np.from_dlpack(buf)
        for max_version in (None, (1, 0)):
            with pytest.raises(BufferError):
                buf.__dlpack__(max_version=max_version)
        assert buf.exports == 0
        if made.dlpack_format() and NUMPY_VERSIONED:
            # only the strides are not whole items: a C-order copy is fine
            copied = np.from_dlpack(buf, copy=True)
            assert copied.shape == buf.shape and copied.flags.writeable
            assert copied.tobytes(order="C") == expected, describe(made)
            assert buf.exports == 0
            del copied
        assert buf.tobytes() == expected
        del buf
        release_all(fakelib, made)
        return

    arr = np.from_dlpack(buf)
    assert arr.shape == buf.shape, describe(made)
    assert arr.dtype.itemsize == buf.itemsize
    assert arr.tobytes(order="C") == expected, describe(made)
    assert arr.flags.writeable == (not readonly)
    if buf.nbytes:
        assert data_address(arr) == buf.address  # zero-copy
        assert all(a == b for a, b, n in zip(arr.strides, buf.strides, buf.shape) if n > 1)
    assert buf.exports == 1

    if buf.nbytes:
        first, last = (0,) * buf.ndim, (-1,) * buf.ndim
        if readonly:
            with pytest.raises(ValueError, match="read-only"):
                arr[first] = arr[last]
        else:  # a write through the array is a write to the Buffer's memory
            arr[first] = arr[last]
            assert buf.tobytes() == arr.tobytes(order="C")
            expected = buf.tobytes()

    # the legacy capsule has no read-only flag: writable Buffers only
    if readonly:
        with pytest.raises(BufferError):
            buf.__dlpack__()
    else:
        capsule = buf.__dlpack__()
        assert buf.exports == 2
        del capsule  # never consumed: its destructor ends the export
        assert buf.exports == 1

    if NUMPY_VERSIONED:  # a private copy holds no export
        copied = np.from_dlpack(buf, copy=True)
        assert copied.tobytes(order="C") == expected and copied.shape == buf.shape
        assert copied.flags.writeable
        if buf.nbytes:
            assert data_address(copied) != buf.address
        assert buf.exports == 1
        del copied

    with pytest.raises(BufferError):
        buf.release()
    assert not buf.released and fakelib.releases(made.block_id) == 0
    assert arr.tobytes(order="C") == expected
    del arr
    assert buf.exports == 0
    del buf
    release_all(fakelib, made)
