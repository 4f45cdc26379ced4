#!/usr/bin/env bash
# Valgrind job: memcheck over the C-API, lifetime, pickle and DLPack tests (an ordinary,
# unsanitized build of membuf and fakelib, run under valgrind).
#
# Fails on any memcheck error (invalid read/write, use of uninitialised
# values, invalid free) and on "definitely lost" leaks.
#
# Interpreter: Debian's /usr/bin/python3.11 (apt python3.11), not a pyenv
# build: pyenv's 3.11.7 reports a start-up false positive under valgrind
# (cpython#119022).  PYTHONMALLOC=malloc makes every Python allocation a
# malloc call valgrind can check (pymalloc's arenas hide them, and its
# address_in_range() reads would need suppressing).  Suppressions: CPython's
# Misc/valgrind-python.supp, which Debian ships (package python3) as
# /usr/lib/valgrind/python3.supp, and .ci/valgrind.supp (glibc's ld.so and
# what the interpreter and NumPy never free at exit; commented there).
#
# Self-contained: runs as root on a fresh Debian 12 machine, installs what it
# needs, works in .venv-valgrind/ (git-ignored) and can be re-run.
#   bash .ci/valgrind.sh                      # the four files named below
#   bash .ci/valgrind.sh tests/test_capi.py   # other pytest args
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON=${PYTHON:-/usr/bin/python3.11}
VENV=$ROOT/.venv-valgrind
BUILD=$VENV/build
LOG=$VENV/valgrind.log

log() { printf '== %s\n' "$*"; }

# --- system packages -----------------------------------------------------
need=()
for pkg in gcc libc6-dev python3 python3.11-dev python3.11-venv valgrind; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

SUPP=/usr/lib/valgrind/python3.supp
[[ -f $SUPP ]] || { echo "CPython's valgrind suppressions not found at $SUPP (package python3)" >&2; exit 1; }
EXTRA_SUPP=$ROOT/.ci/valgrind.supp   # glibc, interpreter and NumPy at-exit reports: see there

# --- venv + build ----------------------------------------------------------
log "fresh venv $VENV ($("$PYTHON" --version))"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
mapfile -t TEST_DEPS < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]))')
"$PY" -m pip install --quiet --disable-pip-version-check "${TEST_DEPS[@]}"

log "build membuf (debugoptimized: -O2 -g, asserts on)"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps . \
    -Cbuild-dir="$BUILD" \
    -Csetup-args=-Dbuildtype=debugoptimized

# tests/conftest.py builds fakelib inside the valgrinded pytest process;
# valgrind does not follow its compiler children (no --trace-children).

# --- run -------------------------------------------------------------------
if (($# == 0)); then
    set -- tests/test_capi.py tests/test_lifetime.py tests/test_pickle.py tests/test_dlpack.py
fi
log "valgrind memcheck: pytest $*"
SECONDS=0
rc=0
PYTHONMALLOC=malloc PYTHONDONTWRITEBYTECODE=1 \
valgrind --tool=memcheck --quiet \
    --suppressions="$SUPP" --suppressions="$EXTRA_SUPP" \
    --error-exitcode=99 \
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --track-origins=yes --num-callers=40 \
    --log-file="$LOG" \
    "$PY" -m pytest -p no:cacheprovider -q -p no:faulthandler "$@" || rc=$?
echo "valgrind run took ${SECONDS}s (exit $rc)"

# The pytest process is the only one valgrind follows; its report is $LOG.
if [[ -s $LOG ]]; then
    echo "---- valgrind report ($LOG) ----"
    cat "$LOG"
    echo "---- end of valgrind report ----"
fi
if ((rc == 99)); then
    # Any memcheck error or definite leak fails (blocks CPython keeps at exit
    # are suppressed by name in .ci/valgrind.supp).
    echo "valgrind: memcheck errors or definite leaks (see the report above)" >&2
    exit 1
elif ((rc != 0)); then
    echo "valgrind: pytest failed under valgrind (exit $rc)" >&2
    exit "$rc"
fi
log "valgrind: OK"
