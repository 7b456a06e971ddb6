#!/usr/bin/env bash
# Installs what the tests need, then runs every check: formatting, lints, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One build, never edited: incremental compilation's caches (about 1 GiB) would only take disk.
export CARGO_INCREMENTAL=0
# The build below writes about 4 GiB into target/ (measured on a fresh clone, 2026-12-03); say so
# plainly before a linker fails half-way with "No space left on device".
mkdir -p target
free_kib=$(df -Pk target | awk 'NR == 2 { print $4 }')
if [ "$free_kib" -lt $((5 * 1024 * 1024)) ]; then
    echo "test: warning: only $((free_kib / 1024)) MiB free for $(pwd)/target; the build needs about 4 GiB" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The docs build without a warning: no link to a private item, no stray HTML in a doc comment.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo test --workspace --locked --no-run
# The fuzz targets' instrumented build waits on no test: at the lowest priority, it takes only
# the CPU the tests leave idle (they mostly wait on etcd, swtpm and QEMU).
nice -n 19 bash scripts/fuzz.sh --build >target/fuzz-build.log 2>&1 &
fuzz_build=$!
cargo test --workspace --locked
wait "$fuzz_build" || { cat target/fuzz-build.log; exit 1; }
# Every decoder of untrusted bytes, fuzzed (coverage-guided) for a bounded time each.
bash scripts/fuzz.sh 10
# The benchmark is measured, never gated; here it only has to build.
cargo bench -p polis-actors --bench mailbox --locked --no-run
