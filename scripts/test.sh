#!/usr/bin/env bash
# Installs what the tests need, then runs every check: formatting, lints, and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# Every decoder of untrusted bytes, fuzzed (coverage-guided) for a bounded time each.
bash scripts/fuzz.sh 10
# The benchmark is measured, never gated; here it only has to build.
cargo bench --workspace --locked --no-run
