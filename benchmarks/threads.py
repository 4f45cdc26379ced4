#!/usr/bin/env python3
"""C-level cost of membuf on this interpreter, in one thread and in two.

    python benchmarks/threads.py [--n N] [--repeat R]

Builds the C harness (benchmarks/capi/bench_capi.c) against the installed
membuf for the running interpreter, then times, in C loops (ns per
operation, median of R interleaved repeats):

* wrap + drop: ``MemBuf_FromMemory`` with a release callback, then
  ``Py_DECREF``;
* export cycle: ``PyObject_GetBuffer(PyBUF_SIMPLE)`` + ``PyBuffer_Release``
  of a Buffer the thread owns;
* the same export cycle with both threads on one shared Buffer (on
  free-threaded CPython its per-object lock is then contended);

once in one thread, then in two threads started together (each its own
loop).  "2 threads" is the wall time of both loops divided by the work of
one thread: ~1x the one-thread figure when they really run in parallel,
~2x when a GIL serializes them.  Run it under CPython 3.13 and 3.13t to
compare the builds (the README's free-threading table comes from that).
Nothing is asserted: speed is reported, never tested.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import sysconfig
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (the benchmark's builder: same flags as the full run)


def gil_state() -> str:
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        return "GIL build"
    return "free-threaded, GIL " + ("ON" if sys._is_gil_enabled() else "off")


def in_threads(count: int, job) -> float:
    """Wall seconds for `count` threads each running job(), started together."""
    barrier = threading.Barrier(count + 1)
    errors = []

    def body():
        barrier.wait()
        try:
            job()
        except BaseException as exc:  # reported below, never swallowed
            errors.append(exc)

    threads = [threading.Thread(target=body) for _ in range(count)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2_000_000, help="operations per loop")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    import membuf

    # Only the C harness: the peers' modules (Cython, NumPy's C API) do not
    # declare free-threading support, and importing one turns the GIL on.
    run.EXTENSIONS = {"bench_capi": run.EXTENSIONS["bench_capi"]}
    with tempfile.TemporaryDirectory() as tmp:
        modules, missing = run.build_all(pathlib.Path(tmp), print)
        if "bench_capi" not in modules:
            raise SystemExit(f"cannot build the C harness: {missing.get('bench_capi')}")
        capi = modules["bench_capi"]

    n = args.n
    shared = membuf.from_address(0, 0)
    rows = {
        "wrap + drop (callback)": lambda: capi.wrap_membuf(n),
        "export cycle, own Buffer": lambda: capi.export_cycle(n, membuf.from_address(0, 0)),
        "export cycle, one shared Buffer": lambda: capi.export_cycle(n, shared),
    }
    before = capi.release_count()
    one = {name: [] for name in rows}
    two = {name: [] for name in rows}
    for _ in range(args.repeat):
        for name, job in rows.items():
            one[name].append(job())  # ns per operation, measured inside C
            two[name].append(in_threads(2, job) * 1e9 / n)
    wraps = 3 * args.repeat * n  # one thread once, two threads once each
    assert capi.release_count() - before == wraps, "a release callback was lost or doubled"

    if sysconfig.get_config_var("Py_GIL_DISABLED") and sys._is_gil_enabled():
        print("warning: the GIL is on (PYTHON_GIL=1, or a module that turned it on): "
              "the 2-thread column is serialized")
    print(f"CPython {sys.version.split()[0]} ({gil_state()}), membuf {membuf.__version__}, "
          f"{sys.platform}, median of {args.repeat}, n = {n:,}")
    print(f"{'C-level operation':34} {'1 thread':>10} {'2 threads':>10} {'2 vs 1':>7}")
    for name in rows:
        a, b = statistics.median(one[name]), statistics.median(two[name])
        print(f"{name:34} {a:8.1f}ns {b:8.1f}ns {b / a:6.2f}x")
    print("2 threads: wall time of two loops run at once / the operations of one loop "
          "(1x = perfectly parallel, 2x = serialized)")


if __name__ == "__main__":
    main()
