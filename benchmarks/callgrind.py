#!/usr/bin/env python3
"""Instructions per operation of the C-level rows, counted by valgrind's
callgrind: independent of machine load, so it explains a missed target on a
noisy machine.  Optional (needs valgrind); not part of run.py.

    python benchmarks/callgrind.py [N]

For each C loop it runs a child process under
`valgrind --tool=callgrind --toggle-collect=<loop function>` and reports the
instructions (Ir) of the loop divided by N, and the top functions inside it.
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


if __name__ == "__main__":
    main()
