#!/usr/bin/env bash
# Launches what Polis can run today: one node's supervision tree with its debug endpoint on
# loopback, then shows it working: the tree, a fault injected and recovered from, the metrics.
# (The multi-node cluster launcher, `polisctl launch`, replaces this once the lifecycle exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --bins

debug=127.0.0.1:${POLIS_DEBUG_PORT:-7840}
ctl() { ./target/release/polisctl --debug "$debug" "$@"; }
./target/release/polis-node --debug-listen "$debug" &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node 2>/dev/null || true' EXIT

for _ in $(seq 50); do ctl tree >/dev/null 2>&1 && break; sleep 0.2; done
echo "== the node's supervision tree"
ctl tree
echo "== fault injection: crash /core; its supervisor restarts it"
ctl kill-actor /core --how crash
sleep 0.5
ctl tree
echo "== what the root supervisor logged"
ctl logs /
echo "== restart metrics"
ctl metrics | grep -E '^polis_actor_(restarts_total|starts_total)\{path="/core"' | grep -v ' 0$'
if [ "${1:-}" = "--wait" ]; then
  echo "== node running (debug endpoint $debug); Ctrl-C stops it"
  wait $node
fi
