#!/usr/bin/env python3
"""membuf's benchmark suite: one command, every peer in the same run.

    python benchmarks/run.py [--smoke] [--out DIR]

Builds the C harness (benchmarks/capi/bench_capi.c) and the peers
(benchmarks/peers/: a Cython cdef class, Cython view.array, NumPy's C API)
with setuptools against the installed membuf, times C-level costs in C loops
and Python-level costs with timeit, measures memory with tracemalloc (and
malloc statistics), and writes results.md, results.json and scale.png to
DIR (default benchmarks/results/; with --smoke a temporary directory).

Every number is a median of several interleaved repeats; every peer is
reported relative to membuf in the same run.  A peer that is not installed
(or fails to build) is listed as missing with the reason, never dropped.
The targets are printed as met / missed; nothing is asserted, except in
--smoke mode, which fails only if something *crashes* (never on speed).
See benchmarks/README.md for what every row means.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import hashlib
import importlib.util
import json
import mmap
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

HERE = pathlib.Path(__file__).resolve().parent
CAPI_DIR = HERE / "capi"
PEERS_DIR = HERE / "peers"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

PyBUF_SIMPLE = 0
PyBUF_READ = 0x100
PyBUF_FULL_RO = 0x100 | 0x18 | 0x4  # INDIRECT | STRIDES | FORMAT (| ND)

# --------------------------------------------------------------------------
# Configuration: full run vs smoke run
# --------------------------------------------------------------------------


class Config:
    def __init__(self, smoke: bool):
        self.smoke = smoke
        # seconds one repeat of one measurement should take
        self.target_s = 0.002 if smoke else 0.15
        self.repeat = 3 if smoke else 9
        self.mem_objects = 2_000 if smoke else 100_000
        # wrap-cost sizes: 1 B ... 4 GiB (smoke: up to 4 MiB)
        top = 22 if smoke else 32
        self.sizes = [1 << k for k in range(0, top + 1, 2 if smoke else 4)]
        if not smoke and GiB not in self.sizes:
            self.sizes.append(GiB)
        self.sizes.sort()
        self.copy_max = 4 * MiB if smoke else GiB  # largest bytes copy actually made
        self.rss_size = 4 * MiB if smoke else 4 * GiB
        self.sha_size = 4 * MiB if smoke else GiB
        self.sha_repeat = 3 if smoke else 5
        # callgrind children (instructions/op); 0 = not measured (smoke runs)
        self.callgrind_n = 0 if smoke else 100_000


# --------------------------------------------------------------------------
# Building the C harness and the peers
# --------------------------------------------------------------------------

# name -> (sources, needs, kind); kind "c" or "cython"
EXTENSIONS = {
    "bench_capi": ([CAPI_DIR / "bench_capi.c"], [], "c"),
    "np_wrap": ([PEERS_DIR / "np_wrap.c"], ["numpy"], "c"),
    "cy_class": ([PEERS_DIR / "cy_class.pyx"], ["Cython"], "cython"),
    "cy_viewarray": ([PEERS_DIR / "cy_viewarray.pyx"], ["Cython"], "cython"),
}


def _missing_module(name: str) -> str | None:
    """None if `name` imports, else the reason it does not."""
    try:
        __import__(name)
        return None
    except ImportError as exc:
        return f"not installed ({exc.__class__.__name__}: {exc})"


def _build_one(name: str, build_dir: pathlib.Path) -> None:
    """Child process: compile extension `name` into build_dir (setuptools)."""
    import membuf
    from setuptools import Distribution, Extension

    sources, needs, kind = EXTENSIONS[name]
    include_dirs = [membuf.get_include()]
    if "numpy" in needs:
        import numpy

        include_dirs.append(numpy.get_include())
    args = ["-O3"]
    if name == "bench_capi":
        args += ["-std=c11", "-Wall", "-Wextra"]
    ext = Extension(
        name,
        sources=[str(s) for s in sources],
        include_dirs=include_dirs,
        extra_compile_args=args,
    )
    exts = [ext]
    if kind == "cython":
        from Cython.Build import cythonize

        exts = cythonize(
            exts,
            build_dir=str(build_dir / "cython"),
            quiet=True,
            compiler_directives={"language_level": 3},
        )
    dist = Distribution({"name": name, "ext_modules": exts})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = str(build_dir)
    cmd.build_temp = str(build_dir / f"tmp-{name}")
    cmd.ensure_finalized()
    cmd.run()


def build_all(build_dir: pathlib.Path, log) -> tuple[dict, dict]:
    """Build every extension whose prerequisites are installed, in parallel
    child processes.  Returns ({name: module}, {name: reason-it-is-missing})."""
    procs, missing = {}, {}
    for name, (_sources, needs, _kind) in EXTENSIONS.items():
        for need in ["setuptools", *needs]:
            reason = _missing_module(need)
            if reason:
                missing[name] = f"{need} {reason}"
                break
        else:
            procs[name] = subprocess.Popen(
                [sys.executable, __file__, "--_build", name, str(build_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
    modules = {}
    for name, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode != 0:
            tail = "\n".join(out.strip().splitlines()[-15:])
            log(f"!! building {name} failed:\n{tail}")
            missing[name] = f"build failed (exit {proc.returncode}): {out.strip().splitlines()[-1:]}"
            continue
        modules[name] = _import_built(name, build_dir)
    return modules, missing


def _import_built(name: str, build_dir: pathlib.Path):
    (path,) = sorted(build_dir.glob(f"{name}*.so")) or sorted(build_dir.glob(f"{name}*.pyd"))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


# --------------------------------------------------------------------------
# Timing primitives
# --------------------------------------------------------------------------


def calibrate_c(fn, args, target_s):
    """Iteration count n so that fn(n, *args) takes about target_s."""
    n = 100
    while True:
        t0 = time.perf_counter()
        fn(n, *args)
        dt = time.perf_counter() - t0
        if dt >= target_s / 4 or n >= 1 << 26:
            return max(100, int(n * target_s / max(dt, 1e-9)))
        n *= 8


def calibrate_py(timer: timeit.Timer, target_s):
    n = 1
    while True:
        dt = timer.timeit(n)
        if dt >= target_s / 4 or n >= 1 << 24:
            return max(1, int(n * target_s / max(dt, 1e-9)))
        n *= 8


class Measure:
    """One row: a callable returning ns/op for one repeat, or a missing reason."""

    def __init__(self, key, label, run=None, missing=None, note="", lifetime=""):
        self.key, self.label, self.run, self.missing = key, label, run, missing
        self.note, self.lifetime = note, lifetime
        self.samples: list[float] = []
        self.error: str | None = None


def c_measure(key, label, fn, args=(), cfg=None, **kw):
    """A C-level loop fn(n, *args) -> ns/op; n is calibrated on first use."""
    state = {}

    def run():
        if "n" not in state:
            state["n"] = calibrate_c(fn, args, cfg.target_s)
        return fn(state["n"], *args)

    return Measure(key, label, run, **kw)


def py_measure(key, label, stmt, glb, cfg, **kw):
    """A Python statement timed with timeit; ns per execution."""
    state = {}

    def run():
        timer = timeit.Timer(stmt, globals=glb)
        if "n" not in state:
            timer.timeit(1)  # warm caches (ctypes array types, cffi type parsing)
            state["n"] = calibrate_py(timer, cfg.target_s)
        return timer.timeit(state["n"]) / state["n"] * 1e9

    return Measure(key, label, run, note=kw.pop("note", stmt), **kw)


def run_interleaved(rows: list[Measure], repeat: int, log):
    """Repeat every available row `repeat` times, round-robin, so that load
    changes during the run hit all peers alike."""
    live = [r for r in rows if r.missing is None]
    for r in live:  # warm-up (and calibration)
        try:
            r.run()
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            r.error = f"{exc.__class__.__name__}: {exc}"
            log(f"!! {r.label}: {r.error}")
    live = [r for r in live if r.error is None]
    for _ in range(repeat):
        for r in live:
            r.samples.append(r.run())


def median(xs):
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------
# Memory helpers
# --------------------------------------------------------------------------


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # non-Linux fallback

        return psutil.Process().memory_info().rss


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        )
    ]


def _malloc_in_use():
    """Bytes in use by glibc malloc (None where mallinfo2 is unavailable)."""
    try:
        libc = ctypes.CDLL(None)
        f = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    f.restype = _Mallinfo2
    m = f()
    return m.uordblks + m.hblkhd


def anon_mmap(size: int, noreserve: bool = False) -> mmap.mmap:
    flags = mmap.MAP_PRIVATE
    if noreserve:
        flags |= getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)
    return mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def fill_pattern(mm: mmap.mmap) -> None:
    """Touch and fill every page with non-trivial data (fast doubling copy)."""
    size = len(mm)
    seed = os.urandom(min(size, MiB))
    mm[: len(seed)] = seed
    done = len(seed)
    while done < size:
        n = min(done, size - done)
        mm[done : done + n] = mm[:n]
        done += n


# --------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------


def peer_missing(*names):
    for n in names:
        r = _missing_module(n)
        if r:
            return f"{n} {r}"
    return None


def section_c_wrap(cfg, mods, missing, log):
    capi = mods["bench_capi"]
    rows = [
        c_measure(
            "membuf",
            "membuf: MemBuf_FromMemory + release callback",
            capi.wrap_membuf,
            cfg=cfg,
            lifetime="callback exactly once, export counting, use-after-release checks",
        ),
        c_measure(
            "membuf_nocallback",
            "membuf: MemBuf_FromMemory, no callback",
            capi.wrap_membuf_nocallback,
            cfg=cfg,
            lifetime="(static memory)",
        ),
        c_measure(
            "memoryview",
            "CPython: PyMemoryView_FromMemory",
            capi.wrap_memoryview,
            cfg=cfg,
            lifetime="none (nothing frees, nothing guards)",
        ),
    ]
    cy = mods.get("cy_class")
    why = missing.get("cy_class")
    rows += [
        c_measure(
            "cython_class",
            "Cython cdef class (__getbuffer__, callback in __dealloc__)",
            cy.wrap_loop,
            cfg=cfg,
            lifetime="callback at dealloc, export count",
        )
        if cy
        else Measure("cython_class", "Cython cdef class (__getbuffer__, callback in __dealloc__)",
                     missing=why),
        c_measure(
            "cython_class_freelist",
            "Cython cdef class + @cython.freelist(32)",
            cy.wrap_loop_freelist,
            cfg=cfg,
            lifetime="as above",
        )
        if cy
        else Measure("cython_class_freelist", "Cython cdef class + @cython.freelist(32)",
                     missing=why),
    ]
    va = mods.get("cy_viewarray")
    label = "Cython view.array + callback_free_data"
    rows.append(
        c_measure("cython_viewarray", label, va.wrap_loop, cfg=cfg, lifetime="callback at dealloc")
        if va
        else Measure("cython_viewarray", label, missing=missing.get("cy_viewarray"))
    )
    npw = mods.get("np_wrap")
    label = "NumPy PyArray_SimpleNewFromData + capsule base"
    rows.append(
        c_measure("numpy", label, npw.wrap_loop, cfg=cfg, lifetime="capsule destructor at dealloc")
        if npw
        else Measure("numpy", label, missing=missing.get("np_wrap"))
    )
    rows.append(
        c_measure(
            "floor",
            "floor: PyObject_New + Py_DECREF of a minimal object",
            capi.floor_alloc,
            cfg=cfg,
            lifetime="(lower bound for any object)",
        )
    )
    run_interleaved(rows, cfg.repeat, log)
    return rows


def section_c_export(cfg, mods, missing, log, flags, membuf_buf):
    capi = mods["bench_capi"]
    data = bytes(4096)
    mv = memoryview(data)
    rows = [
        c_measure("membuf", "membuf.Buffer", capi.export_cycle, (membuf_buf, flags), cfg=cfg),
        c_measure("bytes", "bytes", capi.export_cycle, (data, flags), cfg=cfg),
        c_measure("memoryview", "memoryview (of bytes)", capi.export_cycle, (mv, flags), cfg=cfg),
    ]
    cy = mods.get("cy_class")
    label = "Cython cdef class"
    rows.append(
        c_measure("cython_class", label, capi.export_cycle, (cy.make(), flags), cfg=cfg)
        if cy
        else Measure("cython_class", label, missing=missing.get("cy_class"))
    )
    npw = mods.get("np_wrap")
    label = "NumPy array (over foreign memory)"
    rows.append(
        c_measure("numpy", label, capi.export_cycle, (npw.make(), flags), cfg=cfg)
        if npw
        else Measure("numpy", label, missing=missing.get("np_wrap"))
    )
    run_interleaved(rows, cfg.repeat, log)
    return rows


def section_py_wrap(cfg, mods, missing, log, addr, n):
    import membuf

    glb = {"membuf": membuf, "ctypes": ctypes, "addr": addr, "n": n, "owner": object()}
    glb["on_release"] = lambda: None
    rows = [
        py_measure("membuf", "membuf.from_address", "membuf.from_address(addr, n)", glb, cfg,
                   lifetime="read-only; owner/on_release optional"),
        py_measure("membuf_owner", "membuf.from_address(..., owner=)",
                   "membuf.from_address(addr, n, owner=owner)", glb, cfg,
                   lifetime="keeps owner alive"),
        py_measure("membuf_on_release", "membuf.from_address(..., on_release=)",
                   "membuf.from_address(addr, n, on_release=on_release)", glb, cfg,
                   lifetime="calls on_release() once"),
        py_measure("membuf_typed", "membuf.from_address(addr, format='d', shape=(16, 32))",
                   "membuf.from_address(addr, format='d', shape=(16, 32))", glb, cfg,
                   lifetime="typed, checked layout"),
        py_measure("ctypes", "ctypes (c_char * n).from_address",
                   "(ctypes.c_char * n).from_address(addr)", glb, cfg,
                   lifetime="none; writable"),
        py_measure("ctypes_memoryview", "ctypes from_address + memoryview",
                   "memoryview((ctypes.c_char * n).from_address(addr))", glb, cfg,
                   lifetime="none; writable"),
    ]
    why = peer_missing("cffi")
    label = "cffi ffi.buffer(ffi.cast('char *', addr), n)"
    if why is None:
        import cffi

        glb["ffi"] = cffi.FFI()
        rows.append(py_measure("cffi", label, "ffi.buffer(ffi.cast('char *', addr), n)", glb, cfg,
                               lifetime="none; writable"))
    else:
        rows.append(Measure("cffi", label, missing=why))
    why = peer_missing("pyarrow")
    label = "pyarrow.foreign_buffer(addr, n, base)"
    if why is None:
        import pyarrow

        glb["pa"] = pyarrow
        rows.append(py_measure("pyarrow", label, "pa.foreign_buffer(addr, n, owner)", glb, cfg,
                               lifetime="keeps base alive"))
    else:
        rows.append(Measure("pyarrow", label, missing=why))
    why = peer_missing("numpy")
    label = "numpy.ctypeslib.as_array"
    if why is None:
        import numpy

        glb["np"] = numpy
        glb["P"] = ctypes.POINTER(ctypes.c_ubyte)
        rows.append(py_measure("numpy", label, "np.ctypeslib.as_array(ctypes.cast(addr, P), (n,))",
                               glb, cfg, lifetime="none; writable"))
    else:
        rows.append(Measure("numpy", label, missing=why))
    run_interleaved(rows, cfg.repeat, log)
    return rows


def section_py_from_buffer(cfg, log, n):
    """Wrapping an existing exporter (bytes of n bytes) while holding its export."""
    import membuf

    glb = {"membuf": membuf, "data": bytes(n)}
    rows = [
        py_measure("membuf", "membuf.from_buffer(bytes)", "membuf.from_buffer(data)", glb, cfg,
                   lifetime="holds one export until released"),
        py_measure("memoryview", "memoryview(bytes)", "memoryview(data)", glb, cfg,
                   lifetime="holds one export"),
    ]
    why = peer_missing("pyarrow")
    label = "pyarrow.py_buffer(bytes)"
    if why is None:
        import pyarrow

        glb["pa"] = pyarrow
        rows.append(py_measure("pyarrow", label, "pa.py_buffer(data)", glb, cfg,
                               lifetime="holds one export"))
    else:
        rows.append(Measure("pyarrow", label, missing=why))
    why = peer_missing("cffi")
    label = "cffi ffi.from_buffer(bytes)"
    if why is None:
        import cffi

        glb["ffi"] = cffi.FFI()
        rows.append(py_measure("cffi", label, "ffi.from_buffer(data)", glb, cfg,
                               lifetime="holds one export"))
    else:
        rows.append(Measure("cffi", label, missing=why))
    run_interleaved(rows, cfg.repeat, log)
    return rows


def _memory_child(build_dir: str, count: int) -> None:
    """Child process (PYTHONMALLOC=malloc): bytes per live object, measured
    with tracemalloc (Python heap) and, in a separate untraced pass, with
    glibc's mallinfo2 (all heap, including C/C++ allocations).  Prints JSON."""
    import tracemalloc

    import membuf

    for name in ("np_wrap", "cy_class", "cy_viewarray"):
        if list(pathlib.Path(build_dir).glob(f"{name}*.so")):
            _import_built(name, pathlib.Path(build_dir))
    block = ctypes.create_string_buffer(4096)
    addr = ctypes.addressof(block)
    n = len(block)
    data = bytes(n)
    pymv = ctypes.pythonapi.PyMemoryView_FromMemory
    pymv.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
    pymv.restype = ctypes.py_object

    factories = {"membuf": lambda: membuf.from_address(addr, n)}
    factories["memoryview_frommemory"] = lambda: pymv(addr, n, PyBUF_READ)
    factories["memoryview_bytes"] = lambda: memoryview(data)
    if "np_wrap" in sys.modules:
        factories["numpy"] = sys.modules["np_wrap"].make
    try:
        import pyarrow

        owner = object()
        factories["pyarrow"] = lambda: pyarrow.foreign_buffer(addr, n, owner)
    except ImportError:
        pass
    if "cy_class" in sys.modules:
        factories["cython_class"] = sys.modules["cy_class"].make
    if "cy_viewarray" in sys.modules:
        factories["cython_viewarray"] = sys.modules["cy_viewarray"].make
    factories["ctypes"] = lambda: (ctypes.c_char * n).from_address(addr)
    try:
        import cffi

        ffi = cffi.FFI()
        factories["cffi"] = lambda: ffi.buffer(ffi.cast("char *", addr), n)
    except ImportError:
        pass

    clear = getattr(sys.modules["membuf._membuf"], "_clear_freelist", None)
    out = {}
    for key, make in factories.items():
        for _ in range(100):  # warm type caches, free lists, interned strings
            make()
        objs = [None] * count
        res = {}
        for mode in ("tracemalloc", "malloc"):
            for i in range(count):
                objs[i] = None
            gc.collect()
            if clear:
                clear()
            gc.disable()
            if mode == "tracemalloc":
                tracemalloc.start()
                before = tracemalloc.get_traced_memory()[0]
            else:
                before = _malloc_in_use()
            for i in range(count):
                objs[i] = make()
            if mode == "tracemalloc":
                after = tracemalloc.get_traced_memory()[0]
                tracemalloc.stop()
            else:
                after = _malloc_in_use()
            gc.enable()
            if before is not None and after is not None:
                res[mode] = (after - before) / count
        out[key] = res
    print(json.dumps(out))


