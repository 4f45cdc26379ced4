#!/usr/bin/env bash
# The documentation site: sphinx-build -W (every warning is an error) with
# nitpicky cross-references, so every c: and py: role and every internal link
# must resolve (there is no internet for -b linkcheck; external links are not
# checked).  Usage: bash .ci/docs.sh [VENV]  -- VENV: a virtual environment
# with membuf installed (CI's .venv-ci); without it, one is made in .venv-docs
# and membuf is installed there from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-}
if [ -z "$VENV" ]; then
    PYTHON=${PYTHON:-python3.11}
    command -v "$PYTHON" >/dev/null || PYTHON=python3
    VENV=.venv-docs
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet .
fi
PY="$VENV/bin/python"
"$PY" -c "import membuf" || { echo "membuf is not installed in $VENV" >&2; exit 1; }

echo "== docs: sphinx + myst-parser into $VENV"
"$PY" -m pip install --quiet sphinx myst-parser

echo "== docs: sphinx-build -W --keep-going -n (html)"
rm -rf docs/_build
"$PY" -m sphinx -W --keep-going -n -b html docs docs/_build/html
echo "docs: docs/_build/html/index.html"
