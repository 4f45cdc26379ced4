"""The examples in examples/ build and keep their promises."""

import pathlib

import pytest

from conftest import build_extension

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


FREE_THREADED = bool(__import__("sysconfig").get_config_var("Py_GIL_DISABLED"))


@pytest.fixture(scope="module", params=[
    "version-specific",
    pytest.param("limited-api", marks=pytest.mark.skipif(
        FREE_THREADED, reason="free-threaded CPython cannot load abi3 extensions before 3.15")),
])
def blobs(request, tmp_path_factory):
    """The example, built as usual and as an abi3 extension: membuf.h works
    under Py_LIMITED_API (3.11) too."""
    limited = request.param == "limited-api"
    module = build_extension(
        "blobs", ["blobs.c"], tmp_path_factory.mktemp("blobs"), EXAMPLES / "c_extension",
        limited_api=limited,
    )
    assert module.__file__.endswith(".abi3.so") == limited
    return module


def test_blob_is_wrapped_without_copy_and_freed_once(blobs):
    buf = blobs.make(5)
    assert bytes(buf) == b"xxxxx"
    assert buf.readonly
    before = blobs.freed()
    view = memoryview(buf)
    with pytest.raises(BufferError, match="1 exported buffer"):
        buf.release()
    assert blobs.freed() == before
    view.release()
    buf.release()
    buf.release()
    assert blobs.freed() == before + 1


def test_blob_freed_when_collected(blobs):
    before = blobs.freed()
    buf = blobs.make(1 << 20)
    assert buf.nbytes == 1 << 20
    del buf
    assert blobs.freed() == before + 1


def test_negative_size_is_a_value_error(blobs):
    with pytest.raises(ValueError, match="negative size"):
        blobs.make(-1)
