"""Regression tests for core bugs the reliability harness found (one test a bug;
the fuzzer's own reproducers stay in fuzz/regressions/)."""

import membuf


def test_step_slice_of_a_single_item_does_not_overflow_the_stride(fakelib):
    # fuzz: strides[0] * step overflowed for a dimension of one item.
    buf = fakelib.from_spec(fakelib.alloc(8), format="q", ndim=1, shape=[1], strides=[8])
    part = buf[:: 2**61 - 1]
    assert part.shape == (1,)
    assert part.strides == (8,)  # a one-item dimension keeps its stride
    assert part.address == buf.address
    assert part.tobytes() == buf.tobytes()


def test_slice_of_an_empty_layout_stays_at_its_address(fakelib):
    # fuzz: start * strides[0] overflowed, or pointed outside the memory, in a
    # layout with a 0 dimension (whose strides the memory does not bound).
    for stride in (2**62, 47):
        buf = fakelib.from_spec(fakelib.alloc(0), format="B", ndim=2, shape=[3, 0], strides=[stride, 1])
        part = buf[2:3]
        assert part.shape == (1, 0)
        assert part.nbytes == 0
        assert part.address == buf.address
        assert membuf.address_of(memoryview(part)) == buf.address


def test_slice_of_an_empty_layout_with_a_huge_leading_shape(fakelib):
    # fuzz: the slice's item count overflowed before reaching the 0 dimension.
    buf = fakelib.from_spec(fakelib.alloc(0), ndim=3, shape=[2**62, 4, 0])
    part = buf[:]
    assert part.shape == (2**62, 4, 0)
    assert part.nbytes == 0 and part.tobytes() == b""
