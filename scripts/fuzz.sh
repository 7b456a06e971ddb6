#!/usr/bin/env bash
# Fuzz every decoder of untrusted bytes with libFuzzer, coverage-guided, on the stable toolchain
# (sanitizer-coverage through stable -C flags; no sanitizer runtime, so a bug shows as a panic,
# an abort, a hang or running out of memory, which libFuzzer all reports).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    (default: 20 s, every target)
#   bash scripts/fuzz.sh --runs N [TARGET...]                (N executions per target)
#   bash scripts/fuzz.sh --build                             (only build the targets)
#
# Each target starts from its checked-in seeds (fuzz/corpus/T) plus what earlier runs here found
# (target/fuzz/corpus/T). A crash's input lands in target/fuzz/artifacts/T/; keep it as
# fuzz/regressions/T/NAME once fixed (`cargo test -p polis-fuzz` replays them). Prints one line
# per target: executions, rate, new corpus entries, and the verdict; exits 1 if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=false
if [ "${1:-}" = "--build" ]; then
    build_only=true
    shift
elif [ "${1:-}" = "--runs" ]; then
    limit="-runs=$2"
    shift 2
else
    limit="-max_total_time=${1:-20}"
    shift || true
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=target/fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
fi
# The targets only: a binary without a fuzz_target! would not link against the coverage hooks.
# --target keeps these flags off build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
    cargo build --locked --release -p polis-fuzz --target "$triple" "${targets[@]/#/--bin=}"
bin=target/fuzz/$triple/release
if $build_only; then
    exit 0
fi

run() {
    local t=$1 log=target/fuzz/logs/$1.log
    mkdir -p "target/fuzz/corpus/$t" "target/fuzz/artifacts/$t" target/fuzz/logs
    local rc=0
    "$bin/$t" "$limit" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="target/fuzz/artifacts/$t/" \
        "target/fuzz/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
    local execs rate corpus
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
    local verdict="ok"
    if [ "$rc" -ne 0 ]; then
        verdict="FAILED (exit $rc): $(grep -m1 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" || true) see $log"
    fi
    printf '%-22s %12s execs %8s/s %6s new  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${corpus:-?}" "$verdict"
    [ "$rc" -eq 0 ]
}
export -f run
export limit bin

echo "fuzzing ${#targets[@]} targets (${limit#-}), $(nproc) at a time"
printf '%s\n' "${targets[@]}" | xargs -P "$(nproc)" -I{} bash -c 'run {}'
