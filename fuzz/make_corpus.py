#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/ (and the hand-made regression inputs)
in the byte encoding that fuzz_membuf.c reads; fuzz/README.md documents it.

    python3 fuzz/make_corpus.py          # rewrites fuzz/corpus/seed-*

The format table is read from fuzz_membuf.c, so format names stay in step.
"""
import ast
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent

OPS = [
    "from_memory", "from_spec", "from_address", "getbuffer", "release_view", "memoryview",
    "slice", "index", "tobytes", "compare", "membuf_release", "check", "drop", "gc",
    "metadata", "cycle", "drop_owner", "py_release",
]
OP = {name: i for i, name in enumerate(OPS)}

# special_values[] in fuzz_membuf.c; byte 0xF0 + index selects one.
SPECIAL = {
    -1: 0, -2: 1, "MAX": 2, "MIN": 3, 1 << 32: 4, 1 << 62: 5, (1 << 62) + 1: 6, 1 << 31: 7,
    "MAX/2": 8, "MAX/3": 9, 65536: 10, 255: 11, "MIN+1": 12, -(1 << 32): 13,
    (1 << 61) - 1: 14, 1000003: 15,
}

# buffer_flags[] in fuzz_membuf.c (the index is the byte).
BUFFER_FLAGS = [
    "SIMPLE", "WRITABLE", "FORMAT", "ND", "STRIDES", "C_CONTIGUOUS", "F_CONTIGUOUS",
    "ANY_CONTIGUOUS", "INDIRECT", "CONTIG", "CONTIG_RO", "STRIDED", "STRIDED_RO", "RECORDS",
    "RECORDS_RO", "FULL", "FULL_RO", "ND|FORMAT", "SIMPLE|FORMAT", "C|FORMAT|WRITABLE",
]


def read_formats():
    src = (HERE / "fuzz_membuf.c").read_text()
    body = re.search(r"formats\[\] = \{(.*?)\};", src, re.S).group(1)
    items = []
    for tok in re.findall(r'NULL|"(?:[^"\\]|\\.)*"', body):
        items.append(None if tok == "NULL" else ast.literal_eval(tok))
    return items


FORMATS = read_formats()


def fmt(name):
    """Byte selecting a format of the table (None: NULL)."""
    return bytes([FORMATS.index(name)])


def raw_fmt(text):
    """Byte selecting a raw format string taken from the input."""
    data = text.encode("latin-1")
    assert len(data) < 8
    return bytes([len(FORMATS), len(data)]) + data


def block(size, seed=0x11):
    assert 0 <= size < 200
    return bytes([size, seed])


def region(ptr="base", off=0, length="all", n=0):
    mode = {"base": 0, "off": 1, "null": 2}[ptr]
    out = b""
    lenbits = {"all": 0, "n": 1, "zero": 2, "huge": 3, "sizemax": 3}[length]
    mode |= lenbits << 2
    if length == "sizemax":
        mode |= 0x10
    out = bytes([mode])
    if ptr == "off":
        out += bytes([off])
    if length == "n":
        out += bytes([n])
    if length == "huge":
        out += bytes([n])
    return out


def shape_byte(v):
    if isinstance(v, int) and 0 <= v <= 7:
        return v
    if isinstance(v, int) and 0 <= v < 48:
        return 0xC0 + v
    return 0xF0 + SPECIAL[v]


def stride_byte(v, itemsize):
    """A stride in bytes: a multiple of the item size, a small raw value, or special."""
    if isinstance(v, int) and v % itemsize == 0 and -8 <= v // itemsize <= 7:
        return (v // itemsize) + 8
    if isinstance(v, int) and -32 <= v < 32:
        return 0x80 + (v + 32)
    if isinstance(v, int) and v % itemsize == 0 and 0 <= v // itemsize < 48:
        return 0xC0 + v // itemsize
    return 0xF0 + SPECIAL[v]


def from_memory(slot, size, reg=None, flags=0, release=True, seed=0x11):
    return (bytes([OP["from_memory"], slot]) + block(size, seed) + (reg or region()) +
            bytes([flags, 0 if release else 7]))


def from_spec(slot, size, fmt_bytes, ndim, shape=None, strides=None, itemsize=1, reg=None,
              flags=0, owner=False, release=True, seed=0x22):
    if fmt_bytes is None:
        fmt_bytes = fmt(None)  # a NULL format
    arrays = (1 if shape is not None else 0) | (2 if strides is not None else 0)
    arrays |= 0x80 if owner else 0
    arrays |= 0 if release else 0x70
    out = bytes([OP["from_spec"], slot]) + block(size, seed) + (reg or region())
    out += bytes([flags]) + fmt_bytes + bytes([(ndim + 2) % 73, arrays])
    if shape is not None:
        assert len(shape) == max(ndim, 0)
        out += bytes(shape_byte(v) for v in shape)
    if strides is not None:
        assert len(strides) == max(ndim, 0)
        out += bytes(stride_byte(v, itemsize) for v in strides)
    return out


def from_address(slot, size, reg=None, opts=0, seed=0x33, neg=0):
    out = bytes([OP["from_address"], slot]) + block(size, seed) + (reg or region())
    out += bytes([opts])
    if opts & 3 == 3:
        out += bytes([neg])
    return out


def getbuffer(slot, view, flags):
    return bytes([OP["getbuffer"], slot, view, BUFFER_FLAGS.index(flags)])


def release_view(view):
    return bytes([OP["release_view"], view])


def memoryview(src, dst):
    return bytes([OP["memoryview"], src, dst])


def index_byte(v):
    if v is None:
        return 0xC0
    if isinstance(v, int) and -16 <= v < 16:
        return v + 16
    return 0xF0 + SPECIAL[v]


def slice_(src, dst, start=None, stop=None, step=None):
    return bytes([OP["slice"], src, dst, index_byte(start), index_byte(stop), index_byte(step)])


def index(src, dst, key):
    if key is Ellipsis:
        return bytes([OP["index"], src, dst, 0xC0])
    if isinstance(key, tuple):
        return bytes([OP["index"], src, dst, 0xE0 | len(key)]) + bytes(index_byte(k) for k in key)
    return bytes([OP["index"], src, dst, 0x00, index_byte(key)])


def tobytes(src, dst, hex_=False):
    return bytes([OP["tobytes"], src, dst, 1 if hex_ else 0])


def compare(a, b, ne=False, with_bytes=False, extra=False):
    return bytes([OP["compare"], a, b, (1 if ne else 0) | (2 if with_bytes else 0) |
                  (4 if extra else 0)])


def membuf_release(slot, defer=False, bad=None, null=False):
    how = 1 if defer else 0
    if bad is not None:
        how = 3
    if null:
        how |= 0xF0
    out = bytes([OP["membuf_release"], slot, how])
    if bad is not None:
        out += bytes([bad])
    return out


def check(slot):
    return bytes([OP["check"], slot])


def drop(slot):
    return bytes([OP["drop"], slot])


def gc():
    return bytes([OP["gc"]])


def metadata(slot, which):
    """which: 0..13 an attribute, 0x80 repr, 0xC0 len."""
    return bytes([OP["metadata"], slot, which])


def cycle(blk, slot):
    return bytes([OP["cycle"], blk, slot])


def drop_owner(blk):
    return bytes([OP["drop_owner"], blk])


def py_release(slot, how):
    """how: 0 release(), 1 release(False), 5 release(True), 2 __enter__, 3 __exit__."""
    return bytes([OP["py_release"], slot, how])


SEEDS = {
    # Plain bytes: every export kind, tobytes, hex, ==, repr, len, strict release.
    "bytes-exports": from_memory(0, 16) + getbuffer(0, 0, "SIMPLE") + getbuffer(0, 1, "FULL_RO")
    + getbuffer(0, 2, "WRITABLE") + tobytes(0, 1) + tobytes(0, 2, hex_=True)
    + compare(0, 0, with_bytes=True) + compare(0, 0, with_bytes=True, extra=True)
    + metadata(0, 0x80) + metadata(0, 0xC0) + membuf_release(0) + release_view(0)
    + release_view(1) + membuf_release(0) + getbuffer(0, 0, "SIMPLE") + check(0) + drop(0),
    # Creation errors: NULL with a length, huge lengths, unknown flags; valid NULL/0.
    "creation-errors": from_memory(0, 8, region("null", length="n", n=4))
    + from_memory(1, 8, region(length="huge", n=3)) + from_memory(2, 8, region(length="sizemax"))
    + from_memory(3, 8, flags=0xE4) + from_memory(4, 8, region("null", length="zero"))
    + getbuffer(4, 0, "FULL") + metadata(4, 0x80) + from_memory(5, 0, release=False),
    # A writable 2-D int array: C-contiguous exports, memoryview, items, tuples.
    "typed-2d": from_spec(0, 24, fmt("i"), 2, shape=[2, 3], flags=1)
    + getbuffer(0, 0, "FULL_RO") + getbuffer(0, 1, "C|FORMAT|WRITABLE")
    + getbuffer(0, 2, "F_CONTIGUOUS") + getbuffer(0, 3, "SIMPLE") + memoryview(0, 1)
    + index(0, 2, (1, 2)) + index(0, 3, 1) + index(1, 4, (0, 0)) + index(0, 5, Ellipsis)
    + tobytes(0, 6) + tobytes(1, 7) + compare(0, 1) + metadata(0, 8) + metadata(0, 9)
    + metadata(0, 0x80) + membuf_release(0) + release_view(0) + release_view(1) + drop(1)
    + drop(5) + membuf_release(0),
    # Explicit strides: Fortran order, broadcasting (stride 0), an empty dimension.
    "strided": from_spec(0, 24, fmt("h"), 2, shape=[3, 4], strides=[2, 6], itemsize=2)
    + getbuffer(0, 0, "F_CONTIGUOUS") + getbuffer(0, 1, "C_CONTIGUOUS") + tobytes(0, 1)
    + from_spec(1, 8, fmt("q"), 2, shape=[1000003, 1], strides=[0, 8], itemsize=8)
    + getbuffer(1, 2, "STRIDED_RO") + index(1, 3, -1) + slice_(1, 4, 5, None, 3)
    + from_spec(2, 0, fmt("d"), 3, shape=[4, 0, 2], strides=[1 << 62, 8, 8], itemsize=8)
    + getbuffer(2, 3, "FULL_RO") + slice_(2, 5, 0, 1) + metadata(2, 0x80),
    # Layouts that must be refused: outside, negative strides, overflow, bad ndim.
    "bad-layouts": from_spec(0, 16, fmt("i"), 1, shape=[5], strides=[4], itemsize=4)
    + from_spec(1, 16, fmt("i"), 1, shape=[2], strides=[-4], itemsize=4)
    + from_spec(2, 16, None, 2, shape=["MAX", 4])
    + from_spec(3, 16, None, 1, shape=[-1])
    + from_spec(4, 16, None, 65, shape=[1] * 65)
    + from_spec(5, 16, None, -1) + from_spec(6, 16, None, 3)
    + from_spec(7, 16, None, 1, strides=[1]),
    # Formats: valid, invalid, zero-sized, and raw bytes from the input.
    "formats": from_spec(0, 16, fmt("@B"), 1) + from_spec(1, 16, fmt("<i"), 1)
    + from_spec(2, 12, fmt("3s"), 1) + from_spec(3, 16, fmt("0s"), 1)
    + from_spec(4, 16, fmt("zz"), 1) + from_spec(5, 16, raw_fmt("T{i:x:}"), 1)
    + from_spec(6, 4, raw_fmt("2h"), 0, shape=[], itemsize=4)
    + getbuffer(6, 0, "FULL_RO") + index(6, 7, ()) + tobytes(6, 8) + metadata(6, 0xC0),
    # A 0-dim Buffer and the big-ndim limit.
    "ndim-limits": from_spec(0, 8, fmt("d"), 0, shape=[], itemsize=8)
    + getbuffer(0, 0, "FULL_RO") + getbuffer(0, 1, "SIMPLE|FORMAT") + index(0, 1, Ellipsis)
    + from_spec(2, 1, None, 64, shape=[1] * 64) + getbuffer(2, 2, "FULL_RO")
    + slice_(2, 3, None, None, -1) + tobytes(2, 4),
    # Owners: a cycle through the owner, collected by gc; the owner outlives release.
    "owner-cycle": from_spec(0, 32, None, 1, shape=[32], owner=True) + cycle(0, 0) + drop(0)
    + drop_owner(0) + gc() + from_spec(1, 8, None, 1, owner=True) + memoryview(1, 2)
    + cycle(1, 2) + membuf_release(1, defer=True) + drop(1) + drop(2) + drop_owner(1) + gc(),
    # Slices: chains, negative steps, deferred release of the parent.
    "slice-chain": from_memory(0, 64) + slice_(0, 1, 2, -4, 2) + slice_(1, 2, None, None, -3)
    + slice_(2, 3, 1, -1) + getbuffer(3, 0, "FULL_RO") + membuf_release(0)
    + membuf_release(0, defer=True) + getbuffer(0, 1, "SIMPLE") + tobytes(3, 4)
    + drop(1) + drop(2) + release_view(0) + drop(3),
    # Typed slices, then strict / deferred / bad-flag releases of the slice itself.
    "typed-slice-release": from_spec(0, 40, fmt("q"), 1, shape=[5], itemsize=8)
    + slice_(0, 1, None, None, 2) + getbuffer(1, 0, "STRIDED_RO") + membuf_release(1)
    + membuf_release(1, bad=4) + membuf_release(1, defer=True) + release_view(0)
    + check(1) + membuf_release(0) + membuf_release(3, null=True),
    # The Python face: from_address with owner, bad readonly, negative size.
    "from-address": from_address(0, 16, opts=0x10) + getbuffer(0, 0, "FULL_RO")
    + from_address(1, 16, opts=0x0C) + from_address(2, 16, opts=0x03, neg=5)
    + from_address(3, 16, opts=0x04) + getbuffer(3, 1, "WRITABLE") + cycle(0, 0)
    + drop(0) + release_view(0) + drop_owner(0) + gc(),
    # release() / with from Python, while a memoryview is alive and after.
    "py-release": from_memory(0, 10) + memoryview(0, 1) + py_release(0, 2) + py_release(0, 3)
    + py_release(0, 0) + drop(1) + py_release(0, 3) + py_release(0, 2)
    + from_memory(2, 10) + getbuffer(2, 0, "CONTIG_RO") + py_release(2, 5) + metadata(2, 3)
    + release_view(0) + metadata(2, 3),
    # A pointer inside the block and a partial length.
    "interior-ptr": from_spec(0, 40, fmt("H"), 1, reg=region("off", off=4, length="n", n=32),
                              itemsize=2)
    + getbuffer(0, 0, "ND") + compare(0, 0) + tobytes(0, 1) + index(0, 2, -3)
    + from_memory(1, 40, reg=region("off", off=7, length="n", n=9), flags=1)
    + compare(1, 1, with_bytes=True) + compare(1, 0),
}

REGRESSIONS = {
    # buffer_methods.c membuf_slice: strides[0] * step overflows (signed) on a
    # dimension of 0 or 1 items, whose stride is not bounded by the layout.
    "slice-step-stride-overflow-q": from_spec(0, 8, fmt("q"), 1, shape=[1], strides=[8],
                                              itemsize=8)
    + slice_(0, 1, None, None, (1 << 61) - 1),
    # membuf_slice: self->buf + start * strides[0] with count > 0 on an empty
    # layout (a later dimension is 0): the product overflows / the address
    # lands outside [ptr, ptr+len].
    "slice-empty-layout-start-overflow": from_spec(0, 0, None, 2, shape=[3, 0],
                                                   strides=[1 << 62, 1])
    + slice_(0, 1, 2, 3) + getbuffer(1, 0, "FULL_RO"),
    # membuf_new_view: nitems *= shape[i] overflows for an empty layout
    # (2**62 * 4 * 0 items): "a sub-layout of a valid layout" may overflow.
    "slice-empty-layout-nitems-overflow": from_spec(0, 0, None, 3, shape=[1 << 62, 4, 0])
    + slice_(0, 1),
    "slice-empty-layout-address-outside": from_spec(0, 0, None, 2, shape=[3, 0],
                                                    strides=[47, 1])
    + slice_(0, 1, 2, 3) + getbuffer(1, 0, "FULL_RO"),
}


def main():
    corpus = HERE / "corpus"
    corpus.mkdir(exist_ok=True)
    for old in corpus.glob("seed-*"):
        old.unlink()
    for name, data in SEEDS.items():
        (corpus / f"seed-{name}").write_bytes(data)
    regressions = HERE / "regressions"
    regressions.mkdir(exist_ok=True)
    for name, data in REGRESSIONS.items():
        (regressions / name).write_bytes(data)
    print(f"{len(SEEDS)} seeds in {corpus}, {len(REGRESSIONS)} regressions in {regressions}")


if __name__ == "__main__":
    main()
