"""Reference-leak hunting for pytest on a debug CPython, decided the way
CPython's own ``python -m test -R 3:3`` decides it.

Usage (from the repository root, with a debug interpreter, e.g. Debian's
``python3.11d``, where ``sys.gettotalrefcount()`` exists)::

    python -m pytest -p tools.refleak [--huntrleaks=3:3] [--refleak-report=FILE] tests/...

``.ci/refleak.sh`` sets up such an interpreter and runs this over the core tests.

Why a plugin of our own: the maintained alternatives do not do this job.
``pytest-leaks`` (0.3.1, 2019, the last release) carries copies of regrtest's
``dash_R`` for 2.7/3.5/3.8 only: on 3.11 it misses what regrtest learnt since
(quickened-code blocks in ``getallocatedblocks()``, the cleanups of newer
caches, the rerun of a flagged test), and it cannot tell a debug total that
drifts because a release-ABI extension (numpy) was called from a real leak
(below).  CPython's own ``python -m test -R`` runs unittest modules, not
pytest items with fixtures.  ``pytest-run-parallel`` and its neighbours look
for thread-safety, not leaks.  What is regrtest's here is regrtest's rule;
what is ours is said below, under "Beyond regrtest".

What it does, per selected test item (the model is ``dash_R()`` in CPython 3.11's
Lib/test/libregrtest/refleak.py):

* Runs the item's *whole* pytest protocol (setup, call, teardown) WARMUP+RUNS
  times in a row.  Function-scoped fixtures are created and torn down every
  time (they are part of the test); session, module and class fixtures (the
  ``fakelib`` build, for instance) are created once, during the first warm-up
  run, and torn down only after the last run, so they stay outside the
  measurement.
* Before the first run and after every run it restores/clears what regrtest
  restores and clears (warnings filters, copyreg dispatch table,
  sys.path_importer_cache, zipimport cache, ABC registries and caches,
  ``__warningregistry__``, re / struct / linecache / typing / ctypes / urllib /
  mimetypes / filecmp / _strptime caches, ``sys._clear_type_cache()``), then
  collects garbage three times and reads ``sys.gettotalrefcount()``,
  ``sys.getallocatedblocks() - sys._getquickenedcount()`` and the number of
  open file descriptors.  The per-run deltas are stored in pre-allocated lists
  through regrtest's small-int pool, so the bookkeeping itself allocates
  nothing in steady state.  Captured output and warnings of a run are kept
  for the last run only (pytest would otherwise accumulate them, which looks
  like a leak).
* regrtest's verdict, on the RUNS measured deltas only (warm-up runs are
  ignored): references leak if *every* measured delta is >= 1; memory blocks
  likewise (this tolerates the noise regrtest tolerates: [3, 0, 0], [0, 1, 0],
  [8, -8, 1]); file descriptors leak if *any* measured delta is non-zero.
* A flagged item is measured once more (another WARMUP + RUNS round, like
  regrtest's rerun of failed tests) and reported only for what leaks again;
  the others are listed as "not confirmed" (threads make blocks noisy: one
  test here showed [1, 1, 1] blocks once in ten runs of the suite).
* A leaking item is reported as FAILED with a message like regrtest's::

      tests/test_x.py::test_y leaked [1, 1, 1] references, sum=3

  the terminal summary lists every leak with its per-run refs/blocks/fds, and
  pytest exits non-zero.  ``--refleak-report=FILE`` also writes one line per
  checked item (refs, blocks and fds per measured run) plus the leaks.
* An item that fails or is skipped in some run stops repeating; its reports of
  that run are the ones pytest shows (a test that passes once but fails when
  repeated is a bug of its own, and the failure says in which run).

Beyond regrtest, for pytest and this machine:

* Release-ABI extensions.  Debian's python3.11d also loads plain cpython-311
  modules, and pip installs cp311 wheels for it (numpy has no debug wheels).
  In 3.11 their Py_INCREF/Py_DECREF change ob_refcnt but not the debug total,
  so gettotalrefcount() drifts (about +1 per numpy call) with nothing leaked.
  During the first warm-up run a profile hook notes whether the test calls C
  functions or methods of such a package (any loaded ``.so`` without this
  interpreter's SOABI; a numpy array that the test did not create through a
  call, e.g. a module-level one only indexed, goes unnoticed); those tests
  are judged on memory blocks and fds only, and the summary and the report say
  which.  ``--refleak-trust=numpy`` judges their refs too (for a numpy built
  from source for the debug ABI).  A test that fails under the hook (it
  counts allocations) is rerun without it and judged on refs as usual.
* pytest's own growth: a function-scoped fixture that depends on a
  higher-scoped one (tmp_path -> tmp_path_factory) leaves a no-op finalizer on
  the latter each time (~30 refs per run); those are dropped between runs.
* Speed: collecting this heap takes 35-150 ms, 22 times per item.  What is
  alive before the item and after each warm-up run but the last is moved to
  the permanent generation (gc.freeze()), so collections only walk what the
  runs create (about 5x faster, same verdicts; ``--refleak-no-freeze``).
* ``--refleak-sample=N`` keeps every Nth case of each test function (for
  huge parametrized grids); ``--refleak-trace=N`` shows the N allocation sites
  that grew most in a leaking test (tracemalloc; diagnosis only).

pytest-leaks (0.3.1, 2019) is not used: under pytest 9 every test using
tmp_path errors in its repeated teardown (KeyError from the item's stash),
and it knows neither the stale finalizers nor release-ABI extensions.

Limits: only leaks that recur on every run are seen (a cache that fills once
is not a leak); leaks in a session/module/class fixture are outside the
measurement by design; leaks in code run in a subprocess are invisible; refs
of release-ABI code (numpy) are not judged unless trusted.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import sysconfig
import warnings

import pytest
from _pytest.fixtures import FixtureDef
from _pytest.runner import CallInfo, get_reraise_exceptions, runtestprotocol

_INT_POOL = {value: value for value in range(-1000, 1000)}


def _pooled(value):
    # bpo-31217: one int object per value, so storing a delta allocates nothing
    return _INT_POOL.setdefault(value, value)


def _fd_count():
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus listdir's own fd
    except OSError:  # pragma: no cover - not Linux
        return 0


def _warm_caches():
    # regrtest's warm_caches(): one-char bytes/str and small ints
    s = bytes(range(256))
    for i in range(256):
        s[i : i + 1]
    [chr(i) for i in range(256)]
    list(range(-5, 257))


def _abc_dump(cls):
    from _abc import _get_dump

    return _get_dump(cls)[0]


def _abstract_abcs():
    import collections.abc
    from inspect import isabstract

    return [
        abc
        for abc in (getattr(collections.abc, a) for a in collections.abc.__all__)
        if isabstract(abc)
    ]


class _Snapshot:
    """What regrtest's dash_R() saves before a test and restores after each run."""

    def __init__(self):
        import copyreg

        self.filters = warnings.filters[:]
        self.dispatch = copyreg.dispatch_table.copy()
        self.importer_cache = sys.path_importer_cache.copy()
        try:
            import zipimport
        except ImportError:  # pragma: no cover
            self.zip_cache = None
        else:
            self.zip_cache = zipimport._zip_directory_cache.copy()
        self.abcs = {}
        for abc in _abstract_abcs():
            for obj in abc.__subclasses__() + [abc]:
                self.abcs[obj] = _abc_dump(obj)

    def restore(self):
        import copyreg

        warnings.filters[:] = self.filters
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(self.dispatch)
        sys.path_importer_cache.clear()
        sys.path_importer_cache.update(self.importer_cache)
        if self.zip_cache is not None:
            import zipimport

            zipimport._zip_directory_cache.clear()
            zipimport._zip_directory_cache.update(self.zip_cache)
        for abc in _abstract_abcs():
            for obj in abc.__subclasses__() + [abc]:
                for ref in self.abcs.get(obj, ()):
                    if ref() is not None:
                        obj.register(ref())
                obj._abc_caches_clear()
        _clear_caches()
        sys._clear_type_cache()  # last: the calls above can modify types


