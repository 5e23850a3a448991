#!/usr/bin/env bash
# The udp datapath ladder against kernel VXLAN, pod to pod, in throwaway
# network namespaces (root). Prints a markdown table with ratios to vxlan
# measured in the same run.
#
#   sudo scripts/bench-udp.sh                 # 5 s per iperf3 run, veth GRO on
#   sudo scripts/bench-udp.sh --secs 10 --gro off
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p overlayd --example udp-bench -- "$@"
