#!/usr/bin/env bash
# Builds the libFuzzer harness fuzz/fuzz_membuf.c together with membuf's C
# sources into one binary that embeds CPython (Debian's libpython3.11).
#
#   fuzz/build.sh [OUT_DIR]        default OUT_DIR: $MEMBUF_FUZZ_OUT or /tmp/membuf-fuzz
#
# Environment:
#   CC                 clang with libFuzzer (default: clang, then clang-14)
#   PYTHON_CONFIG      python3.X-config with --embed (default /usr/bin/python3.11-config;
#                      /usr/bin/python3.11d-config builds against the debug interpreter)
#   EXTRA_CFLAGS       appended last (e.g. -fsanitize-recover=undefined, so that
#                      UBSAN_OPTIONS=suppressions=... can silence a known report)
#   MEMBUF_CORE_DIR    directory of the core's *.c files (default src/membuf/_core);
#                      point it at a copy to fuzz modified sources (e.g. a planted bug)
#                      without touching the repository.
# Output: OUT_DIR/fuzz_membuf.  Nothing is written inside the repository.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:-${MEMBUF_FUZZ_OUT:-/tmp/membuf-fuzz}}
core=${MEMBUF_CORE_DIR:-$repo/src/membuf/_core}
pyconfig=${PYTHON_CONFIG:-/usr/bin/python3.11-config}
if [ -z "${CC:-}" ]; then
    CC=clang
    command -v "$CC" >/dev/null || CC=clang-14
fi
mkdir -p "$out"

# Only the include path and libraries of python-config: its optimisation and
# warning flags (-O2, -DNDEBUG, ...) are not ours.
py_includes=$("$pyconfig" --includes)
py_ldflags=$("$pyconfig" --embed --ldflags)

sanitize="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
cflags="-std=c11 -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter"
cflags+=" -Wno-missing-field-initializers -Wno-cast-function-type"

set -x
# shellcheck disable=SC2086
"$CC" $cflags $sanitize $py_includes \
    -I"$repo/src/membuf/include" -I"$core" \
    -DMEMBUF_FREELIST_MAX=0 \
    -DMEMBUF_FUZZ_SRC="\"$repo/src\"" \
    "$here/fuzz_membuf.c" "$core"/*.c \
    ${EXTRA_CFLAGS:-} -o "$out/fuzz_membuf" $py_ldflags -lm