def _clear_caches():
    """regrtest's libregrtest.utils.clear_caches() (3.11)."""
    for mod in list(sys.modules.values()):
        if hasattr(mod, "__warningregistry__"):
            del mod.__warningregistry__
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    mods = sys.modules
    if "distutils.dir_util" in mods:
        # CPython's distutils; setuptools' own (70.1+) has a cache object instead.
        path_created = getattr(mods["distutils.dir_util"], "_path_created", None)
        if path_created is not None:
            path_created.clear()
        else:
            cache = getattr(mods["distutils.dir_util"], "SkipRepeatAbsolutePaths", None)
            if cache is not None and hasattr(cache, "instance"):
                cache.clear()
    if "re" in mods:
        mods["re"].purge()
    if "_strptime" in mods:
        mods["_strptime"]._regex_cache.clear()
    if "urllib.parse" in mods:
        mods["urllib.parse"].clear_cache()
    if "urllib.request" in mods:
        mods["urllib.request"].urlcleanup()
    if "linecache" in mods:
        mods["linecache"].clearcache()
    if "mimetypes" in mods:
        mods["mimetypes"]._default_mime_types()
    if "filecmp" in mods:
        mods["filecmp"]._cache.clear()
    if "struct" in mods:
        mods["struct"]._clearcache()
    if "doctest" in mods:
        mods["doctest"].master = None
    if "ctypes" in mods:
        mods["ctypes"]._reset_cache()
    if "typing" in mods:
        for f in mods["typing"]._cleanups:
            f()


