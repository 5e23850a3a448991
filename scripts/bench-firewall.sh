#!/usr/bin/env bash
# What keeping the masquerade/forward rules costs, per check and per apply,
# on a node whose nat table holds kube-proxy-sized rules (10,000 by
# default), for the ways felt could do it and for flannel's way, side by
# side in one run in a throwaway network namespace. Used to choose how
# overlayd talks to the kernel's firewall (docs/performance.md). Not a test.
#
#   sudo scripts/bench-firewall.sh [KUBE_RULES] [RUNS]     # defaults: 10000 30
set -euo pipefail
cd "$(dirname "$0")/.."
KUBE=${1:-10000}
RUNS=${2:-30}
[ "$(id -u)" -eq 0 ] || { echo "bench-firewall.sh: run as root" >&2; exit 1; }
bash scripts/setup.sh >/dev/null

NS=felt-bench-fw-$$
ip netns add "$NS"
trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
x() { ip netns exec "$NS" "$@"; }

# kube-proxy-like nat table: one service chain and one jump per rule pair.
python3 - "$KUBE" >"/tmp/$NS.rules" <<'EOF'
import sys
n = int(sys.argv[1]) // 2
print("*nat")
print(":KUBE-SERVICES - [0:0]")
print(":KUBE-POSTROUTING - [0:0]")
for i in range(n):
    print(f":KUBE-SVC-{i:05d} - [0:0]")
print('-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING')
print("-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully")
for i in range(n):
    print(f'-A KUBE-SERVICES -d 10.96.{i // 250}.{i % 250} -p tcp -m comment --comment "ns/svc{i}:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-{i:05d}')
    print(f'-A KUBE-SVC-{i:05d} -m comment --comment "ns/svc{i}" -j RETURN')
print("COMMIT")
EOF
x iptables-restore --noflush <"/tmp/$NS.rules"
rm -f "/tmp/$NS.rules"

# felt's rules (as overlayd renders them; the unit tests pin the text).
N=10.244.0.0/16; P=10.244.3.0/24; C='-m comment --comment "flanneld masq"'
x iptables-restore --noflush <<EOF
*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 $C -j RETURN
-A FLANNEL-POSTRTG -s $P -d $N $C -j RETURN
-A FLANNEL-POSTRTG -s $N -d $P $C -j RETURN
-A FLANNEL-POSTRTG ! -s $N -d $P $C -j RETURN
-A FLANNEL-POSTRTG -s $N ! -d 224.0.0.0/4 $C -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s $N -d $N $C -j MASQUERADE --random-fully
-I POSTROUTING 1 $C -j FLANNEL-POSTRTG
COMMIT
EOF
NFT_TABLE="table ip felt {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    meta mark & 0x4000 == 0x4000 return comment \"felt x 0\"
    ip saddr $P ip daddr $N return comment \"felt x 1\"
    ip saddr $N ip daddr $P return comment \"felt x 2\"
    ip saddr != $N ip daddr $P return comment \"felt x 3\"
    ip saddr $N ip daddr != 224.0.0.0/4 masquerade fully-random comment \"felt x 4\"
    ip saddr != $N ip daddr $N masquerade fully-random comment \"felt x 5\"
  }
  chain forward { type filter hook forward priority filter; policy accept;
    ip saddr $N accept comment \"felt x 6\"
    ip daddr $N accept comment \"felt x 7\"
  }
}"
printf 'add table ip felt\ndelete table ip felt\n%s\n' "$NFT_TABLE" | x nft -f -

# Median wall time (ms) of RUNS runs of a shell snippet run inside the netns.
measure() {
  local snippet=$1 i t0 t1
  for ((i = 0; i < RUNS; i++)); do
    t0=$(date +%s%N)
    x bash -c "$snippet" >/dev/null 2>&1
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000))
  done | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]/1000}'
}

base=$(measure true)
row() { # name snippet
  local ms
  ms=$(measure "$2")
  printf '| %s | %s | %s |\n' "$1" "$ms" "$(awk -v a="$ms" -v b="$base" 'BEGIN{printf "%.2f", a-b}')"
}

CHECK_IPT='iptables -w 5 -t nat -S FLANNEL-POSTRTG; iptables -w 5 -t nat -S POSTROUTING; iptables -w 5 -t filter -S FLANNEL-FWD; iptables -w 5 -t filter -S FORWARD'
# flannel checks each rule with `iptables -C` (go-iptables Exists).
FLANNEL_CHECK="iptables -t nat -C POSTROUTING $C -j FLANNEL-POSTRTG"
for r in "-m mark --mark 0x4000/0x4000 $C -j RETURN" "-s $P -d $N $C -j RETURN" "-s $N -d $P $C -j RETURN" \
         "! -s $N -d $P $C -j RETURN" "-s $N ! -d 224.0.0.0/4 $C -j MASQUERADE --random-fully" "! -s $N -d $N $C -j MASQUERADE --random-fully"; do
  FLANNEL_CHECK="$FLANNEL_CHECK; iptables -t nat -C FLANNEL-POSTRTG $r"
done
APPLY_NFT="printf 'add table ip felt\ndelete table ip felt\n%s\n' '$NFT_TABLE' | nft -f -"

echo "## Keeping the rules: cost per operation (node with $KUBE kube-proxy rules in nat; median of $RUNS; ms)"
echo
echo "| operation | wall ms | minus a bare exec (${base} ms) |"
echo "|---|---|---|"
row "felt nftables check: \`nft -j list table ip felt\`" "nft -j list table ip felt"
row "felt nftables apply: one \`nft -f\` transaction (whole table)" "$APPLY_NFT"
row "felt iptables check: \`iptables -S\` of 4 chains" "$CHECK_IPT"
row "felt iptables apply: \`iptables-restore --noflush\` (nat)" "iptables-restore --noflush -w 5 <<<'*nat
:FLANNEL-POSTRTG - [0:0]
-F FLANNEL-POSTRTG
COMMIT'"
row "flannel's check: \`iptables -C\` per rule (7 calls)" "$FLANNEL_CHECK"
row "naive check: \`iptables-save -t nat\`" "iptables-save -t nat"
row "naive check: \`nft -j list table ip nat\`" "nft -j list table ip nat"
