#!/usr/bin/env bash
# Launches what Polis can run today: one node, with a software TPM, its node-local subsystems
# (storage, tpm) under the supervision tree, and its debug endpoint on loopback. Then it shows
# the node working: the tree, a fault injected and recovered from, the logs, the metrics.
# (The multi-node cluster launcher, `polisctl launch`, replaces this once the lifecycle exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --bins

work=${POLIS_WORK:-$(mktemp -d /tmp/polis-launch.XXXXXX)}
debug=127.0.0.1:${POLIS_DEBUG_PORT:-7840}
tpm_port=${POLIS_TPM_PORT:-2321}          # the swtpm TCTI uses this port and the next
ctl() { ./target/release/polisctl --debug "$debug" "$@"; }
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$work/tpm"
swtpm socket --tpm2 --tpmstate "dir=$work/tpm" --flags not-need-init,startup-clear \
  --server "type=tcp,port=$tpm_port,bindaddr=127.0.0.1" \
  --ctrl "type=tcp,port=$((tpm_port + 1)),bindaddr=127.0.0.1" &
pids+=($!)
./target/release/polis-node --root "$work/node" --tpm "swtpm:host=127.0.0.1,port=$tpm_port" \
  --address 127.0.0.1 --insecure-data-directory --debug-listen "$debug" 2>"$work/node.log" &
pids+=($!)

for _ in $(seq 100); do ctl tree >/dev/null 2>&1 && break; sleep 0.1; done
echo "== node root $work/node, log $work/node.log"
echo "== the node's supervision tree"
ctl tree
echo "== fault injection: crash /core/storage; rest_for_one restarts it and the TPM actor after it"
ctl kill-actor /core/storage --how crash
sleep 0.5
ctl tree
echo "== what /core logged"
ctl logs /core
echo "== restart metrics"
ctl metrics | grep -E '^polis_actor_(restarts_total|starts_total)\{path="/core/' | grep -v ' 0$'
if [ "${1:-}" = "--wait" ]; then
  echo "== node running (debug endpoint $debug); Ctrl-C stops it"
  wait "${pids[1]}"
fi