def _take_snapshot():
    import tracemalloc

    return tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )


def _prune_stale_finalizers(item):
    """pytest (8, 9) registers ``partial(dep.finish, request=...)`` on every
    higher-scoped fixture that a function-scoped fixture depends on (e.g.
    tmp_path -> tmp_path_factory), each time it is set up, and drops them only
    when the higher-scoped fixture ends: ~30 refs per run that look like a
    leak of the test.  Once the function-scoped fixture is finished
    (``cached_result is None``) calling it is a no-op, so drop those."""
    finish = getattr(FixtureDef, "finish", None)
    info = getattr(item, "_fixtureinfo", None)
    if finish is None or info is None:
        return
    for defs in info.name2fixturedefs.values():
        for fixturedef in defs:
            fins = getattr(fixturedef, "_finalizers", None)
            if not fins:
                continue
            stale = [
                fin
                for fin in fins
                if isinstance(fin, functools.partial)
                and getattr(fin.func, "__func__", None) is finish
                and getattr(fin.func.__self__, "cached_result", True) is None
            ]
            for fin in stale:
                fins.remove(fin)
            del stale


def _release_abi_packages():
    """Top-level packages with a loaded C extension not built for this (debug)
    ABI.  Debian's python3.11d also imports plain ``cpython-311`` modules (and
    pip accepts cp311 wheels for it), e.g. the numpy wheel.  In 3.11 such code
    runs the release build's Py_INCREF/Py_DECREF, which change ob_refcnt but
    not the total behind sys.gettotalrefcount(): an object that the
    interpreter creates and numpy frees shows up as +1 ref per call.  (Memory
    blocks are counted by the allocator and stay exact.)"""
    soabi = sysconfig.get_config_var("SOABI") or ""
    found = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and path.endswith((".so", ".pyd")) and soabi not in os.path.basename(path):
            found.add(name.partition(".")[0])
    return found


