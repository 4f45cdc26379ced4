#!/usr/bin/env bash
# The example READMEs, as printed: for each examples/*/README.md, a fresh copy
# of the committed tree (as a fresh clone has it: no build output), a fresh
# virtual environment, then every ```sh block of the README run literally from
# the example's directory, then its ```python blocks (tests/mdblocks.py).
# Needs a C compiler, libsqlite3-dev and pip access to PyPI (membuf's build
# requirements: meson-python, meson, ninja; setuptools).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

sh_blocks() {  # $1: a Markdown file; prints the body of every ```sh block
    awk '/^```sh$/{f=1;next} /^```$/{f=0} f' "$1"
}

status=0
for readme in "$ROOT"/examples/*/README.md; do
    example=$(basename "$(dirname "$readme")")
    echo "== examples/$example: its README's commands, in a fresh venv on a fresh copy"
    rm -rf "$WORK/tree" "$WORK/venv"
    mkdir "$WORK/tree"
    git -C "$ROOT" archive HEAD | tar -x -C "$WORK/tree"
    "$PYTHON" -m venv "$WORK/venv"
    commands=$(sh_blocks "$WORK/tree/examples/$example/README.md")
    if [ -z "$commands" ]; then
        echo "examples/$example/README.md has no sh block" >&2
        status=1
        continue
    fi
    printf '%s\n' "$commands" | sed 's/^/    $ /'
    if ! (cd "$WORK/tree/examples/$example" && source "$WORK/venv/bin/activate" \
            && bash -euo pipefail -c "$commands" \
            && python "$WORK/tree/tests/mdblocks.py" README.md); then
        echo "FAILED: examples/$example/README.md as printed" >&2
        status=1
    fi
done
exit "$status"
