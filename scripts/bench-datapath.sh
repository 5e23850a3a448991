#!/usr/bin/env bash
# felt's datapath benchmarks, everything side by side in one run, in
# throwaway network namespaces (never the machine's own): pod-to-pod TCP
# throughput against a hand-built kernel datapath, convergence against
# the bench's own floor watcher (and flanneld, if given), scale against
# the kernel's own cost, and start-up. Release builds. Not part of the
# tests: nothing here asserts a time.
#
#   sudo scripts/bench-datapath.sh                 # everything (~15 min)
#   sudo scripts/bench-datapath.sh --quick         # a subset (~2-3 min)
#   sudo scripts/bench-datapath.sh scale --sizes 500,5000,20000
#   sudo scripts/bench-datapath.sh throughput --backends vxlan --reps 5
#   sudo FLANNELD_BIN=/path/to/flanneld scripts/bench-datapath.sh convergence
#   sudo scripts/bench-datapath.sh udp --secs 10   # the udp ladder alone
#
# Parts: all (default), throughput, convergence, scale, startup, udp; every
# option of the first five is listed by `target/release/felt-bench --help`;
# udp is overlayd's udp-bench (plain, +multiqueue, +batching, +offloads
# against kernel VXLAN in the same rig; options --secs N, --gro on|off),
# which `all` runs last and appends to the markdown. Prints each
# part's tables as it finishes, then a markdown section for
# docs/performance.md, also written to target/bench-datapath/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-datapath.sh: run as root (it creates network namespaces)" >&2
  exit 1
fi

bash scripts/setup.sh

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
echo "building felt, overlayd and felt-bench (release) ..."
cargo build --release --quiet -p felt-cni -p overlayd -p felt-bench

part=all
case "${1:-}" in
  all|throughput|convergence|scale|startup|udp) part=$1; shift ;;
esac

udp_ladder() {
  cargo run --quiet --release -p overlayd --example udp-bench -- "$@"
}
if [ "$part" = udp ]; then
  udp_ladder "$@"
  exit
fi

OUT=$TARGET/bench-datapath
mkdir -p "$OUT"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then commit="$commit (uncommitted changes)"; fi
export FELT_BENCH_COMMIT=$commit

# The bench runs in the background so that a Ctrl-C here stops it (a
# background job of a script ignores SIGINT itself) and the namespaces it
# leaves when killed are removed: they are named felt-t-<tag>-<pid>-<n>.
"$TARGET/release/felt-bench" "$part" --markdown "$OUT/performance.md" "$@" &
pid=$!
# shellcheck disable=SC2317 # run by the trap below
stop() { kill -TERM "$pid" 2>/dev/null || true; }
trap stop INT TERM
status=0
wait "$pid" || status=$?
# `wait` returns early when a trapped signal arrives: wait for the exit.
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || status=$?; done
trap - INT TERM
for ns in $(ip netns list | awk '{print $1}' | grep -E "^felt-t-.*-${pid}-[0-9]+$" || true); do
  ip netns del "$ns" 2>/dev/null || true
done
if [ "$status" -eq 0 ] && [ "$part" = all ]; then
  secs=5
  for a in "$@"; do [ "$a" = --quick ] && secs=2; done
  echo "udp ladder ($secs s per iperf3 run) ..."
  udp_ladder --secs "$secs" | tee "$OUT/udp-ladder.txt" || status=$?
  {
    echo
    echo "### udp backend: the ladder against kernel VXLAN"
    echo
    echo "overlayd's udp engine between two node namespaces, pod to pod, one technique added per row, beside the kernel's VXLAN in the same rig (scripts/bench-datapath.sh udp)."
    echo
    grep -E '^(\||pod-to-pod|load average)' "$OUT/udp-ladder.txt" || true
  } >> "$OUT/performance.md"
fi
[ "$status" -eq 0 ] && echo "markdown written to $OUT/performance.md"
exit "$status"
