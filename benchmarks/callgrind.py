#!/usr/bin/env python3
"""Instructions per operation, counted by valgrind's callgrind: independent
of machine load, so it explains a missed target on a noisy machine.
Needs valgrind.  run.py calls c_rows() (when valgrind is installed) to put
the C-level counts beside its ns/op tables and judge the instruction targets.

    python benchmarks/callgrind.py [N]

C-level rows: for each C loop a child process runs under
`valgrind --tool=callgrind --toggle-collect=<loop function>`; reported: the
instructions (Ir) of the loop divided by N, and the top functions inside it.

Python-level rows (the constructors, beside their peers): each statement
runs in a Python loop inside a function (its names are locals, bound as
default arguments, so no global-dict lookups are counted) N and 2N times, each in a child under callgrind; the
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


# Where each CASES row sits in run.py's results: (section, row key).
RUN_KEYS = {
    "membuf wrap + drop, callback": ("c_wrap", "membuf"),
    "membuf wrap + drop, no callback": ("c_wrap", "membuf_nocallback"),
    "PyMemoryView_FromMemory + drop": ("c_wrap", "memoryview"),
    "floor: PyObject_New + drop": ("c_wrap", "floor"),
    "export cycle SIMPLE: membuf": ("c_export_simple", "membuf"),
    "export cycle SIMPLE: bytes": ("c_export_simple", "bytes"),
    "export cycle SIMPLE: memoryview": ("c_export_simple", "memoryview"),
    "Cython cdef class wrap + drop": ("c_wrap", "cython_class"),
    "NumPy SimpleNewFromData + capsule": ("c_wrap", "numpy"),
}


def _one_case(build_dir: pathlib.Path, mod: str, sym: str, call: str, n: int):
    """Run one CASES row under callgrind: (instructions/op | None, top lines, error)."""
    out = build_dir / f"cg.{mod}.{sym}.{abs(hash(call))}.out"
    code = CHILD.format(here=str(HERE), mod=mod, build=str(build_dir), n=n, call=call)
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         f"--toggle-collect={sym}", sys.executable, "-c", code],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 or not out.exists():
        return None, [], f"callgrind failed: {proc.stderr[-500:]}"
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)],
                         capture_output=True, text=True).stdout
    total = re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", ann, re.M)
    if not total:
        return None, [], "callgrind_annotate printed no PROGRAM TOTALS"
    ir = int(total.group(1).replace(",", ""))
    body = ann.split("file:function", 1)[-1].splitlines()[1:8]
    return ir / n, [ln.strip()[:110] for ln in body if ln.strip().strip("-")], None


def c_rows(build_dir: pathlib.Path, mods: dict, missing: dict, n: int = 100_000,
           log=None, details: dict | None = None) -> dict:
    """Instructions per operation of every CASES row, measured on the
    extensions already built in build_dir (run.build_all).  Returns
    {label: instructions/op, or None if the row could not be measured};
    the reason a row is None, and the top functions of each measured row,
    go to `details` ({label: {"error": str} or {"top": [lines]}}) if given.
    The children run in parallel (instruction counts do not depend on load)."""
    import concurrent.futures
    import os

    results, details = {}, details if details is not None else {}
    jobs = {}
    workers = max(1, min(len(CASES), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for label, mod, sym, call in CASES:
            if mod not in mods:
                results[label] = None
                details[label] = {"error": f"missing ({missing.get(mod)})"}
                continue
            jobs[label] = pool.submit(_one_case, build_dir, mod, sym, call, n)
        for label, job in jobs.items():
            ir, top, err = job.result()
            results[label] = ir
            details[label] = {"error": err} if err else {"top": top}
            if log and err:
                log(f"!! callgrind {label}: {err}")
    return {label: results[label] for label, *_ in CASES}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        build = pathlib.Path(tmp)
        mods, missing = run.build_all(build, print)
        details = {}
        rows = c_rows(build, mods, missing, n, details=details)
        for label, ir in rows.items():
            if ir is None:
                print(f"{label:40s} {details[label]['error']}")
                continue
            print(f"{label:40s} {ir:8.1f} instructions/op")
            for line in details[label]["top"]:
                print("      " + line)


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

# The statement runs inside a function with every name it may use bound as
# a default argument (a local), so no global-dict lookup is in the count.
PY_CHILD = """
import ctypes, membuf
blk = ctypes.create_string_buffer(4096); a = ctypes.addressof(blk)
o = f = b = pa = None
{setup}
def run(n, a=a, o=o, f=f, b=b, membuf=membuf, ctypes=ctypes, pa=pa):
    for _ in range(n):
        {stmt}
run({warm})
run({n})
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
