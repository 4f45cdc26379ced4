#!/usr/bin/env python3
"""Instructions per operation, counted by valgrind's callgrind: independent
of machine load, so it explains a missed target on a noisy machine.
Optional (needs valgrind); not part of run.py.

    python benchmarks/callgrind.py [N]

C-level rows: for each C loop a child process runs under
`valgrind --tool=callgrind --toggle-collect=<loop function>`; reported: the
instructions (Ir) of the loop divided by N, and the top functions inside it.

Python-level rows (the constructors, beside their peers): each statement
runs in a Python loop N and 2N times, each in a child under callgrind; the
difference of the two totals divided by N is the statement's cost plus one
turn of the loop (an empty loop is the first row).  The issue targets are
printed as met / missed: owner= <= 1.3x and on_release= <= 1.6x the plain
from_address(a, n); plain <= 0.3x ctypes; from_buffer(bytes) <= 1.0x
pa.py_buffer(bytes) (when pyarrow is installed) and <= memoryview(bytes) +
the instructions of 30 ns (taken as 90 at ~3 instructions/ns).
"""

import pathlib
import re
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402

CASES = [
    # (label, module, loop function (C symbol), Python call with n)
    ("membuf wrap + drop, callback", "bench_capi", "wrap_membuf", "m.wrap_membuf(n)"),
    ("membuf wrap + drop, no callback", "bench_capi", "wrap_membuf_nocallback",
     "m.wrap_membuf_nocallback(n)"),
    ("PyMemoryView_FromMemory + drop", "bench_capi", "wrap_memoryview", "m.wrap_memoryview(n)"),
    ("floor: PyObject_New + drop", "bench_capi", "floor_alloc", "m.floor_alloc(n)"),
    ("export cycle SIMPLE: membuf", "bench_capi", "export_cycle",
     "m.export_cycle(n, membuf.from_address(a, 4096, owner=blk), 0)"),
    ("export cycle SIMPLE: bytes", "bench_capi", "export_cycle", "m.export_cycle(n, bytes(4096), 0)"),
    ("export cycle SIMPLE: memoryview", "bench_capi", "export_cycle",
     "m.export_cycle(n, memoryview(bytes(4096)), 0)"),
    ("Cython cdef class wrap + drop", "cy_class", "__pyx_pw_8cy_class_1wrap_loop",
     "m.wrap_loop(n)"),
    ("NumPy SimpleNewFromData + capsule", "np_wrap", "wrap_loop", "m.wrap_loop(n)"),
]

CHILD = """
import ctypes, sys, importlib.util, pathlib
sys.path.insert(0, {here!r})
import run, membuf
m = run._import_built({mod!r}, pathlib.Path({build!r}))
blk = ctypes.create_string_buffer(4096); a = ctypes.addressof(blk)
n = {n}
{call}
"""


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        build = pathlib.Path(tmp)
        mods, missing = run.build_all(build, print)
        for label, mod, sym, call in CASES:
            if mod not in mods:
                print(f"{label:40s} missing ({missing.get(mod)})")
                continue
            out = build / f"cg.{sym}.out"
            code = CHILD.format(here=str(HERE), mod=mod, build=str(build), n=n, call=call)
            proc = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 f"--toggle-collect={sym}", sys.executable, "-c", code],
                capture_output=True, text=True,
            )
            if proc.returncode != 0 or not out.exists():
                print(f"{label:40s} callgrind failed: {proc.stderr[-500:]}")
                continue
            ann = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)],
                                 capture_output=True, text=True).stdout
            total = re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", ann, re.M)
            ir = int(total.group(1).replace(",", "")) if total else 0
            print(f"{label:40s} {ir / n:8.1f} instructions/op")
            body = ann.split("file:function", 1)[-1].splitlines()[1:8]
            for line in body:
                if line.strip():
                    print("      " + line.strip()[:110])


PY_CASES = [
    # (label, setup, statement)
    ("empty loop", "", "pass"),
    ("membuf.from_address(a, n)", "", "membuf.from_address(a, 4096)"),
    ("membuf.from_address(a, n, owner=o)", "o = object()", "membuf.from_address(a, 4096, owner=o)"),
    ("membuf.from_address(a, n, on_release=f)", "f = lambda: None",
     "membuf.from_address(a, 4096, on_release=f)"),
    ("membuf.from_address(a, format=, shape=)", "",
     "membuf.from_address(a, format='d', shape=(16, 32))"),
    ("ctypes (c_char * n).from_address(a)", "", "(ctypes.c_char * 4096).from_address(a)"),
    ("membuf.from_buffer(bytes)", "b = bytes(4096)", "membuf.from_buffer(b)"),
    ("memoryview(bytes)", "b = bytes(4096)", "memoryview(b)"),
    ("pa.py_buffer(bytes)", "import pyarrow as pa; b = bytes(4096)", "pa.py_buffer(b)"),
]

PY_CHILD = """
import ctypes, membuf
blk = ctypes.create_string_buffer(4096); a = ctypes.addressof(blk)
{setup}
for _ in range({warm}):
    {stmt}
for _ in range({n}):
    {stmt}
"""


def _total_ir(code: str, out: pathlib.Path) -> int | None:
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", code],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 or not out.exists():
        return None
    for line in out.read_text().splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    return None


def python_rows(n: int) -> None:
    print(f"\nPython level: instructions per statement (+ one loop turn), N = {n}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, setup, stmt in PY_CASES:
            counts = []
            for k in (1, 2):
                code = PY_CHILD.format(setup=setup, stmt=stmt, warm=1000, n=k * n)
                counts.append(_total_ir(code, pathlib.Path(tmp) / f"py{len(results)}.{k}.out"))
            if None in counts:
                print(f"{label:45s} not measured (child failed: {setup or stmt})")
                continue
            results[label] = (counts[1] - counts[0]) / n
            print(f"{label:45s} {results[label]:8.1f} instructions")

    def target(name, value, limit):
        print(f"  target {name}: {value:.2f} (<= {limit}) {'met' if value <= limit else 'MISSED'}")

    plain = results.get("membuf.from_address(a, n)")
    if plain:
        for label, limit in [("membuf.from_address(a, n, owner=o)", 1.3),
                             ("membuf.from_address(a, n, on_release=f)", 1.6)]:
            if label in results:
                target(label.split(", ", 1)[-1].rstrip(")") + " / plain", results[label] / plain,
                       limit)
        if "ctypes (c_char * n).from_address(a)" in results:
            target("plain / ctypes", plain / results["ctypes (c_char * n).from_address(a)"], 0.3)
    fb = results.get("membuf.from_buffer(bytes)")
    if fb and "pa.py_buffer(bytes)" in results:
        target("from_buffer(bytes) / pa.py_buffer(bytes)", fb / results["pa.py_buffer(bytes)"], 1.0)
    if fb and "memoryview(bytes)" in results:
        print(f"  target from_buffer(bytes) - memoryview(bytes): "
              f"{fb - results['memoryview(bytes)']:.0f} instructions (<= 90: "
              f"{'met' if fb - results['memoryview(bytes)'] <= 90 else 'MISSED'})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--python":
        python_rows(int(sys.argv[2]) if len(sys.argv) > 2 else 20_000)
    else:
        main()
        python_rows(20_000)
