#!/usr/bin/env bash
# Firewall latency: one Firewall::ensure when nothing changed (what the
# daemon's periodic check costs) and when it must install, for each mode
# and iptables variant, in throwaway network namespaces, empty and next to
# a kube-proxy-sized iptables ruleset; plus the raw nft calls (text vs
# JSON) behind the design. Prints markdown tables. Not part of the tests.
#
#   sudo scripts/bench-firewall.sh [ROUNDS] [KUBE_SERVICES]   # defaults: 50 5000
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-firewall.sh: run as root (it creates network namespaces)" >&2
  exit 1
fi
for bin in nft iptables-nft-restore iptables-legacy-restore; do
  command -v "$bin" >/dev/null || { echo "bench-firewall.sh: $bin missing; run scripts/setup.sh" >&2; exit 1; }
done

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
echo "building the benchmark (release) ..." >&2
cargo build --release --quiet -p overlayd --example bench_firewall

echo "machine: $(nproc) cores, $(uname -r), $(nft --version), $(iptables --version)"
echo
"$TARGET/release/examples/bench_firewall" "${1:-50}" "${2:-5000}"

echo
echo "| Debian package (what the image needs) | installed size |"
echo "|---|---|"
for p in nftables libnftables1 libnftnl11 libjansson4 libmnl0 libedit2 iptables libip4tc2 libip6tc2 libxtables12 libnetfilter-conntrack3 libnfnetlink0; do
  size=$(dpkg-query -W -f='${Installed-Size}' "$p" 2>/dev/null || echo "?")
  echo "| $p | ${size} KiB |"
done