class _Touches:
    """Profile hook: which of `packages` had C functions (or methods of
    their types) called while the block ran, in any thread."""

    def __init__(self, packages):
        self.packages = packages
        self.hit = set()

    def _profile(self, frame, event, arg):
        # C functions only: the Python code of such a package (hypothesis's
        # pytest plugin runs in every test) is harmless, and what its C code
        # creates, it creates through a C function call.
        if event != "c_call":
            return
        name = getattr(arg, "__module__", None)
        if not isinstance(name, str):
            name = type(getattr(arg, "__self__", None)).__module__ or ""
        top = name.partition(".")[0]
        if top in self.packages:
            self.hit.add(top)

    def __enter__(self):
        import threading

        self._old = sys.getprofile(), threading._profile_hook
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)
        return self.hit

    def __exit__(self, *exc):
        import threading

        sys.setprofile(self._old[0])
        threading.setprofile(self._old[1])
        return False


def _gc_collect():
    # test.support.gc_collect()
    gc.collect()
    gc.collect()
    gc.collect()


def _parse_runs(text):
    try:
        warmup, runs = (int(x) for x in text.split(":"))
    except ValueError:
        raise pytest.UsageError(f"--huntrleaks wants WARMUP:RUNS, e.g. 3:3, not {text!r}")
    if warmup < 0 or runs < 1:
        raise pytest.UsageError("--huntrleaks: WARMUP must be >= 0 and RUNS >= 1")
    return warmup, runs


def pytest_addoption(parser):
    group = parser.getgroup("refleak", "reference-leak hunting (debug CPython, regrtest -R)")
    group.addoption(
        "--huntrleaks",
        default=os.environ.get("REFLEAK_RUNS", "3:3"),
        metavar="WARMUP:RUNS",
        help="warm-up runs, then measured runs per test (default 3:3, or $REFLEAK_RUNS)",
    )
    group.addoption(
        "--refleak-report",
        default=None,
        metavar="FILE",
        help="also write the per-test deltas and the leaks to FILE",
    )
    group.addoption(
        "--refleak-trace",
        type=int,
        default=0,
        metavar="N",
        help="diagnosis: run under tracemalloc and show, for a leaking test, the N "
        "allocation sites that grew most over the measured runs (adds noise to the "
        "deltas; use on the leaking tests only)",
    )
    group.addoption(
        "--refleak-sample",
        type=int,
        default=1,
        metavar="N",
        help="keep every Nth instance of each (parametrized) test function, the "
        "first always (deterministic; for huge grids such as test_buffer_protocol)",
    )
    group.addoption(
        "--refleak-trust",
        default="",
        metavar="PKG,...",
        help="judge refs even for tests that run these release-ABI extension packages",
    )
    group.addoption(
        "--refleak-no-freeze",
        action="store_true",
        help="collect the whole heap three times per run, as regrtest does, instead of "
        "gc.freeze()-ing what is alive before the item and after each warm-up run "
        "(about 5x slower, same verdicts)",
    )
    group.addoption(
        "--refleak-no-confirm",
        action="store_true",
        help="report a leak after one round; by default a flagged test is measured "
        "once more (WARMUP + RUNS again) and reported only if it leaks again",
    )
    group.addoption(
        "--refleak-no-fd",
        action="store_true",
        help="do not judge file-descriptor deltas",
    )


def pytest_configure(config):
    if not hasattr(sys, "gettotalrefcount"):
        raise pytest.UsageError(
            "tools.refleak needs a debug build of CPython (sys.gettotalrefcount); "
            "e.g. Debian's python3.11d from the python3.11-dbg package"
        )
    if config.pluginmanager.hasplugin("xdist") and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("tools.refleak does not work with pytest-xdist (-n)")
    config.addinivalue_line(
        "markers", "release_abi(*packages): the test runs code of these release-ABI "
        "packages in ways the profile hook cannot see (judged on blocks and fds only)")
    warmup, runs = _parse_runs(config.getoption("huntrleaks"))
    config.pluginmanager.register(
        RefleakHunter(config, warmup, runs), "refleak-hunter"
    )


