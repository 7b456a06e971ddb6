#!/usr/bin/env bash
# Installs what the tests need, then runs every check: formatting, lints, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-run
# The fuzz targets' instrumented build waits on no test: at the lowest priority, it takes only
# the CPU the tests leave idle (they mostly wait on etcd, swtpm and QEMU).
mkdir -p target
nice -n 19 bash scripts/fuzz.sh --build >target/fuzz-build.log 2>&1 &
fuzz_build=$!
cargo test --workspace --locked
wait "$fuzz_build" || { cat target/fuzz-build.log; exit 1; }
# Every decoder of untrusted bytes, fuzzed (coverage-guided) for a bounded time each.
bash scripts/fuzz.sh 10
# The benchmark is measured, never gated; here it only has to build.
cargo bench -p polis-actors --bench mailbox --locked --no-run