def section_memory(cfg, mods, missing, build_dir, log):
    env = dict(os.environ, PYTHONMALLOC="malloc")
    proc = subprocess.run(
        [sys.executable, __file__, "--_memory", str(build_dir), str(cfg.mem_objects)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        log(f"!! memory child failed:\n{proc.stderr[-3000:]}")
        raise RuntimeError("memory measurement failed: " + proc.stderr.strip().splitlines()[-1])
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    specs = [
        ("membuf", "membuf.Buffer (from_address)", None),
        ("memoryview_frommemory", "memoryview + managed buffer (PyMemoryView_FromMemory)", None),
        ("memoryview_bytes", "memoryview + managed buffer (memoryview(bytes))", None),
        ("numpy", "NumPy array + capsule (PyArray_SimpleNewFromData)", "np_wrap"),
        ("pyarrow", "pyarrow Buffer (foreign_buffer)", "pyarrow"),
        ("cython_class", "Cython cdef class", "cy_class"),
        ("cython_viewarray", "Cython view.array", "cy_viewarray"),
        ("ctypes", "ctypes c_char array (from_address)", None),
        ("cffi", "cffi buffer", "cffi"),
    ]
    rows = []
    for key, label, need in specs:
        if key in got:
            r = Measure(key, label)
            r.samples = [got[key].get("tracemalloc")]
            r.malloc = got[key].get("malloc")
        else:
            if need in missing:
                why = missing[need]
            elif need in ("pyarrow", "cffi"):
                why = f"{need} " + (_missing_module(need) or "failed in the memory child")
            else:
                why = "failed in the memory child"
            r = Measure(key, label, missing=why)
        rows.append(r)
    return rows


def section_callgrind(cfg, mods, missing, build_dir, res, log):
    """Instructions per operation of the C loops (benchmarks/callgrind.py),
    on the extensions already built; attached to the c_wrap / c_export_simple
    rows as `instr`.  Not measured (never silently met) without valgrind or
    in --smoke runs."""
    sys.path.insert(0, str(HERE))
    import callgrind

    out = {"n": None, "instructions": {label: None for label, *_ in callgrind.CASES},
           "errors": {}, "not_measured": None}
    if cfg.callgrind_n <= 0:
        out["not_measured"] = "not measured in --smoke mode"
    elif not (shutil.which("valgrind") and shutil.which("callgrind_annotate")):
        out["not_measured"] = "valgrind / callgrind_annotate not installed"
    if out["not_measured"]:
        log(f"callgrind: {out['not_measured']}")
        return out
    out["n"] = cfg.callgrind_n
    details = {}
    out["instructions"] = callgrind.c_rows(build_dir, mods, missing, cfg.callgrind_n, log=log,
                                           details=details)
    out["errors"] = {k: v["error"] for k, v in details.items() if "error" in v}
    for label, (section, key) in callgrind.RUN_KEYS.items():
        for r in res.get(section, []):
            if r.key == key:
                r.instr = out["instructions"].get(label)
    return out


def section_scale(cfg, mods, log, region_addr, copy_addr):
    """Wrap cost vs size (C loop + from_address) and the bytes copy."""
    import membuf

    capi = mods["bench_capi"]
    # Per size: C-level wrap, Python-level wrap, copy (when <= copy_max).
    per = {s: {"c": [], "py": [], "copy": []} for s in cfg.sizes}
    n_c = calibrate_c(capi.wrap_membuf_size, (region_addr, 1), cfg.target_s)
    glb = {"membuf": membuf, "ctypes": ctypes, "addr": region_addr, "src": copy_addr}
    timers = {}
    for s in cfg.sizes:
        t = timeit.Timer(f"membuf.from_address(addr, {s})", globals=glb)
        timers[s] = (t, calibrate_py(t, cfg.target_s))
    copy_timers = {}
    for s in cfg.sizes:
        if s <= cfg.copy_max:
            t = timeit.Timer(f"ctypes.string_at(src, {s})", globals=glb)
            copy_timers[s] = (t, calibrate_py(t, cfg.target_s))
    for _ in range(cfg.repeat):
        for s in cfg.sizes:
            per[s]["c"].append(capi.wrap_membuf_size(n_c, region_addr, s))
            t, num = timers[s]
            per[s]["py"].append(t.timeit(num) / num * 1e9)
    # The copies: fewer repeats at the top (a 1 GiB copy takes ~0.3 s).
    for s, (t, num) in copy_timers.items():
        reps = cfg.repeat if s <= 64 * MiB else 3
        per[s]["copy"] = [t.timeit(num) / num * 1e9 for _ in range(reps)]
    rows = []
    largest = max(copy_timers)
    ns_per_byte = median(per[largest]["copy"]) / largest
    for s in cfg.sizes:
        copy = median(per[s]["copy"])
        rows.append(
            {
                "size": s,
                "membuf_c_ns": median(per[s]["c"]),
                "membuf_c_min_ns": min(per[s]["c"]),
                "membuf_py_ns": median(per[s]["py"]),
                "bytes_copy_ns": copy if copy is not None else ns_per_byte * s,
                "bytes_copy_extrapolated": copy is None,
            }
        )
    return rows


def section_rss(cfg, mods, log):
    """RSS before/after wrapping (and exporting) an untouched region."""
    import membuf

    capi = mods["bench_capi"]
    size = cfg.rss_size
    region = anon_mmap(size, noreserve=True)
    addr = membuf.address_of(region)
    gc.collect()
    before = rss_bytes()
    buf = membuf.from_address(addr, size, owner=region)
    view = memoryview(buf)
    arr = None
    if "numpy" in sys.modules or _missing_module("numpy") is None:
        import numpy

        arr = numpy.frombuffer(buf, dtype=numpy.uint8)
        assert arr.ctypes.data == addr
    capi.wrap_membuf_size(1000, addr, size)  # C-level wraps of the same region
    after = rss_bytes()
    what = "from_address + memoryview" + (" + numpy.frombuffer" if arr is not None else "")
    del arr, view
    buf.release()
    region.close()
    return {"size": size, "rss_before": before, "rss_after": after, "growth": after - before,
            "what": what}


def section_sha(cfg, log, src: mmap.mmap, src_addr):
    import membuf

    size = cfg.sha_size
    buf = membuf.from_address(src_addr, size)
    data = ctypes.string_at(src_addr, size)
    d1 = hashlib.sha256(buf).hexdigest()
    d2 = hashlib.sha256(data).hexdigest()
    tm, tb = [], []
    for _ in range(cfg.sha_repeat):
        t0 = time.perf_counter()
        hashlib.sha256(buf)
        tm.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hashlib.sha256(data)
        tb.append(time.perf_counter() - t0)
    del data
    buf.release()
    return {
        "size": size,
        "membuf_s": median(tm),
        "bytes_s": median(tb),
        "membuf_gbps": size / median(tm) / 1e9,
        "bytes_gbps": size / median(tb) / 1e9,
        "digests_equal": d1 == d2,
    }


# --------------------------------------------------------------------------
# Machine info, targets, output
# --------------------------------------------------------------------------


def machine_info():
    import membuf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "cffi", "pyarrow", "Cython", "matplotlib", "setuptools"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    commit = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "membuf": membuf.__version__,
        "membuf_path": os.path.dirname(membuf.__file__),
        "git": commit,
        "peers": versions,
    }


def _med(rows, key, stat=None):
    stat = stat or median
    for r in rows:
        if r.key == key:
            return stat(r.samples) if r.missing is None and r.error is None else None
    return None


def _min(rows, key):
    return _med(rows, key, min)


def compute_targets(res):
    """(name, measured, limit, met|None, detail) -- membuf's ratio to the peer."""
    out = []

    def ratio(a, b):
        return a / b if (a is not None and b) else None

    def add(name, measured, limit, detail, strict=False, of_minima=None, na=None):
        met = None if measured is None else (measured < limit if strict else measured <= limit)
        out.append({"target": name, "measured": measured, "limit": limit, "met": met,
                    "detail": detail, "strict": strict, "ratio_of_minima": of_minima,
                    "not_measured": None if measured is not None else (na or "peer missing")})

    def rows_target(name, rows, peer, limit, detail, strict=False):
        add(name, ratio(_med(rows, "membuf"), _med(rows, peer)), limit, detail, strict,
            ratio(_min(rows, "membuf"), _min(rows, peer)))

    rows_target("C wrap + drop with release callback / PyMemoryView_FromMemory + drop",
                res["c_wrap"], "memoryview", 0.3, "C loops, ns/op")
    rows_target("Export cycle (PyBUF_SIMPLE) membuf / bytes", res["c_export_simple"], "bytes",
                1.5, "GetBuffer + Release, C loop")
    pw = res["py_wrap"]
    rows_target("membuf.from_address / ctypes (c_char * n).from_address", pw, "ctypes", 0.3,
                "timeit")
    plain = _med(pw, "membuf")
    for key, label, limit in [("membuf_owner", "from_address(a, n, owner=o) / from_address(a, n)",
                               1.3),
                              ("membuf_on_release",
                               "from_address(a, n, on_release=f) / from_address(a, n)", 1.6)]:
        add(label, ratio(_med(pw, key), plain), limit, "timeit",
            of_minima=ratio(_min(pw, key), _min(pw, "membuf")))
    fb = res["py_from_buffer"]
    rows_target("membuf.from_buffer(bytes) / pa.py_buffer(bytes)", fb, "pyarrow", 1.0, "timeit")
    fb_ns, mv_ns = _med(fb, "membuf"), _med(fb, "memoryview")
    add("membuf.from_buffer(bytes) - memoryview(bytes) (ns)",
        None if fb_ns is None or mv_ns is None else fb_ns - mv_ns, 30.0, "timeit, medians")
    others = {k: _med(pw, k) for k in ("ctypes", "ctypes_memoryview", "cffi", "pyarrow", "numpy")}
    present = {k: v for k, v in others.items() if v is not None}
    fastest = min(present, key=present.get) if present else None
    rows_target("membuf.from_address / fastest other Python-level peer", pw, fastest, 1.0,
                f"fastest peer: {fastest}; missing: "
                f"{', '.join(sorted(set(others) - set(present))) or 'none'}", strict=True)
    add("Bytes per live plain Buffer (from_address)", _med(res["memory"], "membuf"), 72.0,
        "tracemalloc, bytes/object")
    rows_target("Bytes per live object: membuf / memoryview + managed buffer", res["memory"],
                "memoryview_frommemory", 0.23, "tracemalloc")
    cg = res.get("callgrind") or {}
    cg_ir, cg_na = cg.get("instructions", {}), cg.get("not_measured")
    cg_detail = f"callgrind, N = {cg.get('n')}" if cg.get("n") else "callgrind"

    def cg_value(label):
        return cg_ir.get(label)

    def cg_reason(*labels):
        if cg_na:
            return cg_na
        errs = [f"{lb}: {cg.get('errors', {}).get(lb, 'not measured')}" for lb in labels
                if cg_value(lb) is None]
        return "; ".join(errs) or None

    wrap = "membuf wrap + drop, callback"
    add("Instructions per C wrap + drop with a release callback", cg_value(wrap), 80.0, cg_detail,
        na=cg_reason(wrap))
    em, eb = "export cycle SIMPLE: membuf", "export cycle SIMPLE: bytes"
    add("Export cycle (PyBUF_SIMPLE) instructions: membuf / bytes",
        ratio(cg_value(em), cg_value(eb)), 1.05, cg_detail, na=cg_reason(em, eb))
    sc = res["scale"]
    small, big = sc[0], sc[-1]
    add(f"Wrap cost at {fmt_size(big['size'])} / at {fmt_size(small['size'])}",
        ratio(big["membuf_c_ns"], small["membuf_c_ns"]), 1.1, "C loop, MemBuf_FromMemory",
        of_minima=ratio(big["membuf_c_min_ns"], small["membuf_c_min_ns"]))
    rss = res["rss"]
    add(f"RSS growth from wrapping {fmt_size(rss['size'])} (MiB)", rss["growth"] / MiB, 1.0,
        rss["what"])
    return out


def fmt_size(n):
    for unit, k in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def fmt_ns(x):
    if x is None:
        return "-"
    if x >= 1e9:
        return f"{x / 1e9:.3g} s"
    if x >= 1e6:
        return f"{x / 1e6:.3g} ms"
    if x >= 1e4:
        return f"{x / 1e3:.3g} µs"
    return f"{x:.1f} ns"


def rows_table(rows, unit, ref="membuf", value_fmt=fmt_ns, extra=None):
    """Markdown table of rows with ratio to membuf (peer / membuf)."""
    base = _med(rows, ref)
    head = ["Peer", f"median ({unit})", "× membuf", "spread"]
    if extra:
        head.append(extra[0])
    head.append("lifetime management / notes")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.missing is not None or r.error is not None:
            why = r.missing or r.error
            cells = [r.label, f"**missing**: {why}", "-", "-"]
            if extra:
                cells.append("-")
        else:
            m = median(r.samples)
            spread = (
                f"{min(r.samples) / m:.2f}–{max(r.samples) / m:.2f}"
                if len(r.samples) > 1 and m
                else "-"
            )
            cells = [
                f"**{r.label}**" if r.key == ref else r.label,
                value_fmt(m),
                f"{m / base:.2f}×" if base else "-",
                spread,
            ]
            if extra:
                cells.append(extra[1](r))
        cells.append(getattr(r, "lifetime", "") or getattr(r, "note", ""))
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return lines


def render_markdown(info, res, targets, cfg):
    L = []
    L.append("# membuf benchmark results" + (" (SMOKE RUN: tiny counts, not meaningful)" if cfg.smoke else ""))
    L.append("")
    L.append(f"- Date: {info['date']}")
    L.append(f"- CPU: {info['cpu']} ({info['cpus']} logical CPUs); load average at start: "
             + (", ".join(f"{x:.2f}" for x in info["loadavg"]) if info["loadavg"] else "n/a"))
    L.append(f"- Platform: {info['platform']}")
    L.append(f"- Python: {info['python']}")
    L.append(f"- membuf: {info['membuf']} (git {info['git'] or 'n/a'})")
    L.append("- Peers: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in info["peers"].items()))
    L.append(f"- Method: medians of {cfg.repeat} interleaved repeats; C-level rows are C loops "
             "(ns/op, no Python call overhead); Python-level rows are timeit (ns per statement). "
             "`× membuf` = peer / membuf (above 1: slower or bigger than membuf); "
             "`spread` = min/median–max/median of the repeats.")
    L.append("")
    L.append("## Targets (membuf / peer, measured in this run)")
    L.append("")
    L.append("`measured` is the ratio of medians (what the target is judged on); `minima` is the "
             "ratio of the fastest repeats, a hint of what a quieter machine would show.")
    L.append("")
    L.append("| Target | measured | limit | result | minima | detail |")
    L.append("|---|---|---|---|---|---|")
    for t in targets:
        res_s = (f"n/a ({t['not_measured']})" if t["met"] is None
                 else ("met" if t["met"] else "**MISSED**"))
        meas = "-" if t["measured"] is None else f"{t['measured']:.3f}"
        mins = "-" if t["ratio_of_minima"] is None else f"{t['ratio_of_minima']:.3f}"
        lim = ("< " if t["strict"] else "≤ ") + f"{t['limit']}"
        L.append(f"| {t['target']} | {meas} | {lim} | {res_s} | {mins} | {t['detail']} |")
    L.append("")
    cg = res.get("callgrind") or {}
    ir_col = ("instructions/op (callgrind)",
              lambda r: f"{r.instr:.1f}" if getattr(r, "instr", None) is not None else "-")
    L.append("## C level: wrap + drop (ns/op, C loop)")
    L.append("")
    L += rows_table(res["c_wrap"], "ns/op", extra=ir_col)
    L.append("")
    L.append("## C level: one export cycle, PyObject_GetBuffer + PyBuffer_Release (ns/op)")
    L.append("")
    L.append("PyBUF_SIMPLE:")
    L.append("")
    L += rows_table(res["c_export_simple"], "ns/op", extra=ir_col)
    L.append("")
    L.append("PyBUF_FULL_RO:")
    L.append("")
    L += rows_table(res["c_export_full"], "ns/op")
    L.append("")
    L.append("## C level: instructions per operation (callgrind)")
    L.append("")
    if cg.get("not_measured"):
        L.append(f"Not measured: {cg['not_measured']}.")
    else:
        L.append(f"`valgrind --tool=callgrind --toggle-collect=<C loop>`, N = {cg['n']:,} "
                 "operations per child (benchmarks/callgrind.py); independent of machine load.")
        L.append("")
        base = cg["instructions"].get("membuf wrap + drop, callback")
        L.append("| row | instructions/op | × membuf wrap + drop, callback |")
        L.append("|---|---|---|")
        for label, ir in cg["instructions"].items():
            if ir is None:
                L.append(f"| {label} | **not measured**: "
                         f"{cg['errors'].get(label, '?').replace('|', '/')[:200]} | - |")
            else:
                L.append(f"| {label} | {ir:.1f} | {f'{ir / base:.2f}×' if base else '-'} |")
    L.append("")
    L.append(f"## Python level: wrap an address, {res['py_wrap_size']} bytes (ns per call, timeit)")
    L.append("")
    L += rows_table(res["py_wrap"], "ns/call")
    L.append("")
    L.append(f"## Python level: wrap an exporter, bytes of {res['py_wrap_size']} bytes "
             "(ns per call, timeit)")
    L.append("")
    L += rows_table(res["py_from_buffer"], "ns/call")
    L.append("")
    L.append(f"## Memory per live object ({cfg.mem_objects:,} objects)")
    L.append("")
    L.append("`median` = Python heap per object (tracemalloc); `all heap` = everything glibc "
             "malloc hands out per object under PYTHONMALLOC=malloc (includes C/C++ allocations "
             "that tracemalloc cannot see, e.g. pyarrow's C++ Buffer, and malloc's chunk headers).")
    L.append("")
    L += rows_table(
        res["memory"], "bytes", value_fmt=lambda x: f"{x:.0f} B",
        extra=("all heap", lambda r: f"{r.malloc:.0f} B" if getattr(r, "malloc", None) else "-"),
    )
    L.append("")
    L.append("## Scale: wrap cost vs size (plot: scale.png)")
    L.append("")
    L.append("| size | membuf C (MemBuf_FromMemory) | membuf.from_address | bytes copy (ctypes.string_at) | copy × membuf.from_address |")
    L.append("|---|---|---|---|---|")
    for r in res["scale"]:
        copy = fmt_ns(r["bytes_copy_ns"]) + (" (extrapolated)" if r["bytes_copy_extrapolated"] else "")
        L.append(f"| {fmt_size(r['size'])} | {fmt_ns(r['membuf_c_ns'])} | {fmt_ns(r['membuf_py_ns'])} "
                 f"| {copy} | {r['bytes_copy_ns'] / r['membuf_py_ns']:.3g}× |")
    L.append("")
    rss = res["rss"]
    L.append(f"RSS: {rss['rss_before'] / MiB:.1f} MiB before, {rss['rss_after'] / MiB:.1f} MiB after "
             f"{rss['what']} of an untouched {fmt_size(rss['size'])} anonymous mapping "
             f"(growth {rss['growth'] / KiB:.0f} KiB).")
    L.append("")
    sha = res["sha"]
    L.append(f"## Throughput: hashlib.sha256 over {fmt_size(sha['size'])}")
    L.append("")
    L.append("| input | median time | GB/s | × membuf |")
    L.append("|---|---|---|---|")
    L.append(f"| **membuf.Buffer** | {sha['membuf_s']:.3f} s | {sha['membuf_gbps']:.2f} | 1.00× |")
    L.append(f"| bytes (same data) | {sha['bytes_s']:.3f} s | {sha['bytes_gbps']:.2f} | "
             f"{sha['bytes_s'] / sha['membuf_s']:.2f}× |")
    L.append("")
    L.append(f"Digests equal: {sha['digests_equal']}.")
    L.append("")
    return "\n".join(L)


def plot_scale(scale, path: pathlib.Path, smoke: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] for r in scale]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    ax.loglog(sizes, [r["membuf_c_ns"] for r in scale], "o-", label="membuf, C: MemBuf_FromMemory + drop")
    ax.loglog(sizes, [r["membuf_py_ns"] for r in scale], "s-", label="membuf.from_address + drop (Python)")
    meas = [r for r in scale if not r["bytes_copy_extrapolated"]]
    extra = [r for r in scale if r["bytes_copy_extrapolated"]]
    ax.loglog([r["size"] for r in meas], [r["bytes_copy_ns"] for r in meas], "^-",
              label="bytes copy: ctypes.string_at (measured)")
    if extra:
        xs = [meas[-1]["size"]] + [r["size"] for r in extra]
        ys = [meas[-1]["bytes_copy_ns"]] + [r["bytes_copy_ns"] for r in extra]
        ax.loglog(xs, ys, "^--", color=ax.lines[-1].get_color(), alpha=0.5,
                  label="bytes copy, EXTRAPOLATED linearly (not measured)")
    ax.set_xlabel("wrapped size (bytes)")
    ax.set_ylabel("time per wrap (ns, median)")
    ax.set_title("Wrap cost vs size: membuf is flat, a copy grows linearly"
                 + (" [smoke run]" if smoke else ""))
    from matplotlib.ticker import NullLocator

    ax.set_xticks(sizes)
    ax.set_xticklabels([fmt_size(s) for s in sizes], rotation=45, ha="right")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rows_json(rows):
    out = []
    for r in rows:
        d = {"key": r.key, "label": r.label}
        if r.missing is not None or r.error is not None:
            d["status"] = "missing"
            d["reason"] = r.missing or r.error
        else:
            d["status"] = "ok"
            d["median"] = median(r.samples)
            d["samples"] = r.samples
            if hasattr(r, "malloc"):
                d["all_heap"] = r.malloc
            if getattr(r, "instr", None) is not None:
                d["instructions_per_op"] = r.instr
        d["lifetime"] = r.lifetime
        out.append(d)
    base = next((d.get("median") for d in out if d["key"] == "membuf"), None)
    for d in out:
        if d.get("median") is not None and base:
            d["ratio_to_membuf"] = d["median"] / base
    return out


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny counts and sizes (< 60 s); exercises every installed peer; "
                         "writes to a temporary directory unless --out is given")
    ap.add_argument("--out", type=pathlib.Path, help="output directory (default benchmarks/results)")
    ap.add_argument("--repeat", type=int, help="repeats per measurement (default 9; smoke 3)")
    ap.add_argument("--_build", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._build:
        _build_one(args._build[0], pathlib.Path(args._build[1]))
        return 0
    if args._memory:
        _memory_child(args._memory[0], int(args._memory[1]))
        return 0

    t_start = time.perf_counter()
    cfg = Config(args.smoke)
    if args.repeat:
        cfg.repeat = args.repeat
    out = args.out
    if out is None:
        out = pathlib.Path(tempfile.mkdtemp(prefix="membuf-bench-")) if args.smoke else HERE / "results"
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    import membuf

    info = machine_info()
    log(f"membuf {info['membuf']} ({info['membuf_path']}), {info['python']}, CPU: {info['cpu']}"
        + (" -- SMOKE RUN" if cfg.smoke else ""))
    for k, v in info["peers"].items():
        if v is None:
            log(f"peer {k}: MISSING (reported as missing)")

    with tempfile.TemporaryDirectory(prefix="membuf-bench-build-") as tmp:
        build_dir = pathlib.Path(tmp)
        log("building the C harness and the peers ...")
        mods, missing = build_all(build_dir, log)
        if "bench_capi" not in mods:
            raise SystemExit(f"cannot build the C harness: {missing.get('bench_capi')}")
        for name, why in missing.items():
            log(f"peer extension {name}: MISSING ({why})")
        log("built: " + ", ".join(mods))

        res = {}
        log("C level: wrap + drop")
        res["c_wrap"] = section_c_wrap(cfg, mods, missing, log)
        block = ctypes.create_string_buffer(4096)
        addr = ctypes.addressof(block)
        mb = membuf.from_address(addr, 4096, owner=block)
        log("C level: export cycle")
        res["c_export_simple"] = section_c_export(cfg, mods, missing, log, PyBUF_SIMPLE, mb)
        res["c_export_full"] = section_c_export(cfg, mods, missing, log, PyBUF_FULL_RO, mb)
        log("Python level: wrap an address")
        res["py_wrap_size"] = 4096
        res["py_wrap"] = section_py_wrap(cfg, mods, missing, log, addr, 4096)
        log("Python level: wrap an exporter")
        res["py_from_buffer"] = section_py_from_buffer(cfg, log, 4096)
        log(f"memory per live object ({cfg.mem_objects} objects, child process)")
        res["memory"] = section_memory(cfg, mods, missing, build_dir, log)

        log(f"scale: mapping {fmt_size(max(cfg.sizes))} (untouched) and "
            f"{fmt_size(max(cfg.copy_max, cfg.sha_size))} (filled) ...")
        region = anon_mmap(max(cfg.sizes), noreserve=True)
        region_addr = membuf.address_of(region)
        src = anon_mmap(max(cfg.copy_max, cfg.sha_size))
        fill_pattern(src)
        src_addr = membuf.address_of(src)
        log("scale: wrap cost vs size")
        res["scale"] = section_scale(cfg, mods, log, region_addr, src_addr)
        region.close()
        log("RSS before/after wrapping")
        res["rss"] = section_rss(cfg, mods, log)
        log("throughput: sha256")
        res["sha"] = section_sha(cfg, log, src, src_addr)
        src.close()

        res["callgrind"] = section_callgrind(cfg, mods, missing, build_dir, res, log)

        # every release callback ran exactly once per wrap (sanity, not speed)
        released = mods["bench_capi"].release_count()

    # Anything that broke (not: a peer that is not installed) fails the run,
    # so that `--smoke` in CI catches a rotten benchmark.  Speed never does.
    problems = [f"build {name}: {why}" for name, why in missing.items()
                if why.startswith("build failed")]
    for section in res.values():
        if isinstance(section, list):
            problems += [f"{r.label}: {r.error}" for r in section
                         if isinstance(r, Measure) and r.error]
    if not res["sha"]["digests_equal"]:
        problems.append("sha256 of the Buffer differs from sha256 of the bytes copy")
    if res["rss"]["growth"] < 0 or any(r.get("membuf_c_ns") is None for r in res["scale"]):
        problems.append("scale/RSS section produced no numbers")

    targets = compute_targets(res)
    md = render_markdown(info, res, targets, cfg)
    (out / "results.md").write_text(md + "\n")
    payload = {
        "machine": info,
        "smoke": cfg.smoke,
        "config": {k: v for k, v in vars(cfg).items()},
        "targets": targets,
        "results": {
            k: (rows_json(v) if isinstance(v, list) and v and isinstance(v[0], Measure) else v)
            for k, v in res.items()
        },
        "bench_capi_release_count": released,
        "problems": problems,
        "elapsed_s": time.perf_counter() - t_start,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    plot_note = "scale.png"
    try:
        plot_scale(res["scale"], out / "scale.png", cfg.smoke)
    except ImportError as exc:
        plot_note = f"scale.png NOT written: matplotlib missing ({exc})"
        log(plot_note)

    print()
    print(md)
    log(f"wrote {out / 'results.md'}, {out / 'results.json'}, {plot_note}")
    print()
    print("TARGETS (membuf / peer):")
    for t in targets:
        state = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        meas = "-" if t["measured"] is None else f"{t['measured']:.3f}"
        op = "<" if t["strict"] else "<="
        mins = "" if t["ratio_of_minima"] is None else f"  (minima: {t['ratio_of_minima']:.3f})"
        why = f"  [not measured: {t['not_measured']}]" if t["met"] is None else ""
        print(f"  {state:>6}  {meas:>7} {op} {t['limit']:<4} {t['target']}{mins}{why}")
    if problems:
        print("\nPROBLEMS (the benchmark itself is broken; speed is never a problem):")
        for p in problems:
            print("  - " + p)
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
