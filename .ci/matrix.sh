#!/usr/bin/env bash
# The interpreter matrix: the whole test suite on every CPython users run,
# beside the 3.11 run of .ci/run.
#
#   3.12, 3.13  pyenv's interpreters (/root/.pyenv/versions/3.1x.y/bin/python,
#               part of this machine kind's image)
#   3.14        Debian unstable's python3.14, in the sid chroot that
#               .ci/interpreters.sh provisions (cached between runs)
#
# Each gets a fresh virtual environment with the package and its test extras,
# and runs `python -m pytest` (the README's test command) in it.  Any failure
# fails the job.  Usage: bash .ci/matrix.sh [3.12|3.13|3.14 ...] (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WANT=("${@:-3.12 3.13 3.14}")
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

for version in "${WANT[@]}"; do
    case $version in
        3.12|3.13) run_host "$version" ;;
        3.14) run_314 ;;
        *) echo "unknown version '$version' (3.12, 3.13 or 3.14)" >&2; exit 2 ;;
    esac
done
log "matrix passed: ${WANT[*]}"
