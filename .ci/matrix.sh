#!/usr/bin/env bash
# The interpreter matrix: the test suite on every CPython users run, beside
# the 3.11 run of .ci/run.
#
#   3.12, 3.13  pyenv's interpreters (/root/.pyenv/versions/3.1x.y/bin/python,
#               part of this machine kind's image)
#   3.14        Debian unstable's python3.14, in the sid chroot that
#               .ci/interpreters.sh provisions (cached between runs)
#   3.13t       free-threaded CPython built by .ci/interpreters.sh (cached):
#               importing membuf must keep the GIL off; the threads stress test
#               runs with the GIL off (asserted); then the whole suite, with the
#               Hypothesis tests at 50 examples each (each of their thousands of
#               gc.collect() calls walks the whole heap on 3.13t: the full
#               profiles take > 20 min) and without the allocation-failure
#               tests (_testcapi.set_nomemory swaps CPython's allocators, which
#               corrupts 3.13t's mimalloc heaps); cffi does not build there.
#               The example extensions (sqlite_blobs, c_extension) do not
#               declare free-threading support, so the GIL comes back on when
#               those tests import them, as CPython does for any such module.
#   3.14t       the same steps, the day .ci/interpreters.sh can build it (today
#               Debian sid's python3.14 source files answer 404: the step says
#               "NOT RUN" with the reason, and the job goes on).
#
# Each gets a fresh virtual environment with the package and its test extras,
# and runs `python -m pytest` (the README's test command) in it.  Any failure
# fails the job.  Usage: bash .ci/matrix.sh [3.12|3.13|3.14|3.13t|3.14t ...] (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WANT=("${@:-3.12 3.13 3.14 3.13t 3.14t}")
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
    # Leave no bind behind: the next run's checkout may sit at the same path.
    "$cache/bin/in-sid" --unmount
}

run_ft() {  # $1: 3.13 or 3.14 -- the free-threaded build of that version
    local ver=$1 tag=${1}t rc=0
    log "CPython $tag (free-threaded): provision or reuse"
    bash .ci/interpreters.sh "${ver/./}t" || rc=$?
    if [ "$rc" = 3 ]; then
        log "CPython $tag: NOT RUN: not obtainable on this machine (interpreters.sh said why above)"
        return 0
    fi
    [ "$rc" = 0 ] || exit "$rc"
    local cache=${MEMBUF_INTERP_CACHE:-/var/cache/membuf-interpreters}
    local venv=$ROOT/.venv-matrix-$tag
    rm -rf "$venv"
    "$cache/py${ver/./}t/bin/python${tag}" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The test extras but cffi (it refuses free-threaded CPython); numpy and
    # hypothesis as wheels (hypothesis's sdist needs Rust); mypy 1.15, the
    # newest without compiled dependencies that need Rust here (ast-serialize,
    # librt); pytest-run-parallel for the run of every test in 4 threads.
    "$venv/bin/python" -m pip install --quiet --only-binary=numpy,hypothesis \
        "pytest>=7" "setuptools>=70.1" "numpy>=1.24" "hypothesis>=6.80" "Cython>=3.1" \
        "mypy==1.15.0" "pytest-run-parallel>=0.10"
    "$venv/bin/python" -m pip install --quiet --no-deps .
    log "CPython $tag: importing membuf keeps the GIL off"
    (cd /tmp && env -u PYTHON_GIL "$venv/bin/python" -W error::RuntimeWarning -c \
        'import sys, membuf; assert not sys._is_gil_enabled(), "membuf turned the GIL on"; print("GIL off")')
    log "CPython $tag: the threads stress test and the thread tests, GIL off (asserted)"
    (cd "$ROOT" && env -u PYTHON_GIL MEMBUF_REQUIRE_NO_GIL=1 "$venv/bin/python" -m pytest -q \
        -p no:cacheprovider -W error::RuntimeWarning tests/test_stress_threads.py tests/test_threads.py)
    log "CPython $tag: the core tests under pytest-run-parallel, each test in 4 threads at once, GIL off"
    # Tests whose state is per test rather than per thread run on one thread,
    # each with its reason (tests/conftest.py: THREAD_UNSAFE_*).
    (cd "$ROOT" && env -u PYTHON_GIL "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        -W error::RuntimeWarning --parallel-threads=4 \
        tests/test_lifetime.py tests/test_python_api.py tests/test_constructors.py \
        tests/test_messages.py tests/test_pickle.py tests/test_dlpack.py tests/test_consumers.py \
        tests/test_regressions.py tests/test_reentrancy.py tests/test_capi.py \
        tests/test_gc_visibility.py --deselect tests/test_capi.py::TestAllocationFailures)
    log "CPython $tag: the whole suite (Hypothesis tests at 50 examples each)"
    (cd "$ROOT" && env -u PYTHON_GIL MEMBUF_HYPOTHESIS_EXAMPLES=50 "$venv/bin/python" -m pytest -q \
        -p no:cacheprovider --deselect tests/test_capi.py::TestAllocationFailures \
        --ignore tests/test_alloc_failures.py)
}

for version in "${WANT[@]}"; do
    case $version in
        3.12|3.13) run_host "$version" ;;
        3.14) run_314 ;;
        3.13t) run_ft 3.13 ;;
        3.14t) run_ft 3.14 ;;
        *) echo "unknown version '$version' (3.12, 3.13, 3.14, 3.13t or 3.14t)" >&2; exit 2 ;;
    esac
done
log "matrix passed: ${WANT[*]}"
