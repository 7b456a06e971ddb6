#!/usr/bin/env bash
# README command 1: launch a local Polis cluster. Installs what it needs, builds, and runs
# `polisctl launch`: three nodes, each in its own network and UTS namespace (198.18.0.0/24, behind
# the root namespace's `unreachable 198.18.0.0/15` guard route), each with its own swtpm and node
# root and the insecure directory storage backend. Node 0 bootstraps the cluster, the launcher
# takes ownership, and registers, approves and promotes the others; then it prints the cluster
# and runs until Ctrl-C or `polisctl stop`.
#
# With --vm, the nodes are QEMU VMs instead (TCG): polis-node as PID 1 of Debian's kernel, a
# LUKS2 data partition on a GPT disk, swtpm as each VM's TPM, TAP devices on a bridge in a
# namespace of their own.
#
#   bash scripts/launch.sh            # launch, show the cluster working, stop
#   bash scripts/launch.sh --wait     # launch and keep running until Ctrl-C
#   bash scripts/launch.sh --vm [--wait]   # the same with VMs
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --bins

dir=${POLIS_CLUSTER_DIR:-/tmp/polis-cluster}
nodes=${POLIS_NODES:-3}
ctl() { ./target/release/polisctl --dir "$dir" "$@"; }
kind=()
wait=no
for arg in "$@"; do
  case "$arg" in
    --vm) kind=(--vm) ;;
    --wait) wait=yes ;;
    *) echo "usage: $0 [--vm] [--wait]" >&2; exit 2 ;;
  esac
done

if [ "$wait" = yes ]; then
  exec ./target/release/polisctl --dir "$dir" launch --nodes "$nodes" "${kind[@]}"
fi

ctl stop 2>/dev/null || true
ctl launch --nodes "$nodes" "${kind[@]}" &
launcher=$!
trap 'ctl stop 2>/dev/null || true; wait $launcher 2>/dev/null || true' EXIT
for _ in $(seq 600); do [ -f "$dir/launcher.pid" ] && break; sleep 0.5; done
[ -f "$dir/launcher.pid" ] || { echo "the cluster did not come up; logs: $dir/node*/node.log"; exit 1; }
echo "== the cluster, as the owner sees it"
ctl nodes
if [ ${#kind[@]} -eq 0 ]; then
  echo "== the same through the clusters file (~/.config/polis/clusters.json), as any client reaches a cluster"
  ./target/release/polisctl --cluster local nodes
fi
echo "== node 1's supervision tree"
ctl tree 1
echo "== fault injection on node 1: crash /cluster/curator; its supervisor restarts it"
ctl kill-actor 1 /cluster/curator --how crash
sleep 1
ctl tree 1
echo "== node logs are in $dir/node*/ (node.log, or a VM's console.log); stopping the cluster"
