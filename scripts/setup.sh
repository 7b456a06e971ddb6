#!/usr/bin/env bash
# One idempotent set-up for Polis: installs every system package the build, the tests and the
# local cluster launcher need. Safe to run again; it changes nothing that is already in place.
set -euo pipefail

packages=(
  build-essential pkg-config
  protobuf-compiler            # build.rs compiles proto/ with Debian's protoc
  libprotobuf-dev              # the well-known protos (descriptor.proto) etcd-client compiles against
  libclang-dev                 # bindgen for libcryptsetup-rs and tss-esapi
  libcryptsetup-dev            # LUKS2 data partition
  libtss2-dev                  # TPM 2.0 through tss-esapi
  etcd-server                  # the consensus actor runs Debian's etcd
  swtpm swtpm-tools            # software TPM for tests and the local launcher
  iproute2                     # network namespaces for cluster tests
  qemu-system-x86              # the VM tier and `polisctl launch --vm` (TCG)
  linux-image-amd64            # the VMs' kernel and the modules of their initramfs
  gdisk                        # sgdisk: the VM disk's GPT
  dosfstools                   # mkfs.vfat: the VM disk's ESP (and in the initramfs)
  e2fsprogs                    # mkfs.ext4 in the initramfs: the data partition's filesystem
  binutils                     # objcopy: strip polis-node for the initramfs
  cpio                         # checks the initramfs writer against GNU cpio
  cryptsetup-bin               # cryptsetup luksDump, to inspect a VM disk from the host
  prometheus                   # promtool: tests lint every node's /metrics with it
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all system packages present"
fi

# Debian installs etcd and Prometheus as services; Polis starts its own etcd members, never the
# system one, and needs only Prometheus's promtool.
for service in etcd prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" || true
  fi
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true
echo "setup: done"
