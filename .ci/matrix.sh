#!/usr/bin/env bash
# The interpreter matrix: the test suite on every CPython users run, beside
# the 3.11 run of .ci/run.
#
#   3.12, 3.13  pyenv's interpreters (/root/.pyenv/versions/3.1x.y/bin/python,
#               part of this machine kind's image)
#   3.14        Debian unstable's python3.14, in the sid chroot that
#               .ci/interpreters.sh provisions (cached between runs)
#   3.13t       free-threaded CPython built by .ci/interpreters.sh (cached),
#               with the GIL off: importing membuf must keep it off, then a
#               named core subset (FT_TESTS below) and the threads stress test
#               run.  Not the whole suite: the Hypothesis property tests call
#               gc.collect() thousands of times, which on 3.13t walks the whole
#               heap each time (gc.freeze() does not help there: > 20 min);
#               the allocation-failure tests swap CPython's allocators, which
#               corrupts 3.13t's mimalloc heaps; cffi does not build there.
#
# Each gets a fresh virtual environment with the package and its test extras,
# and runs `python -m pytest` (the README's test command) in it.  Any failure
# fails the job.  Usage: bash .ci/matrix.sh [3.12|3.13|3.14|3.13t ...] (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WANT=("${@:-3.12 3.13 3.14 3.13t}")
FT_TESTS=(tests/test_stress_threads.py tests/test_threads.py tests/test_lifetime.py
          tests/test_buffer_protocol.py tests/test_python_api.py tests/test_regressions.py
          tests/test_capi.py tests/test_pickle.py tests/test_dlpack.py tests/test_gc_visibility.py
          tests/test_reentrancy.py tests/test_reentrancy_fuzz.py tests/test_subinterpreters.py
          tests/test_exit.py tests/test_cython.py)
read -r -a WANT <<<"${WANT[*]}"

log() { printf '== %s\n' "$*"; }

pyenv_python() {  # newest pyenv interpreter of a minor version
    local found
    found=$(ls -d /root/.pyenv/versions/"$1".*/bin/python 2>/dev/null | sort -V | tail -n 1)
    [ -n "$found" ] || { echo "no pyenv CPython $1 under /root/.pyenv/versions" >&2; exit 1; }
    printf '%s\n' "$found"
}

run_host() {  # $1: minor version
    local python venv
    python=$(pyenv_python "$1")
    venv=$ROOT/.venv-matrix-$1
    log "CPython $1 ($python): fresh venv, pip install '.[test]', python -m pytest"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet '.[test]'
    (cd "$ROOT" && "$venv/bin/python" -m pytest -q -p no:cacheprovider)
}

run_314() {
    log "CPython 3.14 (Debian sid chroot): provision or reuse"
    bash .ci/interpreters.sh 314
    local cache=${MEMBUF_INTERP_CACHE:-/var/cache/membuf-interpreters}
    # The chroot sees the host folders bind-mounted into it: this checkout's too.
    export MEMBUF_CHROOT_BINDS="/work /tmp $(dirname "$ROOT")"
    log "CPython 3.14: fresh venv, pip install '.[test]', python -m pytest"
    "$cache/bin/in-sid" bash -euc '
        venv=/tmp/membuf-venv-3.14
        rm -rf "$venv"
        python3.14 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet ".[test]"
        "$venv/bin/python" -m pytest -q -p no:cacheprovider
        rm -rf "$venv"'
}

run_313t() {
    log "CPython 3.13t (free-threaded): provision or reuse"
    bash .ci/interpreters.sh 313t
    local cache=${MEMBUF_INTERP_CACHE:-/var/cache/membuf-interpreters}
    local venv=$ROOT/.venv-matrix-3.13t
    rm -rf "$venv"
    "$cache/py313t/bin/python3.13t" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The test extras but cffi (it refuses free-threaded CPython); numpy and
    # hypothesis as wheels (hypothesis's sdist needs Rust).
    "$venv/bin/python" -m pip install --quiet --only-binary=numpy,hypothesis \
        "pytest>=7" "setuptools>=70.1" "numpy>=1.24" "hypothesis>=6.80" "Cython>=3.1"
    "$venv/bin/python" -m pip install --quiet --no-deps .
    log "CPython 3.13t: importing membuf keeps the GIL off"
    (cd /tmp && env -u PYTHON_GIL "$venv/bin/python" -W error::RuntimeWarning -c \
        'import sys, membuf; assert not sys._is_gil_enabled(), "membuf turned the GIL on"; print("GIL off")')
    log "CPython 3.13t: core subset and the threads stress test, GIL off"
    (cd "$ROOT" && env -u PYTHON_GIL "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        -W error::RuntimeWarning --deselect tests/test_capi.py::TestAllocationFailures "${FT_TESTS[@]}")
}

for version in "${WANT[@]}"; do
    case $version in
        3.12|3.13) run_host "$version" ;;
        3.14) run_314 ;;
        3.13t) run_313t ;;
        *) echo "unknown version '$version' (3.12, 3.13, 3.14 or 3.13t)" >&2; exit 2 ;;
    esac
done
log "matrix passed: ${WANT[*]}"
