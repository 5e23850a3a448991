#!/usr/bin/env bash
# CNI plugin latency: felt (release build) against Debian's reference
# bridge + host-local with the equivalent config, in the same run, in
# throwaway network namespaces. Times each plugin process from exec to
# exit; creating pod namespaces is not timed. Not part of the tests.
#
#   sudo scripts/bench-cni.sh [PODS] [PARALLEL]     # defaults: 200 32
#
# Prints, per op, the median and p99 in ms and felt/reference ratios for
# PODS pods one after another, then PODS pods with PARALLEL in flight.
set -euo pipefail
cd "$(dirname "$0")/.."

PODS=${1:-200}
PARALLEL=${2:-32}
REF_DIR=/usr/lib/cni

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-cni.sh: run as root (it creates network namespaces)" >&2
  exit 1
fi
for bin in "$REF_DIR/bridge" "$REF_DIR/host-local" ; do
  [ -x "$bin" ] || { echo "bench-cni.sh: $bin missing; run scripts/setup.sh" >&2; exit 1; }
done
command -v go >/dev/null || { echo "bench-cni.sh: go missing; run scripts/setup.sh" >&2; exit 1; }

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
echo "building felt (release) ..."
cargo build --release --quiet -p felt-cni
FELT=$TARGET/release/felt

TMP=$(mktemp -d /tmp/felt-bench.XXXXXX)
TAG=$$
NODES=()
PODNS=()
cleanup() {
  for ns in "${PODNS[@]}" "${NODES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

echo "building the harness ..."
(cd conformance/bench && GO111MODULE=off GOCACHE="${GOCACHE:-$TMP/gocache}" go build -o "$TMP/cni-bench" .)

echo "creating $PODS pod namespaces (not timed) ..."
for i in $(seq 1 "$PODS"); do
  ns="felt-t-bp-$TAG-$i"
  ip netns add "$ns"
  PODNS+=("$ns")
done
PODPATHS=()
for ns in "${PODNS[@]}"; do PODPATHS+=("/run/netns/$ns"); done

printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n' >"$TMP/subnet.env"

# One fresh node namespace per plugin and phase: the first ADD creates
# cni0 in both cases.
run_phase() { # name plugin conf parallel
  local name=$1 plugin=$2 conf=$3 par=$4
  local node="felt-t-bn-$name-$par-$TAG"
  ip netns add "$node"
  NODES+=("$node")
  ip -n "$node" link set lo up
  ip netns exec "$node" "$TMP/cni-bench" run -plugin "$plugin" -conf "$conf" \
    -cni-path "$REF_DIR" -parallel "$par" -out "$TMP/$name-$par.json" "${PODPATHS[@]}"
}

for par in 1 "$PARALLEL"; do
  mkdir -p "$TMP/felt-$par" "$TMP/ref-$par"
  cat >"$TMP/felt-$par.conf" <<JSON
{"cniVersion": "1.0.0", "name": "bench", "type": "felt",
 "subnetFile": "$TMP/subnet.env", "dataDir": "$TMP/felt-$par",
 "bridge": "cni0", "isDefaultGateway": true, "hairpinMode": true, "mtu": 1450, "ipMasq": false}
JSON
  cat >"$TMP/ref-$par.conf" <<JSON
{"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
 "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "hairpinMode": true, "mtu": 1450, "ipMasq": false,
 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "dataDir": "$TMP/ref-$par"}}
JSON
  echo "running: $PODS pods, $par in flight: felt ..."
  run_phase felt "$FELT" "$TMP/felt-$par.conf" "$par"
  echo "running: $PODS pods, $par in flight: reference bridge + host-local ..."
  run_phase ref "$REF_DIR/bridge" "$TMP/ref-$par.conf" "$par"
done

echo
echo "CNI plugin wall time per call (exec to exit), ratio = felt / reference"
echo
for par in 1 "$PARALLEL"; do
  echo "$PODS pods, $par in flight:"
  "$TMP/cni-bench" report "felt=$TMP/felt-$par.json" "bridge+host-local=$TMP/ref-$par.json"
  echo
done
