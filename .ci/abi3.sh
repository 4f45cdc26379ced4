#!/usr/bin/env bash
# Stable-ABI job: build membuf as an abi3 wheel (Py_LIMITED_API = 3.11),
# check the wheel's tag and the extension's name, install it in a fresh venv
# and run the WHOLE test suite against it.
#
#   bash .ci/abi3.sh              # extra args go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=$ROOT/.venv-abi3
WHEELS=$VENV/wheels

log() { printf '== %s\n' "$*"; }

log "fresh venv $VENV ($("$PYTHON" --version))"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip

log "build the abi3 wheel"
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$WHEELS" . \
    -Csetup-args=-Dpython.allow_limited_api=true
WHEEL=$(ls "$WHEELS"/membuf-*.whl)
echo "$WHEEL"
case $(basename "$WHEEL") in
    *-cp311-abi3-*.whl) ;;
    *) echo "expected a cp311-abi3 wheel, got $(basename "$WHEEL")" >&2; exit 1 ;;
esac

log "install it with the test extras, and PyTorch (CPU, from this machine's disk) for the DLPack tests"
"$PY" -m pip install --quiet --disable-pip-version-check "$WHEEL[test]" torch==2.13.0
(cd "$VENV" && "$PY" - <<'PY'
import pathlib, membuf._membuf as core
so = pathlib.Path(core.__file__).name
assert so == "_membuf.abi3.so", so
assert core.LIMITED_API == 0x030B0000, hex(core.LIMITED_API)
print("imported", so, "LIMITED_API", hex(core.LIMITED_API))
PY
)

log "the whole test suite against the abi3 build"
"$PY" -m pytest -q -p no:cacheprovider "$@"
