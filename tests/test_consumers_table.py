"""docs/consumers.md is tested as written.

* The table: every row is a case here, with the same column.
  - "holds": while the consumer's object lives, buf.exports > 0 and a strict
    release() raises BufferError; once it is gone, release() goes through.
  - "during the call": the consumer refuses a released Buffer (so it reads
    through an export), and once it returns nothing is held: release()
    goes through while its result lives (sockets: the export is shown
    alive while sendall blocks, from another thread).
  - "bypasses": shown in a child process (which never reads the memory
    again): the consumer's object lives, buf.exports == 0 and release()
    succeeds under it.  Its safe alternative is then shown to hold.
* The multiprocessing recipe runs as printed, as a script.

A consumer that is not installed is skipped with the reason.
"""

import ctypes
import gc
import hashlib
import pathlib
import re
import socket
import struct
import subprocess
import sys
import threading
import zlib

import pytest

import membuf

DOC = pathlib.Path(__file__).parent.parent / "docs" / "consumers.md"
N = 64 * 64


def need(module):
    return pytest.importorskip(module, reason=f"{module} is not installed")


def new_buffer(writable=False, n=N):
    backing = bytearray(bytes(range(256)) * (n // 256 + 1))[:n]
    return membuf.from_address(membuf.address_of(backing), n, readonly=not writable,
                               owner=backing)


def typed_buffer():
    """A read-only uint8 Buffer of shape (64, 64) (DLPack needs no more)."""
    return membuf.from_buffer(bytes(range(256)) * 16, shape=(64, 64))


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------


def table_rows():
    """{consumer cell: (kind, safe alternative cell)} from docs/consumers.md."""
    lines = DOC.read_text().splitlines()
    start = lines.index("<!-- consumers-table: tests/test_consumers_table.py checks every row -->")
    rows = {}
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        consumer, export, alternative = (c.strip() for c in line.strip("|").split("|"))
        if export.startswith("holds"):
            kind = "holds"
        elif export.startswith("during the call"):
            kind = "call"
        elif export.startswith("**bypasses**"):
            kind = "bypasses"
        else:
            raise AssertionError(f"docs/consumers.md: unknown export column {export!r}")
        rows[consumer] = (kind, alternative)
    return rows


# "holds": consumer cell -> (module needed, writable, factory(buf) -> object)
def _pil(buf):
    from PIL import Image

    return Image.frombuffer("L", (64, 64), buf, "raw", "L", 0, 1)


def _np(name):
    def make(buf):
        import numpy as np

        return getattr(np, name)(buf)
    return make


_ffi = None


def _cffi(buf):
    global _ffi
    import cffi

    _ffi = _ffi or cffi.FFI()
    return _ffi.from_buffer(buf)


HOLDS = {
    "`memoryview(buf)`": (None, False, memoryview),
    "`np.frombuffer(buf)`": ("numpy", False, _np("frombuffer")),
    "`np.asarray(buf)`": ("numpy", False, _np("asarray")),
    "`np.from_dlpack(buf)`": ("numpy", "typed", lambda b: __import__("numpy").from_dlpack(b)),
    "`torch.from_dlpack(buf)`": ("torch", "typed", lambda b: __import__("torch").from_dlpack(b)),
    "`pa.py_buffer(buf)`": ("pyarrow", False, lambda b: __import__("pyarrow").py_buffer(b)),
    '`PIL.Image.frombuffer(mode, size, buf, "raw", mode, 0, 1)`': ("PIL", False, _pil),
    "`cffi.FFI().from_buffer(buf)`": ("cffi", False, _cffi),
    "`(ctypes.c_char * n).from_buffer(buf)`":
        (None, True, lambda b: (ctypes.c_char * b.nbytes).from_buffer(b)),
}


def _sendall(buf):  # used for the released-Buffer check only
    a, b = socket.socketpair()
    with a, b:
        a.sendall(buf)


# "during the call": consumer cell -> (module needed, call(buf) -> result)
DURING_CALL = {
    "`hashlib.sha256(buf)`": (None, hashlib.sha256),
    "`zlib.compress(buf)`": (None, zlib.compress),
    "`re.search(pattern, buf)`": (None, lambda b: re.search(rb"\x05\x06", b)),
    "`struct.unpack_from(fmt, buf)`": (None, lambda b: struct.unpack_from("<4I", b, 8)),
    "`sock.sendall(buf)`": (None, _sendall),
}

# "bypasses": consumer cell -> (module needed, code run in a child with `buf`
# bound, making `obj`; module, writable, factory of the safe alternative)
BYPASSES = {
    "`torch.frombuffer(buf, dtype=...)`": (
        "torch",
        "import torch, warnings; warnings.simplefilter('ignore');"
        " obj = torch.frombuffer(buf, dtype=torch.uint8)",
        ("torch", "typed", lambda b: __import__("torch").from_dlpack(b))),
    "`torch.asarray(buf)`": (
        "torch",
        "import torch, warnings; warnings.simplefilter('ignore'); obj = torch.asarray(buf)",
        ("torch", "typed", lambda b: __import__("torch").from_dlpack(b))),
    "`pa.foreign_buffer(buf.address, buf.nbytes, base=buf)`": (
        "pyarrow",
        "import pyarrow as pa; obj = pa.foreign_buffer(buf.address, buf.nbytes, base=buf)",
        ("pyarrow", False, lambda b: __import__("pyarrow").py_buffer(b))),
    "`(ctypes.c_char * n).from_address(buf.address)`": (
        None,
        "import ctypes; obj = (ctypes.c_char * buf.nbytes).from_address(buf.address)",
        (None, True, lambda b: (ctypes.c_char * b.nbytes).from_buffer(b))),
    '`ffi.cast("char *", buf.address)`': (
        "cffi",
        "import cffi; ffi = cffi.FFI(); obj = ffi.cast('char *', buf.address)",
        ("cffi", False, _cffi)),
}


def test_table_rows_are_the_cases():
    rows = table_rows()
    cases = {**{k: "holds" for k in HOLDS}, **{k: "call" for k in DURING_CALL},
             **{k: "bypasses" for k in BYPASSES}}
    assert {k: kind for k, (kind, _) in rows.items()} == cases
    for consumer, (kind, alternative) in rows.items():
        assert bool(alternative) == (kind == "bypasses"), consumer


def assert_holds(module, writable, factory):
    if module:
        need(module)
    buf = typed_buffer() if writable == "typed" else new_buffer(writable=bool(writable))
    obj = factory(buf)
    assert buf.exports > 0
    with pytest.raises(BufferError):
        buf.release()
    assert not buf.released
    del obj
    gc.collect()
    assert buf.exports == 0
    buf.release()
    assert buf.released


@pytest.mark.parametrize("consumer", HOLDS)
def test_holds(consumer):
    assert_holds(*HOLDS[consumer])


@pytest.mark.parametrize("consumer", DURING_CALL)
def test_during_the_call(consumer):
    module, call = DURING_CALL[consumer]
    if module:
        need(module)
    buf = new_buffer()
    result = call(buf)
    assert buf.exports == 0
    buf.release()  # while the result lives
    assert buf.released
    if isinstance(result, re.Match):
        with pytest.raises(TypeError):  # the match exports again, and is refused
            result.group()
    with pytest.raises((ValueError, TypeError)) as info:  # it goes through the buffer protocol
        call(buf)
    assert "released" in str(info.value) or "bytes-like" in str(info.value)


def test_sendall_holds_the_export_while_it_blocks():
    n = 16 << 20  # far more than the socket buffers: sendall blocks until read
    buf = new_buffer(n=n)
    a, b = socket.socketpair()
    sender = threading.Thread(target=a.sendall, args=(buf,))
    with a, b:
        sender.start()
        first = b.recv(65536)  # the sender is inside sendall now, and cannot be done
        assert first == bytes(range(256)) * (len(first) // 256) + bytes(range(len(first) % 256))
        assert buf.exports >= 1
        with pytest.raises(BufferError):
            buf.release()
        got = len(first)
        while got < n:
            chunk = b.recv(1 << 20)
            assert chunk
            got += len(chunk)
        sender.join()
    assert buf.exports == 0
    buf.release()


CHILD = """
import gc, sys, weakref
import membuf
backing = bytearray(b"x" * 4096)
buf = membuf.from_address(membuf.address_of(backing), 4096, owner=backing)
del backing
{code}
exports = buf.exports
buf.release()           # goes through under obj: the memory is given back
gc.collect()
# obj is still alive and still points at the memory (never read it again)
print(exports, buf.released, obj is not None)
"""


@pytest.mark.parametrize("consumer", BYPASSES)
def test_bypasses(consumer):
    module, code, alternative = BYPASSES[consumer]
    if module:
        need(module)
    proc = subprocess.run([sys.executable, "-c", CHILD.format(code=code)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "True", "True"]
    # and the safe alternative does hold
    assert_holds(*alternative)


# ---------------------------------------------------------------------------
# the multiprocessing recipe, as printed
# ---------------------------------------------------------------------------


def test_multiprocessing_recipe(tmp_path):
    text = DOC.read_text()
    section = text[text.index("### multiprocessing over shared memory"):]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    script = tmp_path / "recipe.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "leaked" not in proc.stderr, proc.stderr  # resource_tracker: nothing left behind