class _Round:
    """One measurement: WARMUP + RUNS runs of an item."""

    refs = blocks = fds = reports = caught = touched = trace_before = failed_run = None
    undetected = False


class RefleakHunter:
    def __init__(self, config, warmup, runs):
        self.config = config
        self.warmup = warmup
        self.runs = runs
        self.check_fd = not config.getoption("refleak_no_fd")
        self.report_path = config.getoption("refleak_report")
        self.checked = []  # (nodeid, refs, blocks, fds) of every measured item
        self.leaks = []  # (nodeid, [messages])
        self.not_measured = 0
        self.blocks_only = []  # (nodeid, packages, refs) judged without refs
        self.flaky = []  # flagged once, not when measured again
        self.confirm = not config.getoption("refleak_no_confirm")
        self.trusted = set(filter(None, config.getoption("refleak_trust").split(",")))
        self.trace = config.getoption("refleak_trace")
        self.freeze = not config.getoption("refleak_no_freeze")
        if self.trace:
            import tracemalloc

            tracemalloc.start(int(os.environ.get("REFLEAK_TRACE_FRAMES", "1")))
        _warm_caches()

    # -- selection --------------------------------------------------------
    def pytest_collection_modifyitems(self, config, items):
        step = config.getoption("refleak_sample")
        if step <= 1:
            return
        seen = {}
        keep, drop = [], []
        for item in items:
            key = item.nodeid.partition("[")[0]
            index = seen[key] = seen.get(key, -1) + 1
            (keep if index % step == 0 else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    # -- the protocol -----------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reports, messages = self._hunt(item, nextitem)
        for rep in reports:
            ihook.pytest_runtest_logreport(report=rep)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        if messages:
            self.leaks.append((item.nodeid, messages))
        return True

    def _hunt(self, item, nextitem):
        # Tear an item down to its parent between runs: its function-scoped
        # fixtures go, the parent's (class, module, session) stay.
        between = item.parent
        untrusted = _release_abi_packages() - self.trusted
        if untrusted and self.warmup == 0:
            raise pytest.UsageError(
                f"release-ABI extensions loaded ({', '.join(sorted(untrusted))}): "
                "--huntrleaks needs >= 1 warm-up run to tell which tests run them"
            )
        first = self._round(item, between, untrusted)
        last = first
        leaked = first.failed_run is None and self._verdict(first)
        confirmed = leaked
        if leaked and self.confirm:
            # Like regrtest's rerun of failed tests: measure once more and
            # report only what leaks again (threads make blocks noisy).
            second = self._round(item, between, None)
            second.touched, second.undetected = first.touched, first.undetected
            last = second
            if second.failed_run is None:
                again = self._verdict(second)
                confirmed = [what for what in leaked if what in again]
            else:
                confirmed = []

        # Now the real teardown, down to what the next item shares.
        # (Only the setup stack: the teardown hooks of the item itself have
        # run already, at the end of the last run.)
        reports = last.reports
        final = CallInfo.from_call(
            lambda: item.session._setupstate.teardown_exact(nextitem),
            when="teardown",
            reraise=get_reraise_exceptions(item.config),
        )
        if final.excinfo is not None:
            final_rep = item.ihook.pytest_runtest_makereport(item=item, call=final)
            reports = [rep for rep in reports if rep.when != "teardown"] + [final_rep]
        # Hand the last run's warnings on to pytest's own recorder.
        for w in last.caught or ():
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)

        if last.failed_run is not None:
            self.not_measured += 1
            repcount = self.warmup + self.runs
            runs_before = last.failed_run + (repcount if last is not first else 0)
            if runs_before > 0:
                for rep in reports:
                    if not rep.passed:
                        rep.sections.append(
                            ("refleak", f"passed {runs_before} time(s), then failed when "
                                        "run again")
                        )
            return reports, []

        w = self.warmup
        self.checked.append(
            (item.nodeid, first.refs[w:], first.blocks[w:], first.fds[w:],
             sorted(first.touched or ()))
        )
        if first.touched:
            self.blocks_only.append((item.nodeid, sorted(first.touched), first.refs[w:]))
        if leaked and not confirmed:
            self.flaky.append(
                f"{item.nodeid}: {', '.join(leaked)} grew in every run "
                f"(refs {first.refs[w:]}, blocks {first.blocks[w:]}, fds {first.fds[w:]}), "
                f"but not when measured again (refs {last.refs[w:]}, blocks "
                f"{last.blocks[w:]}, fds {last.fds[w:]})"
            )
        if not confirmed:
            return reports, []

        messages = []
        for what, deltas in (("references", last.refs), ("memory blocks", last.blocks),
                             ("file descriptors", last.fds)):
            if what in confirmed:
                deltas = deltas[w:]
                messages.append(f"{item.nodeid} leaked {deltas} {what}, sum={sum(deltas)}")
        if last.undetected:
            messages.append(
                f"  (whether it runs {', '.join(sorted(untrusted))} is unknown: it fails "
                "under a profile hook; refs of release-ABI code are not exact)"
            )
        if self.trace and last.trace_before is not None:
            growth = _take_snapshot().compare_to(last.trace_before, "traceback")
            messages.append(
                "  tracemalloc, top growth over the measured runs:\n"
                + "\n".join("    " + "\n    ".join(str(stat).splitlines()[:1]
                                                  + stat.traceback.format()[-4:])
                            for stat in growth[: self.trace])
            )
        call = next((rep for rep in reports if rep.when == "call"), None)
        if call is not None:
            rounds = [first] if last is first else [first, last]
            call.outcome = "failed"
            call.longrepr = "\n".join(messages) + "".join(
                f"\n(round {n}: {self.warmup} warm-up + {self.runs} measured runs: all refs "
                f"{r.refs}, all blocks {r.blocks}, all fds {r.fds})"
                for n, r in enumerate(rounds, 1)
            )
        return reports, messages

    def _verdict(self, rnd):
        """regrtest's rule on the measured runs: what leaked."""
        w = self.warmup
        leaked = []
        if not rnd.touched and all(d >= 1 for d in rnd.refs[w:]):
            leaked.append("references")
        if all(d >= 1 for d in rnd.blocks[w:]):
            leaked.append("memory blocks")
        if self.check_fd and any(rnd.fds[w:]):
            leaked.append("file descriptors")
        return leaked

    def _round(self, item, between, untrusted):
        """WARMUP + RUNS runs of the item, measured after each."""
        rnd = _Round()
        repcount = self.warmup + self.runs
        rep_range = list(range(repcount))
        rc_deltas = rnd.refs = [0] * repcount
        alloc_deltas = rnd.blocks = [0] * repcount
        fd_deltas = rnd.fds = [0] * repcount
        gettotalrefcount = sys.gettotalrefcount
        getallocatedblocks = sys.getallocatedblocks
        getquickenedcount = getattr(sys, "_getquickenedcount", lambda: 0)
        sections = getattr(item, "_report_sections", None)
        caught = None
        reports = None

        snapshot = _Snapshot()
        snapshot.restore()
        if self.freeze:
            # Speed (35-150 ms per full collection of this heap, 22 per
            # item): what is alive now cannot be the test's leak; park it in
            # the permanent generation so that collections only walk what the
            # runs create.  Kept frozen for the rest of the session (a full
            # collection per item to unfreeze would cost as much again);
            # cyclic garbage among frozen objects waits for the session end.
            gc.collect()
            gc.freeze()
        _gc_collect()
        alloc_before = getallocatedblocks() - getquickenedcount()
        rc_before = gettotalrefcount()
        fd_before = _fd_count()

        for i in rep_range:
            reports = caught = None
            if sections is not None:
                sections.clear()
            with warnings.catch_warnings(record=True) as caught:
                if i == 0 and untrusted:
                    # Which release-ABI packages does the test run?  Asked in
                    # the first (warm-up) run only, under a profile hook.
                    with _Touches(untrusted) as rnd.touched:
                        reports = runtestprotocol(item, log=False, nextitem=between)
                    # What the hook cannot see: objects of such a package
                    # handled without a C-function call of its own (a NumPy
                    # scalar used as an index runs numpy's nb_index slot).
                    # Tests declare it: @pytest.mark.release_abi("numpy").
                    for mark in item.iter_markers("release_abi"):
                        rnd.touched.update(p for p in mark.args if p in untrusted)
                    if not all(rep.passed for rep in reports):
                        # The hook itself allocates, which upsets tests that
                        # count allocations (set_nomemory): run it again bare,
                        # and judge refs as usual.
                        rnd.touched = None
                        rnd.undetected = True
                        reports = caught = None
                        if sections is not None:
                            sections.clear()
                        with warnings.catch_warnings(record=True) as caught:
                            reports = runtestprotocol(item, log=False, nextitem=between)
                else:
                    reports = runtestprotocol(item, log=False, nextitem=between)
            if not all(rep.passed for rep in reports):
                rnd.failed_run = i
                break

            _prune_stale_finalizers(item)
            snapshot.restore()
            _gc_collect()
            alloc_after = getallocatedblocks() - getquickenedcount()
            rc_after = gettotalrefcount()
            fd_after = _fd_count()

            if self.trace and i == self.warmup - 1:
                rnd.trace_before = _take_snapshot()
            rc_deltas[i] = _pooled(rc_after - rc_before)
            alloc_deltas[i] = _pooled(alloc_after - alloc_before)
            fd_deltas[i] = _pooled(fd_after - fd_before)
            alloc_before = alloc_after
            rc_before = rc_after
            fd_before = fd_after
            if self.freeze and i < self.warmup - 1:
                # What the warm-up runs built and kept (lazily filled module
                # caches, say) is old too: keep the collections short.  Not
                # after the last warm-up run: what a measured run turns into
                # cyclic garbage (the previous run's pytest request, ...) must
                # still be collectable, or it shows up as a delta.
                gc.freeze()

        rnd.reports = reports
        rnd.caught = caught
        return rnd

    # -- reporting --------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        tr.section("refleak (regrtest -R %d:%d rule)" % (self.warmup, self.runs))
        tr.write_line(
            f"{len(self.checked)} test(s) measured, {self.not_measured} not measured "
            f"(failed or skipped), {len(self.leaks)} leaking"
        )
        if self.blocks_only:
            pkgs = sorted({p for _n, touched, _r in self.blocks_only for p in touched})
            tr.write_line(
                f"{len(self.blocks_only)} of them ran code of release-ABI extension(s) "
                f"{', '.join(pkgs)}: judged on memory blocks and fds only, since such "
                "code changes refcounts without updating sys.gettotalrefcount() "
                "(--refleak-report lists them)"
            )
        for line in self.flaky:
            tr.write_line("not confirmed (not a failure): " + line, yellow=True)
        for _nodeid, messages in self.leaks:
            for message in messages:
                tr.write_line("LEAK " + message, red=True, bold=True)
        if self.report_path:
            with open(self.report_path, "w", encoding="utf-8") as f:
                f.write(f"# refleak -R {self.warmup}:{self.runs}: nodeid\trefs\tblocks\tfds"
                        "\t(per measured run)\n")
                for nodeid, refs, blocks, fds, touched in self.checked:
                    note = f"\trefs not judged: ran {','.join(touched)}" if touched else ""
                    f.write(f"{nodeid}\t{refs}\t{blocks}\t{fds}{note}\n")
                for line in self.flaky:
                    f.write(f"NOT CONFIRMED {line}\n")
                for _nodeid, messages in self.leaks:
                    for message in messages:
                        f.write(f"LEAK {message}\n")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session):
        if self.freeze:
            gc.unfreeze()
        if self.leaks and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
