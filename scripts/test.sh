#!/usr/bin/env bash
# The whole test suite: setup, lint, build, every test (unit, real-kernel
# integration in throwaway network namespaces, libcni conformance, the
# multi-node cluster), then a check that the machine's own network
# namespace is exactly as it was before.
#
#   sudo scripts/test.sh            # everything
#   sudo scripts/test.sh -E 'package(felt-cni)'   # extra args go to nextest
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "the CNI binary stays small: no tokio, kube or etcd in felt"
if cargo tree -p felt-cni -e normal --prefix none | grep -E '^(tokio|kube|etcd-client|tonic) ' ; then
  echo "felt-cni must not depend on the crates above" >&2
  exit 1
fi

step "build"
cargo build --workspace --quiet

# Namespaces left by an earlier, killed run of this suite (their creator's
# pid is gone): remove them so names and addresses are free again.
for ns in $(ip netns list | awk '{print $1}' | grep -E '^felt-t-' || true); do
  pid=$(echo "$ns" | awk -F- '{print $(NF-1)}')
  if ! kill -0 "$pid" 2>/dev/null; then ip netns del "$ns" 2>/dev/null || true; fi
done

# What the machine's own namespace looks like: tests must never change it.
root_state() {
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
  ip -4 route show table all | sort
  ip -6 route show table all | sort
  ip -4 -o addr show | awk '{print $2, $4}' | sort
  nft list ruleset 2>/dev/null | grep -c . || true
  # The firewall tests also use iptables-legacy (in their namespaces only).
  iptables-legacy-save 2>/dev/null | grep -c '^[:-]' || true
}
before=$(root_state)

step "tests"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi

step "the machine's own network namespace is untouched"
after=$(root_state)
if [ "$before" != "$after" ]; then
  echo "tests changed the root network namespace:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  status=1
fi
left=$(ip netns list | awk '{print $1}' | grep -E '^felt-t-' || true)
if [ -n "$left" ]; then
  echo "tests left network namespaces behind: $left" >&2
  status=1
fi
for p in etcd overlayd iperf3 containerd kubelet; do
  if pgrep -x "$p" >/dev/null; then
    echo "tests left processes behind:" >&2
    pgrep -a -x "$p" >&2
    status=1
  fi
done
exit $status
