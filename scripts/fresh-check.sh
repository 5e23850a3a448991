#!/usr/bin/env bash
# Does scripts/setup.sh bring everything a fresh machine needs? Bootstraps a
# minimal Debian bookworm root from Debian's archive (mmdebstrap, variant
# "apt": Essential packages + apt, nothing else), bind-mounts this machine's
# Rust toolchain and cargo registry cache read-only plus a copy of this
# checkout, and inside it runs scripts/setup.sh, then the build exactly as
# scripts/test.sh does it (fmt, clippy, build of every target), the libcni
# driver's Go build, and a check that every tool the tests, the demo and the
# benchmarks call is on PATH. Not part of the test suite; run it before
# changing setup.sh or adding a build dependency.
#
#   sudo scripts/fresh-check.sh [WORKDIR]     # default: a temp dir, removed afterwards
#
# Needs root and network access to deb.debian.org. Installs mmdebstrap on
# this machine if it is missing (and says so); touches nothing else here.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-check.sh: run as root (mmdebstrap and chroot need it)" >&2
  exit 1
fi
if ! command -v mmdebstrap >/dev/null; then
  echo "fresh-check.sh: installing mmdebstrap on this machine (the check needs it; setup.sh does not)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
toolchain=$(rustc --print sysroot)
for d in "$rustup_home" "$cargo_home/bin" "$toolchain"; do
  [ -d "$d" ] || { echo "fresh-check.sh: $d missing (Rust via rustup expected)" >&2; exit 1; }
done

work=${1:-}
own_work=0
if [ -z "$work" ]; then
  work=$(mktemp -d /tmp/felt-fresh.XXXXXX)
  own_work=1
fi
root=$work/root
mounts=()
cleanup() {
  for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  if [ "$own_work" = 1 ]; then rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT

echo "== bootstrapping a minimal bookworm root in $root"
mmdebstrap --variant=apt --quiet bookworm "$root" http://deb.debian.org/debian
# What the root holds before setup.sh, for the report.
# shellcheck disable=SC2016 # dpkg-query's own ${Package}, not the shell's
chroot "$root" dpkg-query -W -f='${Package}\n' | sort > "$work/packages-before.txt"

bind() { # bind SRC DST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounts+=("$2")
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}
bind /proc "$root/proc"
bind /sys "$root/sys"
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
bind "$rustup_home" "$root/opt/rustup" ro
bind "$cargo_home/bin" "$root/opt/cargo/bin" ro
# The registry cache is shared read-only: the build proves what Debian must
# provide, not what crates.io serves (Cargo.lock pins those).
bind "$cargo_home/registry" "$root/opt/cargo-registry" ro
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The site's own CA certificates (here: the TLS-intercepting egress proxy's),
# which belong to the base image, not to setup.sh: ca-certificates, which
# setup.sh installs, merges them into the bundle pip and curl use.
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi

echo "== copying the checkout (tracked and untracked files, not target/)"
mkdir -p "$root/src/felt"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$root/src/felt"

cat > "$root/run-check.sh" <<'EOF'
set -euo pipefail
export RUSTUP_HOME=/opt/rustup
export CARGO_HOME=/root/cargo-home
mkdir -p "$CARGO_HOME"
ln -sfn /opt/cargo-registry "$CARGO_HOME/registry"
export PATH=/opt/cargo/bin:$PATH
cd /src/felt
echo "== scripts/setup.sh"
bash scripts/setup.sh
echo "== cargo fmt / clippy / build, as scripts/test.sh runs them"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet --offline --locked -- -D warnings
cargo build --workspace --all-targets --quiet --offline --locked
echo "== the libcni driver (Go, against Debian's libcni)"
(cd conformance/libcni-driver && GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/libcni-driver .)
echo "== tools the tests, the demo and the benchmarks run"
missing=0
for t in ip bridge ss ping sysctl openssl etcd etcdctl iperf3 nft go xz; do
  command -v "$t" >/dev/null || { echo "missing: $t"; missing=1; }
done
for f in /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/portmap; do
  [ -x "$f" ] || { echo "missing: $f"; missing=1; }
done
exit $missing
EOF

echo "== inside the fresh root"
chroot "$root" /bin/bash /run-check.sh
# shellcheck disable=SC2016 # dpkg-query's own ${Package}, not the shell's
chroot "$root" dpkg-query -W -f='${Package}\n' | sort > "$work/packages-after.txt"
echo "== fresh-check: ok. setup.sh brought $(comm -13 "$work/packages-before.txt" "$work/packages-after.txt" | wc -l) packages onto a root of $(wc -l < "$work/packages-before.txt")"
