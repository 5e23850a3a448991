#!/usr/bin/env bash
# cross-node.sh [NODE_A NODE_B]
#
# Pod networking checks between two nodes of a running cluster, the same
# for kind (conformance/kind/run.sh) and the local clusters of the test suite:
#   1. ping pod A -> pod B and pod B -> pod A (pods pinned to different nodes)
#   2. TCP both ways: each pod runs an echo server, each sends a token to the
#      other's and must get it back
#   3. a ClusterIP Service in front of pod B, fetched over HTTP from pod A
#   4. the API server through the `kubernetes` Service (HTTPS GET /version with
#      the pod's service-account token; busybox wget speaks TLS)
# then deletes everything it made (one namespace), also when a check fails.
#
# KUBECTL is the kubectl command to use, as a prefix (word-split), e.g.
#   KUBECTL="kubectl --context kind-felt" conformance/checks/cross-node.sh
#   KUBECTL="../shared/kubernetes/local-node.sh kubectl $WORKDIR" conformance/checks/cross-node.sh
# Without NODE_A/NODE_B it takes the first two Ready nodes without a
# NoSchedule taint. BUSYBOX_IMAGE (default docker.io/library/busybox:1.35.0,
# imagePullPolicy IfNotPresent) must run busybox's ping, nc, httpd, wget
# (with TLS) and timeout applets. TIMEOUT (default 120) is how long pods may
# take to become Ready, in seconds.
#
# Prints one "ok - ..." or "not ok - ..." line per check and a final
# "N passed, M failed" line; exits 1 when any check failed.
set -euo pipefail

read -r -a KC <<<"${KUBECTL:-kubectl}"
IMAGE=${BUSYBOX_IMAGE:-docker.io/library/busybox:1.35.0}
TIMEOUT=${TIMEOUT:-120}
NS=felt-checks-$$-$RANDOM
PASSED=0
FAILED=0

kc() { "${KC[@]}" "$@"; }
log() { echo "# $*" >&2; }

cleanup() {
  kc delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

check() { # description command...
  local what=$1
  shift
  if "$@"; then
    PASSED=$((PASSED + 1))
    echo "ok - $what"
  else
    FAILED=$((FAILED + 1))
    echo "not ok - $what"
  fi
}

pick_nodes() {
  # name, Ready status, and the effects of its taints
  kc get nodes -o 'jsonpath={range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.spec.taints[*].effect}{"\n"}{end}' |
    awk '$2 == "True" && $0 !~ /NoSchedule/ {print $1}' | head -2
}

pod() { # name node role
  cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NS
  labels: {app: felt-checks, role: $3}
spec:
  nodeName: $2
  tolerations: [{operator: Exists}]
  terminationGracePeriodSeconds: 1
  containers:
    - name: busybox
      image: $IMAGE
      imagePullPolicy: IfNotPresent
      # an echo server on 7000 (nc -ll: one "cat" per connection) and an HTTP
      # server on 8080 answering with the pod's name
      command: ["sh", "-c", "mkdir -p /www && echo \$(hostname) > /www/index.html && httpd -p 8080 -h /www && exec nc -ll -p 7000 -e cat"]
      readinessProbe:
        tcpSocket: {port: 8080}
        periodSeconds: 1
---
YAML
}

service() {
  cat <<YAML
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: $NS
spec:
  type: ClusterIP
  selector: {app: felt-checks, role: server}
  ports: [{port: 80, targetPort: 8080, protocol: TCP}]
YAML
}

in_pod() { kc exec -n "$NS" "$1" -- "${@:2}"; }

ping_ok() { in_pod "$1" ping -c 3 -W 2 "$2" >/dev/null; }

# Sends a token to pod $2's echo server from pod $1 and wants it back.
tcp_ok() {
  local token got
  token=felt-$1-to-$2-$RANDOM
  got=$(in_pod "$1" sh -c "echo $token | timeout 10 nc -w 5 $3 7000") || return 1
  [ "$got" = "$token" ] || { log "$1 -> $2: sent $token, got '$got'"; return 1; }
}

# busybox wget: -T is avoided (it crashes busybox 1.35's wget), timeout(1) bounds it.
http_ok() {
  local got
  got=$(in_pod "$1" timeout 10 wget -q -O - "http://$2/index.html") || return 1
  [ "$got" = "$3" ] || { log "GET http://$2/ from $1: '$got', wanted '$3'"; return 1; }
}

# With the pod's service-account token: anonymous requests get 401 on
# servers run with --authorization-mode=AlwaysAllow (or --anonymous-auth=false).
api_ok() {
  local got token=/var/run/secrets/kubernetes.io/serviceaccount/token
  got=$(in_pod "$1" sh -c "timeout 10 wget -q --no-check-certificate --header \"Authorization: Bearer \$(cat $token)\" -O - https://$2/version") ||
    return 1
  grep -q '"gitVersion"' <<<"$got" || { log "GET https://$2/version from $1: '$got'"; return 1; }
}

main() {
  local a=${1:-} b=${2:-}
  if [ -z "$a" ] || [ -z "$b" ]; then
    mapfile -t nodes < <(pick_nodes)
    [ "${#nodes[@]}" -ge 2 ] || { log "need two Ready schedulable nodes, found: ${nodes[*]:-none}"; exit 1; }
    a=${nodes[0]} b=${nodes[1]}
  fi
  log "namespace $NS, pod client on $a, pod server on $b"
  kc create namespace "$NS" >/dev/null
  { pod client "$a" client; pod server "$b" server; service; } | kc apply -f - >/dev/null
  if ! kc wait -n "$NS" --for=condition=Ready pod/client pod/server --timeout="${TIMEOUT}s" >/dev/null; then
    kc get pods -n "$NS" -o wide >&2 || true
    kc describe pods -n "$NS" >&2 || true
    echo "not ok - pods on $a and $b became Ready"
    echo "0 passed, 1 failed"
    exit 1
  fi
  local ip_a ip_b svc api
  ip_a=$(kc get pod -n "$NS" client -o 'jsonpath={.status.podIP}')
  ip_b=$(kc get pod -n "$NS" server -o 'jsonpath={.status.podIP}')
  svc=$(kc get service -n "$NS" server -o 'jsonpath={.spec.clusterIP}')
  api=$(kc get service -n default kubernetes -o 'jsonpath={.spec.clusterIP}')
  log "client $ip_a, server $ip_b, service $svc, kubernetes service $api"

  check "ping client ($a, $ip_a) -> server ($b, $ip_b)" ping_ok client "$ip_b"
  check "ping server ($b) -> client ($a)" ping_ok server "$ip_a"
  check "TCP client -> server echo" tcp_ok client server "$ip_b"
  check "TCP server -> client echo" tcp_ok server client "$ip_a"
  check "ClusterIP service $svc -> server pod, from the client pod" http_ok client "$svc" server
  check "API server via the kubernetes service ($api) from the client pod" api_ok client "$api"

  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ]
}

main "$@"
