#!/usr/bin/env bash
# Installs everything felt's build, tests, demo and benchmarks take from the
# system, from Debian's packages, and nothing else. Idempotent: installs only
# what is missing; safe to run twice. Packages are installed with
# --no-install-recommends, so each one the build or a test needs is named
# here, even where Debian only "recommends" it (libprotobuf-dev) or a base
# image happens to have it (gcc, openssl, procps): a fresh machine must not
# depend on what a used one picked up. `scripts/fresh-check.sh` proves it on
# a freshly bootstrapped bookworm root.
set -euo pipefail

PACKAGES=(
  # the build
  gcc libc6-dev                 # cc for ring (rustls) and other -sys crates
  protobuf-compiler             # etcd-client's build script runs protoc ...
  libprotobuf-dev               # ... which needs google/protobuf/*.proto (only a Recommends of protobuf-compiler)
  ca-certificates               # cargo fetching crates over https
  # the tests, the demo and the benchmarks
  iproute2                      # ip netns / link / route, bridge fdb, ss
  iputils-ping                  # ping between pods
  procps                        # sysctl inside test namespaces, ps
  openssl                       # certificates for the etcd TLS tests
  etcd-server etcd-client       # the real lease store (etcd v3) and etcdctl
  iperf3                        # throughput in the demo, tests and benchmarks
  ethtool                       # udp datapath tests/bench: veth GRO, flannel0 offload flags
  nftables                      # nft: masquerade rules (nftables mode), root-namespace checks
  iptables                      # iptables-{nft,legacy}-{save,restore}: masquerade rules (iptables mode), flannel takeover
  golang-go                     # builds the libcni conformance driver ...
  golang-github-appc-cni-dev    # ... against Debian's libcni (offline)
  containernetworking-plugins   # the reference bridge + host-local (benchmark)
  xz-utils                      # unpacks the test kube-apiserver
  python3                       # small HTTP probes in tests; local-node.sh
  # deploy/: the image, the manifests' tests, the local Kubernetes nodes
  shellcheck                    # every shell script is checked (conformance/deploy)
  containerd runc               # throwaway containerd: image import + ctr run; local-node.sh
  busybox-static                # the image's shell; local-node.sh's busybox image
  python3-venv                  # the venv of the offline manifest validator
  curl util-linux               # local-node.sh (curl, nsenter, unshare, findmnt)
)
# and the Debian packages the felt image's files come from (deploy/image/contents.txt)
HERE=$(cd "$(dirname "$0")" && pwd)
while read -r kind name _; do
  [ "$kind" = pkg ] && PACKAGES+=("$name")
done <"$HERE/../deploy/image/contents.txt"

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (tests create network namespaces; apt installs packages)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's etcd-server unit must not run a system etcd on the machine's own
# ports: the tests start their own with temp data dirs.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi

# Tools the deploy/ tests take from outside the system, into target/deploy-tools:
# - bin/kubectl: Debian's kubernetes-client 1.20 (kustomize built in), unpacked
#   rather than installed: it cannot be installed beside a `kubectl` package
#   (both own /usr/bin/kubectl), and the tests want 1.20 whatever else is on PATH
# - venv/: kubernetes-validate, pinned in conformance/deploy/requirements.txt
TOOLS=${FELT_DEPLOY_TOOLS:-$HERE/../target/deploy-tools}
mkdir -p "$TOOLS/bin"
if ! "$TOOLS/bin/kubectl" version --client 2>/dev/null | grep -q 'GitVersion:"v1\.20\.'; then
  echo "setup.sh: kubectl 1.20 (Debian kubernetes-client) into $TOOLS/bin"
  deb=$(mktemp -d)
  chmod 755 "$deb"   # apt downloads as _apt
  (cd "$deb" && apt-get download kubernetes-client >/dev/null && dpkg-deb -x kubernetes-client_*.deb x)
  install -m 0755 "$deb/x/usr/bin/kubectl" "$TOOLS/bin/kubectl.tmp"
  mv "$TOOLS/bin/kubectl.tmp" "$TOOLS/bin/kubectl"
  rm -rf "$deb"
fi
REQ=$HERE/../conformance/deploy/requirements.txt
if ! cmp -s "$REQ" "$TOOLS/venv/requirements.txt"; then
  echo "setup.sh: kubernetes-validate into $TOOLS/venv"
  rm -rf "$TOOLS/venv"
  /usr/bin/python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$TOOLS/venv/requirements.txt"
fi

command -v cargo >/dev/null || { echo "setup.sh: cargo not found (install Rust with rustup)" >&2; exit 1; }
echo "setup.sh: ok"
