"""Shared fixtures: the downstream C extension `fakelib`, built the way a third
party would build it (against the *installed* membuf.get_include(), with
-Wall -Wextra -Werror and asserts on), once per test session."""

import importlib.util
import pathlib
import sys

import pytest

import membuf

CAPI_DIR = pathlib.Path(__file__).parent / "capi"
FAKELIB_SOURCES = ["fakelib_module.c", "fakelib.c", "fakelib_import.c"]
STRICT_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-UNDEBUG", "-O1"]


def build_extension(name, sources, build_dir, source_dir=CAPI_DIR, limited_api=False):
    """Compile a C extension with setuptools and import it from build_dir.
    limited_api=True builds it against the stable ABI (Py_LIMITED_API 3.11),
    as a downstream abi3 extension would include membuf.h."""
    from setuptools import Distribution, Extension

    ext = Extension(
        name,
        sources=[str(source_dir / s) for s in sources],
        include_dirs=[membuf.get_include(), str(source_dir)],
        extra_compile_args=STRICT_FLAGS,
        define_macros=[("Py_LIMITED_API", "0x030B0000")] if limited_api else [],
        py_limited_api=limited_api,
    )
    dist = Distribution({"name": name, "ext_modules": [ext]})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib = str(build_dir)
    cmd.build_temp = str(build_dir / "tmp")
    cmd.ensure_finalized()
    cmd.run()
    (path,) = build_dir.glob(f"{name}*.so")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


@pytest.fixture(scope="session")
def fakelib(tmp_path_factory):
    return build_extension("fakelib", FAKELIB_SOURCES, tmp_path_factory.mktemp("capi"))


# ---------------------------------------------------------------------------
# Helpers shared by the test files (import them: `from conftest import ...`)
# ---------------------------------------------------------------------------


def libc():
    """The C library through ctypes, with malloc and free typed."""
    import ctypes
    import ctypes.util

    lib = ctypes.CDLL(ctypes.util.find_library("c"))
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.free.restype = None
    lib.free.argtypes = [ctypes.c_void_p]
    return lib


def hypothesis_profile(prefix, ci_examples, long_examples, long_extra=None, **extra):
    """Register the Hypothesis profiles `<prefix>-ci` (derandomized, for CI)
    and `<prefix>-long` (random, for long local runs), and return the one
    MEMBUF_HYPOTHESIS_PROFILE chooses (default ci); its max_examples is
    overridden by MEMBUF_HYPOTHESIS_EXAMPLES when that is set.  `extra`
    settings (e.g. stateful_step_count) apply to both, `long_extra` (a dict)
    to the long one, over them."""
    import os

    from hypothesis import HealthCheck, settings

    common = dict(deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile(f"{prefix}-ci", max_examples=ci_examples, derandomize=True,
                              print_blob=False, **common, **extra)
    settings.register_profile(f"{prefix}-long", max_examples=long_examples, derandomize=False,
                              print_blob=True, **common, **{**extra, **(long_extra or {})})
    name = os.environ.get("MEMBUF_HYPOTHESIS_PROFILE", "ci")
    if name not in ("ci", "long"):
        raise ValueError(f"MEMBUF_HYPOTHESIS_PROFILE must be 'ci' or 'long', not {name!r}")
    chosen = settings.get_profile(f"{prefix}-{name}")
    examples = os.environ.get("MEMBUF_HYPOTHESIS_EXAMPLES")
    if examples:
        chosen = settings(chosen, max_examples=int(examples))
    return chosen


# ---------------------------------------------------------------------------
# pytest-run-parallel (CI's free-threaded job runs every test in several
# threads at once): tests whose state is per test, not per thread, run on
# one thread, each with its reason.
# ---------------------------------------------------------------------------

THREAD_UNSAFE_FIXTURES = {
    "big": "the fixture is one Buffer per test, shared by the threads, and the test "
           "releases it",
    "big_writable": "the fixture is one Buffer per test, shared by the threads, and the test "
                    "releases it",
    "monkeypatch": "monkeypatch changes process-wide state",
    "capfd": "captures the process's file descriptors",
    "unraisable": "swaps the process-wide sys.unraisablehook",
}
THREAD_UNSAFE_FILES = {
    "test_cython.py": "the Cython test modules count frees and remember the last address in "
                      "module globals",
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "thread_unsafe(reason): pytest-run-parallel runs the test on one thread")
    config.addinivalue_line(
        "markers", "release_abi(*packages): tools/refleak.py judges the test on blocks and "
        "fds only (it runs release-ABI code, e.g. NumPy scalars, that its hook cannot see)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = THREAD_UNSAFE_FILES.get(item.path.name)
        for name in getattr(item, "fixturenames", ()):
            reason = reason or THREAD_UNSAFE_FIXTURES.get(name)
        if reason is not None:
            item.add_marker(pytest.mark.thread_unsafe(reason=reason))
