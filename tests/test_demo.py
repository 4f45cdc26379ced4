"""`python -m membuf`: the quick demonstration proves each point it prints,
at its default size (small: it must finish in about a second; no time is
asserted), and `--version` prints the installed version."""

import re
import subprocess
import sys

import membuf


def run_module(*args, cwd):
    return subprocess.run([sys.executable, "-m", "membuf", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)


def test_version(tmp_path):
    result = run_module("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"membuf {membuf.__version__}\n"


def test_default_run_proves_each_point(tmp_path):
    result = run_module(cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "a C library hands out 16 MiB; we wrap it." in out  # the small default
    # zero-copy: the address malloc returned is the one a memoryview sees
    returned = re.search(r"^2\. malloc returned +0x([0-9a-f]+)$", out, re.M)
    seen = re.search(r"^   memoryview\(buf\) sees +0x([0-9a-f]+)  \(same: True\)$", out, re.M)
    assert returned and seen and returned.group(1) == seen.group(1), out
    # strict release refused under a view, before any callback
    assert re.search(r"^3\. buf\.release\(\) with views alive -> BufferError: membuf\.Buffer has "
                     r"\d+ exported buffers?", out, re.M), out
    assert "   callback calls so far: 0\n" in out
    # the callback exactly once, and no use after release
    assert "4. after dropping the views: released=True, callback calls: 1\n" in out
    assert "buf[0] after release -> ValueError: operation forbidden on released" in out
    assert out.rstrip().endswith("OK: the memory went back to free() exactly once."), out


def test_size_option_changes_the_block(tmp_path):
    result = run_module("--size", "2MiB", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a C library hands out 2 MiB; we wrap it." in result.stdout
    assert "callback calls: 1\n" in result.stdout
