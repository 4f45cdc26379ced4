"""The stubs (src/membuf/__init__.pyi) tell the truth: mypy's stubtest finds
no difference from the runtime, and a user script that uses every public
name passes `mypy --strict`, while misuses the stubs exist to catch fail."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ALLOWLIST = HERE / "stubtest_allowlist.txt"

USER_SCRIPT = """
import ctypes

import membuf

mem = (ctypes.c_double * 4)()
typed: membuf.Buffer = membuf.from_address(
    ctypes.addressof(mem), 32, format="d", shape=(2, 2), strides=[16, 8], readonly=False,
    owner=mem, on_release=lambda: None)
from_ctypes = membuf.from_address(mem)
pointer = membuf.from_address(ctypes.cast(mem, ctypes.POINTER(ctypes.c_double)), shape=(4,))
wrapped = membuf.from_buffer(bytearray(8), readonly=None, format="B", shape=[8], strides=None,
                             on_release=None)
address: int = membuf.address_of(typed) + typed.address
layout: tuple[tuple[int, ...], tuple[int, ...], str, int, int] = (
    typed.shape, typed.strides, typed.format, typed.itemsize, typed.ndim)
flags: list[bool] = [typed.readonly, typed.released, typed.c_contiguous, typed.f_contiguous,
                     typed.contiguous]
counts: list[int] = [typed.nbytes, typed.exports, len(wrapped)]
owner: object = typed.owner
part: membuf.Buffer = wrapped[1:]
item: object = wrapped[0]
wrapped[0] = 1
data: bytes = wrapped.tobytes()
text: str = wrapped.hex(":", 2)
equal: bool = wrapped == b"\\0" * 8
capsule = from_ctypes.__dlpack__(max_version=(1, 0))
device: tuple[int, int] = from_ctypes.__dlpack_device__()
with wrapped as same:
    same.release(defer=True)
versions: int = membuf.API_VERSION + membuf.ABI_VERSION
version: str = membuf.__version__
include: str = membuf.get_include()
view = memoryview(typed)
"""

# Each of these is a mistake the stubs must let mypy catch.
MISUSES = [
    ("membuf.from_address(mem, owner=object())", "No overload variant"),
    ("membuf.from_address(1, 8, shape=(2.0,))", "incompatible type"),
    ("membuf.from_buffer(3)", "incompatible type"),
    ("membuf.from_buffer(b'', readonly='yes')", "incompatible type"),
    ("membuf.from_address(1, 8).release(defer=None)", "incompatible type"),
    ("x: str = membuf.from_address(1, 8).nbytes", "Incompatible types in assignment"),
]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=cwd, check=False)


def test_stubtest_finds_no_difference(tmp_path):
    result = run("mypy.stubtest", "membuf", "--allowlist", str(ALLOWLIST),
                 "--ignore-unused-allowlist", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_user_script_passes_mypy_strict(tmp_path):
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(USER_SCRIPT))
    result = run("mypy", "--strict", "--no-incremental", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("line, message", MISUSES, ids=[m[0] for m in MISUSES])
def test_mypy_catches_misuse(tmp_path, line, message):
    script = tmp_path / "misuse.py"
    script.write_text(f"import ctypes\nimport membuf\nmem = (ctypes.c_double * 4)()\n{line}\n")
    result = run("mypy", "--strict", "--no-incremental", str(script), cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert message in result.stdout
