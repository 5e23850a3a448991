#!/usr/bin/env bash
# run.sh [BACKEND...]
#
# felt on kind, for operators and CI machines that have a container engine
# (kind needs Docker or Podman; the test suite's machines have neither, they
# run the same checks on local clusters instead). For each BACKEND (default:
# vxlan host-gw):
#   1. create the kind cluster of kind-config.yaml (3 nodes, no default CNI)
#   2. build the image with deploy/image/build.sh and `kind load image-archive` it
#   3. apply deploy/ (vxlan) or deploy/overlays/BACKEND
#   4. wait for the DaemonSet rollout and every node Ready
#   5. run conformance/checks/cross-node.sh between the two workers
#   6. delete the cluster (KEEP=1 keeps the last one)
# Environment: KIND (default kind), KUBECTL_BIN (default kubectl),
# FELT_BIN_DIR (prebuilt binaries for build.sh), KIND_NODE_IMAGE (--image).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
KIND=${KIND:-kind}
KUBECTL_BIN=${KUBECTL_BIN:-kubectl}
CLUSTER=felt
CONTEXT=kind-$CLUSTER
BACKENDS=("$@")
[ ${#BACKENDS[@]} -gt 0 ] || BACKENDS=(vxlan host-gw)

log() { echo "[kind $(date +%T)] $*" >&2; }
kc() { "$KUBECTL_BIN" --context "$CONTEXT" "$@"; }

for tool in "$KIND" "$KUBECTL_BIN" python3; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done

manifests() { # BACKEND -> what kubectl apply -k takes
  case "$1" in
    vxlan) echo "$REPO/deploy" ;;
    host-gw | udp) echo "$REPO/deploy/overlays/$1" ;;
    *) log "unknown backend $1 (vxlan, host-gw, udp)"; exit 2 ;;
  esac
}

WORK=$(mktemp -d)
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log "building the image"
"$REPO/deploy/image/build.sh" "$WORK/felt.tar"

status=0
for backend in "${BACKENDS[@]}"; do
  dir=$(manifests "$backend")
  log "== backend $backend ($dir)"
  "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  args=(create cluster --config "$HERE/kind-config.yaml" --name "$CLUSTER")
  [ -n "${KIND_NODE_IMAGE:-}" ] && args+=(--image "$KIND_NODE_IMAGE")
  "$KIND" "${args[@]}"
  "$KIND" load image-archive "$WORK/felt.tar" --name "$CLUSTER"
  kc apply -k "$dir"
  kc -n kube-felt rollout status daemonset/felt --timeout=300s
  kc wait --for=condition=Ready node --all --timeout=300s
  workers=$(kc get nodes -l '!node-role.kubernetes.io/control-plane' -o 'jsonpath={.items[*].metadata.name}')
  read -r -a w <<<"$workers"
  # the checks' busybox image: pulled by the kind nodes (IfNotPresent)
  if KUBECTL="$KUBECTL_BIN --context $CONTEXT" "$REPO/conformance/checks/cross-node.sh" "${w[0]}" "${w[1]}"; then
    log "backend $backend: ok"
  else
    log "backend $backend: FAILED"
    kc -n kube-felt logs daemonset/felt --all-containers --tail=50 >&2 || true
    status=1
  fi
done
exit $status
