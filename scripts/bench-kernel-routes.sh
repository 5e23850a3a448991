#!/usr/bin/env bash
# The kernel's own cost of N routes to peers' subnets, the way flannel's
# vxlan backend writes them (each via its own onlink gateway) and through
# nexthop objects (one per peer, the route naming it by id), in a
# throwaway network namespace (root). Not part of the tests.
#
#   sudo scripts/bench-kernel-routes.sh [N ...]     # default: 5000 20000
#
# Each route via a distinct gateway needs its own fib_info, which the
# kernel looks up in a hash that does not include the gateway, so the
# cost per route grows with the number already there; nexthop objects
# hash by id. See docs/performance.md (Scale).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-kernel-routes.sh: run as root (it creates a network namespace)" >&2
  exit 1
fi
[ "$#" -gt 0 ] || set -- 5000 20000

ns=felt-t-routes-$$-0
work=$(mktemp -d)
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ip netns add "$ns"
in_ns() { ip -n "$ns" "$@"; }
in_ns link add eth0 type veth peer name eth1
in_ns addr add 192.168.99.1/24 dev eth0
in_ns link set eth0 up
in_ns link set eth1 up
in_ns link add flannel.1 type vxlan id 1 local 192.168.99.1 dev eth0 dstport 8472 nolearning
in_ns link set flannel.1 up

# Peer i's subnet: 10.<i/65536>.<i/256>.<i%256>.0/24 inside 10.0.0.0/8.
subnet() { echo "$((10 + ($1 >> 16))).$((($1 >> 8) & 255)).$(($1 & 255)).0"; }
timed_batch() {
  local start end
  start=$(date +%s%N)
  ip -n "$ns" -batch "$1"
  end=$(date +%s%N)
  awk -v ns="$((end - start))" 'BEGIN { printf "%.2f", ns / 1e9 }'
}

echo "| routes | via distinct gateways s | nexthop objects + routes s | ratio |"
echo "|---|---|---|---|"
for n in "$@"; do
  : > "$work/gw"
  : > "$work/nh"
  for ((i = 0; i < n; i++)); do
    s=$(subnet "$i")
    echo "route add $s/24 via $s dev flannel.1 onlink" >> "$work/gw"
    printf 'nexthop add id %d via %s dev flannel.1 onlink\nroute add %s/24 nhid %d\n' \
      "$((i + 1))" "$s" "$s" "$((i + 1))" >> "$work/nh"
  done
  gw=$(timed_batch "$work/gw")
  in_ns route flush dev flannel.1
  nh=$(timed_batch "$work/nh")
  # Deleting a nexthop object deletes the routes that use it.
  # (a flush of many may be cut short by the dump changing under it: repeat)
  while [ -n "$(in_ns nexthop show)" ]; do in_ns nexthop flush > /dev/null 2>&1 || true; done
  ratio=$(awk -v a="$gw" -v b="$nh" 'BEGIN { printf "%.1f", a / b }')
  echo "| $n | $gw | $nh | $ratio |"
done
