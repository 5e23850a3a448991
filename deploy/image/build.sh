#!/usr/bin/env bash
# build.sh OUT.tar [TAG]
#
# Builds the felt image as a `docker save` archive, with no container engine
# and no registry: felt's release binaries, the files deploy/image/contents.txt
# lists (from this Debian bookworm machine's packages) and their shared
# libraries, in one layer. Load it with
#   ctr -n k8s.io images import OUT.tar        # containerd (a node)
#   kind load image-archive OUT.tar            # kind
#   docker load -i OUT.tar
# The image is docker.io/felt/felt:TAG (TAG defaults to the workspace
# version, which deploy/felt.yaml names). The Containerfile beside this
# script builds the same files with a container engine.
#
# Environment: FELT_BIN_DIR  take overlayd and felt from this directory
#                            instead of running cargo build --release
#              FELT_IMAGE    repository (default docker.io/felt/felt)
#              SOURCE_DATE_EPOCH  file times in the image (default 0)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [ $# -lt 1 ] || [ $# -gt 2 ]; then sed -n '2,18p' "${BASH_SOURCE[0]}" >&2; exit 2; fi
OUT=$1
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml")
[ -n "$VERSION" ] || { echo "build.sh: no version in $REPO/Cargo.toml" >&2; exit 1; }
TAG=${2:-$VERSION}
REF=${FELT_IMAGE:-docker.io/felt/felt}:$TAG

if [ -n "${FELT_BIN_DIR:-}" ]; then
  BINDIR=$FELT_BIN_DIR
else
  (cd "$REPO" && cargo build --release --locked -p overlayd -p felt-cni)
  BINDIR=${CARGO_TARGET_DIR:-$REPO/target}/release
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/rootfs"
"$HERE/assemble-rootfs.sh" "$WORK/rootfs" "$BINDIR" "$HERE/contents.txt"
python3 "$HERE/pack.py" "$WORK/rootfs" "$OUT" "$REF" "$TAG"
