#!/usr/bin/env bash
# Sanitizer job: membuf and the downstream test extension built with
# AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   1. the WHOLE pytest suite under ASan+UBSan (leak detection off: the
#      interpreter is not ours to leak-check, and gcc/ld run under it too);
#   2. a leak pass (tests/leakcheck_driver.py) with LeakSanitizer on, that
#      fails if foreign memory handed to membuf is never given back, or if
#      membuf leaks an object or an allocation of its own.
#
# Self-contained: runs as root on a fresh Debian 12 machine, installs what it
# needs, works in .venv-asan/ (git-ignored) and can be re-run.
#   bash .ci/sanitizers.sh            # both passes
#   bash .ci/sanitizers.sh -k lifetime  # extra args go to pytest (pass 1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Debian's interpreter (python3.11 on PATH may be a pyenv shim elsewhere).
PYTHON=${PYTHON:-/usr/bin/python3.11}
VENV=$ROOT/.venv-asan
BUILD=$VENV/build          # meson build dir, inside the git-ignored venv
PYTEST_TMP=$VENV/pytest-tmp

log() { printf '== %s\n' "$*"; }

# --- system packages -----------------------------------------------------
need=()
for pkg in gcc libc6-dev binutils python3.11-dev python3.11-venv libsqlite3-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

ASAN_LIB=$(gcc -print-file-name=libasan.so)
[[ -f $ASAN_LIB ]] || { echo "libasan.so not found (gcc -print-file-name gave '$ASAN_LIB')" >&2; exit 1; }

# --- venv + sanitized build ----------------------------------------------
log "fresh venv $VENV ($("$PYTHON" --version))"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip

# The test extras, read from pyproject.toml so this job follows it.
mapfile -t TEST_DEPS < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]))')
log "test deps: ${TEST_DEPS[*]}"
"$PY" -m pip install --quiet --disable-pip-version-check "${TEST_DEPS[@]}"

SAN_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
SAN_LDFLAGS="-fsanitize=address,undefined"

log "build membuf with -Db_sanitize=address,undefined"
# b_lundef=false: an extension module leaves the Python symbols undefined,
# which meson's -Wl,--no-undefined would reject once the sanitizers link in.
# debugoptimized: -O2 -g and asserts kept (b_ndebug=if-release).
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps . \
    -Cbuild-dir="$BUILD" \
    -Csetup-args=-Dbuildtype=debugoptimized \
    -Csetup-args=-Db_sanitize=address,undefined \
    -Csetup-args=-Db_lundef=false \
    "-Csetup-args=-Dc_args=-fno-omit-frame-pointer -fno-sanitize-recover=undefined -DMEMBUF_FREELIST_MAX=0"

# Prove the build is instrumented: ASan/UBSan report hooks must be imported
# by the .so itself (linking the runtime alone would not be enough).
check_sanitized() {
    local so=$1 syms
    syms=$(nm -D --undefined-only "$so")
    if ! grep -q '__asan_report_load' <<<"$syms" || ! grep -q '__ubsan_handle_' <<<"$syms"; then
        echo "NOT SANITIZED: $so (no __asan_report_load*/__ubsan_handle_* imports)" >&2
        exit 1
    fi
    echo "sanitized: ${so#"$ROOT"/} ($(grep -c '__asan_report_' <<<"$syms") asan + $(grep -c '__ubsan_handle_' <<<"$syms") ubsan hooks)"
}
shopt -s nullglob
membuf_so=("$VENV"/lib/python3*/site-packages/membuf/_membuf*.so)
((${#membuf_so[@]} == 1)) || { echo "expected one installed _membuf*.so, found ${#membuf_so[@]}" >&2; exit 1; }
check_sanitized "${membuf_so[0]}"

# Environment for everything that runs sanitized code.  CFLAGS/LDFLAGS make
# tests/conftest.py build fakelib (and the examples) sanitized as well.
export CFLAGS="$SAN_CFLAGS" LDFLAGS="$SAN_LDFLAGS"
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# Every object through malloc, so ASan sees each Python allocation too.
export PYTHONMALLOC=malloc
export PYTHONDONTWRITEBYTECODE=1
run_san() { LD_PRELOAD=$ASAN_LIB "$@"; }

# --- pass 1: the whole suite under ASan + UBSan ---------------------------
log "pass 1: pytest under ASan+UBSan (detect_leaks=0)"
# Reports go to files, not stderr: pytest captures fd 2 during a test, and a
# sanitizer that aborts the process takes the captured report with it.
LOGDIR=$VENV/sanitizer-logs
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"
rm -rf "$PYTEST_TMP"
SECONDS=0
rc=0
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$LOGDIR/asan \
UBSAN_OPTIONS=$UBSAN_OPTIONS:log_path=$LOGDIR/ubsan \
    run_san "$PY" -m pytest -p no:cacheprovider --basetemp="$PYTEST_TMP" -q "$@" || rc=$?
echo "pass 1 took ${SECONDS}s (pytest exit $rc)"
reports=("$LOGDIR"/*)
if ((${#reports[@]})); then
    for report in "${reports[@]}"; do
        echo "---- sanitizer report ${report#"$ROOT"/} ----"
        cat "$report"
    done
    echo "sanitizers: pass 1 produced ${#reports[@]} sanitizer report(s), see above" >&2
    exit 1
fi
((rc == 0)) || { echo "sanitizers: pytest failed under ASan+UBSan (exit $rc)" >&2; exit "$rc"; }

fakelib_so=("$PYTEST_TMP"/capi*/fakelib*.so)
((${#fakelib_so[@]} >= 1)) || { echo "pytest built no fakelib*.so under $PYTEST_TMP" >&2; exit 1; }
for so in "${fakelib_so[@]}"; do check_sanitized "$so"; done

# --- pass 2: leak check ---------------------------------------------------
# LeakSanitizer on.  The driver builds fakelib itself (with LD_PRELOAD
# dropped for the compiler), drives every way a Buffer is created and given
# back, then asks LSan for a leak check while the interpreter is fully alive
# (see the driver's docstring for why that is exact), and exits normally so
# the at-exit check runs too.  .ci/lsan.supp: see the comments there.
log "pass 2: leak check (detect_leaks=1)"
SECONDS=0
# The while-alive check inside the driver is exact and fails the driver
# (exit 1).  The at-exit check fails the job on any leak that .ci/lsan.supp
# does not suppress (exit 23): blocks CPython keeps for the life of the
# process are suppressed there by function names membuf never calls.
EXIT_REPORT=$VENV/lsan-at-exit
rm -f "$EXIT_REPORT".*
rc=0
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:fast_unwind_on_malloc=0:log_path=$EXIT_REPORT \
LSAN_OPTIONS=suppressions=$ROOT/.ci/lsan.supp:exitcode=23 \
    run_san "$PY" tests/leakcheck_driver.py --build-dir "$VENV/leakcheck-build" || rc=$?
shopt -s nullglob
reports=("$EXIT_REPORT".*)
if ((${#reports[@]})); then
    echo "== LeakSanitizer at-exit report:"
    cat "${reports[@]}"
fi
if ((rc == 23)); then
    echo "LeakSanitizer found leaks at exit (see the report above)" >&2
    exit 1
fi
if ((rc != 0)); then
    echo "leakcheck_driver failed (exit $rc): see above" >&2
    exit 1
fi
echo "pass 2 took ${SECONDS}s"
log "sanitizers: OK"
