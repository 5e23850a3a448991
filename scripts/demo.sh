#!/usr/bin/env bash
# The felt demo: a whole cluster (etcd, N nodes running overlayd, pods
# wired by the felt CNI plugin) in throwaway network namespaces on this
# machine. Prints the pod-to-pod ping matrix and a cross-node iperf3
# figure, then tears everything down. See docs/demo.md.
#
#   sudo scripts/demo.sh                          # 3 nodes x 2 pods, vxlan
#   sudo scripts/demo.sh --backend host-gw --nodes 4 --pods-per-node 3
#   sudo scripts/demo.sh --keep                   # explore until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root (the demo creates network namespaces)" >&2
  exit 1
fi

bash scripts/setup.sh

# Namespaces of an earlier demo that was killed outright (its pid, the
# last part of each name, is gone): remove them.
for ns in $(ip netns list | awk '{print $1}' | grep -E '^felt-demo-' || true); do
  pid=${ns##*-}
  if ! kill -0 "$pid" 2>/dev/null; then ip netns del "$ns" 2>/dev/null || true; fi
done

cargo build --release --workspace --quiet
target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/release/felt-demo" "$@"
