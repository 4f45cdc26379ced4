#!/usr/bin/env bash
# CI fuzzing job: builds the libFuzzer harness fuzz/fuzz_membuf.c (membuf's C
# sources + an embedded CPython, under ASan + UBSan), replays the saved
# regression inputs, then fuzzes for FUZZ_SECONDS (default 60) starting from
# a temporary copy of the seed corpus.  Fails on any crash, sanitizer report,
# leak, timeout or violated invariant.  Self-contained on a fresh Debian 12
# machine (installs clang and the Python headers itself when run as root).
#
#   .ci/fuzz.sh                        # the CI job: 60 s
#   FUZZ_SECONDS=1800 .ci/fuzz.sh      # a long run (30 min)
#
# Environment:
#   FUZZ_SECONDS             fuzzing time (default 60)
#   FUZZ_WORKDIR             build dir, working corpus and crash artifacts
#                            (default: a new mktemp -d, kept on failure)
#   MEMBUF_FUZZ_IGNORE_KNOWN=1
#                            temporarily fuzz past the known, unfixed core bugs
#                            listed in fuzz/known-bugs.supp (README "Known bugs"):
#                            skips the regression replay, uses those UBSan
#                            suppressions and MEMBUF_FUZZ_SKIP_EMPTY_BUF_CHECK.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
seconds=${FUZZ_SECONDS:-60}

echo "== toolchain"
need_install=0
command -v clang >/dev/null || need_install=1
[ -x /usr/bin/python3.11-config ] || need_install=1
if [ "$need_install" = 0 ] && [ ! -e "$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a)" ]; then
    need_install=1
fi
if [ "$need_install" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "need clang, libclang-rt-14-dev and python3.11-dev (apt-get as root)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq clang libclang-rt-14-dev python3.11-dev >/dev/null
fi
clang --version | head -1
/usr/bin/python3.11 --version

work=${FUZZ_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/membuf-fuzz.XXXXXX")}
mkdir -p "$work/corpus" "$work/artifacts"
echo "== work dir: $work"

extra_cflags=""
supp=""
if [ "${MEMBUF_FUZZ_IGNORE_KNOWN:-0}" = 1 ]; then
    echo "!! MEMBUF_FUZZ_IGNORE_KNOWN=1: fuzzing past the known bugs in fuzz/known-bugs.supp"
    extra_cflags="-fsanitize-recover=undefined" # suppressions need recoverable checks
    supp=":suppressions=$repo/fuzz/known-bugs.supp"
    export MEMBUF_FUZZ_SKIP_EMPTY_BUF_CHECK=1
fi

echo "== build"
EXTRA_CFLAGS=$extra_cflags fuzz/build.sh "$work"

# ASan: leak detection stays on.  The interpreter is never finalised, so
# everything CPython caches stays reachable from its globals and LSan has no
# false positives to suppress; a Buffer that leaks is caught twice (LSan for
# untracked objects, the harness's exactly-once check for all).
# allocator_may_return_null: a huge allocation (a legal format such as
# "2147483647s" makes memoryview malloc one item) is a MemoryError, as without
# ASan, not an ASan abort.  Every UBSan report is fatal (halt_on_error).
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:quarantine_size_mb=64:abort_on_error=0:print_summary=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1$supp"

fuzzer="$work/fuzz_membuf"
common=(-timeout=10 -rss_limit_mb=2048 -max_len=1024 -dict="$repo/fuzz/membuf.dict"
        -artifact_prefix="$work/artifacts/")

if [ "${MEMBUF_FUZZ_IGNORE_KNOWN:-0}" != 1 ] && compgen -G "fuzz/regressions/*" >/dev/null; then
    echo "== replay fuzz/regressions/ (inputs of bugs found before)"
    failed=0
    for input in fuzz/regressions/*; do
        if "$fuzzer" "${common[@]}" "$input" >"$work/regression.log" 2>&1; then
            echo "  ok    $input"
        else
            failed=1
            echo "  FAIL  $input"
            grep -E 'INVARIANT|runtime error|ERROR: AddressSanitizer|ERROR: LeakSanitizer|SUMMARY' \
                "$work/regression.log" | head -n 4 | sed 's/^/        /'
            grep -E '^ +#[0-9]+ 0x[0-9a-f]+ in [A-Za-z_]+ /' "$work/regression.log" |
                grep -v -E ' in (fail|__sanitizer|fuzzer::)' | head -n 6 | sed 's/^/        /'
        fi
    done
    if [ "$failed" = 1 ]; then
        echo "!! saved regression inputs fail (above); replay one with:"
        echo "!!   MEMBUF_FUZZ_TRACE=1 $fuzzer fuzz/regressions/<file>"
        exit 1
    fi
    echo "regressions: ok ($(find fuzz/regressions -type f | wc -l) inputs)"
fi

echo "== fuzz for ${seconds}s from fuzz/corpus/ (copied to $work/corpus)"
cp fuzz/corpus/* "$work/corpus/"
start=$(date +%s)
set +e
"$fuzzer" "${common[@]}" -max_total_time="$seconds" -print_final_stats=1 \
    "$work/corpus" >"$work/fuzz.log" 2>&1
rc=$?
set -e
elapsed=$(($(date +%s) - start))
if [ "$rc" != 0 ]; then
    echo "!! the fuzzer failed (exit $rc) after ${elapsed}s; log: $work/fuzz.log"
    grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' "$work/fuzz.log" | tail -n 60
    echo "!! reproduce: $fuzzer $work/artifacts/<crash file>  (MEMBUF_FUZZ_TRACE=1 prints the ops)"
    exit 1
fi
echo "== done in ${elapsed}s"
grep -E '^#[0-9]+[[:space:]]+DONE' "$work/fuzz.log" | tail -n 1 || true
grep '^stat::' "$work/fuzz.log" || true
echo "corpus: $(find "$work/corpus" -type f | wc -l) files"
if [ -z "${FUZZ_WORKDIR:-}" ]; then
    rm -rf "$work"
fi
