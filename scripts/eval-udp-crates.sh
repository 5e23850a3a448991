#!/usr/bin/env bash
# One-off comparison of the udp datapath's own TUN/socket code with
# tun-rs + quinn-udp and with the plain `tun` crate, pod to pod in
# throwaway namespaces (root). Builds tools/udp-crate-eval, a crate
# outside the workspace: these crates are not dependencies of felt.
#
#   sudo scripts/eval-udp-crates.sh [seconds per iperf3 run]
set -euo pipefail
cd "$(dirname "$0")/../tools/udp-crate-eval"
exec cargo run --quiet --release -- "$@"
