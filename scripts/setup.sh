#!/usr/bin/env bash
# Installs what felt's build, tests, demo and benchmarks need, from Debian's
# packages. Idempotent: installs only what is missing; safe to run twice.
set -euo pipefail

PACKAGES=(
  iproute2                      # ip netns / link / route used by tests
  iputils-ping                  # ping between pods
  etcd-server etcd-client       # the real lease store (etcd v3)
  protobuf-compiler             # etcd-client's build needs protoc
  iperf3                        # throughput in the demo and tests
  nftables                      # masquerade rules
  golang-go                     # builds the libcni conformance driver ...
  golang-github-appc-cni-dev    # ... against Debian's libcni (offline)
  containernetworking-plugins   # the reference bridge + host-local (benchmark)
  xz-utils                      # unpacks the test kube-apiserver
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (tests create network namespaces; apt installs packages)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's etcd-server unit must not run a system etcd on the machine's own
# ports: the tests start their own with temp data dirs.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi

command -v cargo >/dev/null || { echo "setup.sh: cargo not found (install Rust with rustup)" >&2; exit 1; }
echo "setup.sh: ok"
