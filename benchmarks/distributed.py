"""membuf vs NumPy vs bytes across processes: Dask and Ray, loopback only.

    python benchmarks/distributed.py            # 64 MiB, median of 7
    python benchmarks/distributed.py --smoke    # 1 MiB, 3 repeats: exercises every path (CI)

Rows (each the median wall time of one transfer of an object already held
where it starts, so that only moving it is timed):

* dask, via scheduler: a worker's result fetched with client.gather(direct=False):
  worker -> scheduler -> client, over the scheduler's pickle-protocol-4 connections;
* dask, direct: client.gather(direct=True): worker -> client;
* ray put+get: ray.get(ray.put(x)) in the driver (into the object store and out).

Target: membuf <= 1.1x NumPy on every path (printed as met / missed; the
script asserts nothing about speed, only that every object arrives intact).
"""

import argparse
import os
import statistics
import sys
import time

# This file is named like the `distributed` package: keep its directory off
# the import path, or `import distributed` would find this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402

import membuf  # noqa: E402

TARGET = 1.1


def make(kind, n):
    """The object under test, n bytes with a pattern."""
    data = (bytes(range(256)) * (n // 256 + 1))[:n]
    if kind == "bytes":
        return data
    arr = np.frombuffer(bytearray(data), dtype=np.uint8)
    if kind == "numpy":
        return arr
    import membuf as m

    return m.from_address(arr.ctypes.data, n, owner=arr)


def check(kind, obj, n):
    expected_type = {"bytes": bytes, "numpy": np.ndarray, "membuf": membuf.Buffer}[kind]
    if not isinstance(obj, expected_type):
        raise AssertionError(f"{kind}: received {type(obj).__name__}")
    view = memoryview(obj)
    if view.nbytes != n or view[n - 1] != (n - 1) % 256 or view[0] != 0:
        raise AssertionError(f"{kind}: contents differ")


def interleaved_medians(fns, repeats):
    """{kind: median seconds}: one warm-up call of each, then `repeats`
    rounds that call each once, in turn (so that drift in the machine's load,
    or a store's first-touch page faults, fall on every kind alike)."""
    for fn in fns.values():
        fn()
    times = {kind: [] for kind in fns}
    for _ in range(repeats):
        for kind, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[kind].append(time.perf_counter() - t0)
    return {kind: statistics.median(ts) for kind, ts in times.items()}


def bench_dask(n, repeats, kinds):
    from distributed import Client, LocalCluster  # functions of __main__ travel by value
    results = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        futs = {kind: client.submit(make, kind, n, pure=False) for kind in kinds}
        client.gather(list(futs.values()))
        sizes = client.nbytes(summary=False)
        for kind, fut in futs.items():
            if kind != "bytes" and sizes[fut.key] < n:
                raise AssertionError(f"{kind}: sizeof says {sizes[fut.key]} for {n} bytes")
        for path, direct in (("dask, via scheduler", False), ("dask, direct", True)):
            def once(kind, direct=direct):
                check(kind, client.gather(futs[kind], direct=direct), n)
            medians = interleaved_medians({k: (lambda k=k: once(k)) for k in kinds}, repeats)
            results.update({(path, k): t for k, t in medians.items()})
    return results


def bench_ray(n, repeats, kinds):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=max(256 << 20, 8 * n),
             log_to_driver=False, configure_logging=False)
    results = {}
    try:
        objs = {kind: make(kind, n) for kind in kinds}

        def once(kind):
            check(kind, ray.get(ray.put(objs[kind])), n)
        medians = interleaved_medians({k: (lambda k=k: once(k)) for k in kinds}, repeats)
        results.update({("ray put+get", k): t for k, t in medians.items()})
    finally:
        ray.shutdown()
    return results


def fmt_time(t):
    return f"{t * 1e3:.1f} ms" if t >= 1e-3 else f"{t * 1e6:.0f} µs"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1 MiB, 3 repeats (CI)")
    parser.add_argument("--size", type=int, default=64 << 20, help="bytes (default 64 MiB)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip", action="append", default=[], choices=["dask", "ray"])
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.repeats = 1 << 20, 3
    kinds = ("membuf", "numpy", "bytes")
    results = {}
    if "dask" not in args.skip:
        results.update(bench_dask(args.size, args.repeats, kinds))
    if "ray" not in args.skip:
        results.update(bench_ray(args.size, args.repeats, kinds))
    paths = list(dict.fromkeys(path for path, _ in results))
    print(f"\n{args.size / 2**20:g} MiB, median of {args.repeats}; membuf {membuf.__version__}, "
          f"Python {sys.version.split()[0]}, NumPy {np.__version__}\n")
    print("| path | membuf | NumPy | bytes | membuf / NumPy |")
    print("|---|---|---|---|---|")
    met = True
    for path in paths:
        ratio = results[path, "membuf"] / results[path, "numpy"]
        met &= ratio <= TARGET
        print(f"| {path} | " + " | ".join(fmt_time(results[path, k]) for k in kinds)
              + f" | {ratio:.2f}× |")
    print(f"\ntarget: membuf ≤ {TARGET}× NumPy on every path: {'met' if met else 'missed'}"
          + (" (smoke run: sizes too small to judge)" if args.smoke else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
