#!/usr/bin/env bash
# assemble-rootfs.sh ROOTFS BINDIR [CONTENTS]
#
# Fills the empty directory ROOTFS with the felt image's files as listed in
# CONTENTS (default: contents.txt beside this script): felt's binaries from
# BINDIR, the listed files of this (Debian bookworm) machine and the shared
# libraries they load. Used by build.sh on the build machine and by the
# Containerfile's rootfs stage, so both images hold the same files.
set -euo pipefail

usage() { echo "usage: $0 ROOTFS BINDIR [CONTENTS]" >&2; exit 2; }
[ $# -ge 2 ] || usage
ROOT=$1
BINDIR=$2
CONTENTS=${3:-$(dirname "$0")/contents.txt}
die() { echo "assemble-rootfs.sh: $*" >&2; exit 1; }

[ -d "$ROOT" ] || die "$ROOT is not a directory"
[ -z "$(ls -A "$ROOT")" ] || die "$ROOT is not empty"
[ -f "$CONTENTS" ] || die "no contents list $CONTENTS"

# The image path of a host path: merged-/usr, so /lib/x -> /usr/lib/x; the
# directory part is resolved, the file name kept (a library's soname).
image_path() {
  local dir
  dir=$(realpath -e "$(dirname "$1")") || die "no directory for $1"
  echo "$dir/$(basename "$1")"
}

# Copies host file $1 (following symlinks) to the same path in the image.
put() {
  local src=$1 dest
  [ -e "$src" ] || die "$src is missing (is its package installed? see $CONTENTS)"
  dest=$ROOT$(image_path "$src")
  [ -e "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  cp -L --preserve=mode "$src" "$dest"
  libs "$src"
}

# Every shared library the dynamic linker would load for $1.
libs() {
  local out lib
  file_is_elf "$1" || return 0
  # ldd exits 1 on a static binary ("not a dynamic executable")
  out=$(ldd "$1" 2>/dev/null) || return 0
  if grep -q 'not found' <<<"$out"; then die "$1: missing libraries: $out"; fi
  while read -r lib; do
    put "$lib"
  done < <(awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(/{print $1}' <<<"$out")
}

file_is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }

mkdir -p "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/usr/lib" "$ROOT/usr/lib64"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$ROOT/$d"; done
mkdir -p "$ROOT/etc" "$ROOT/tmp" "$ROOT/run" "$ROOT/var" "$ROOT/root" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"
chmod 1777 "$ROOT/tmp"
ln -s ../run "$ROOT/var/run"
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"

applets_dir=""
while read -r kind a b; do
  case "$kind" in
    '' | '#'*) ;;
    pkg) dpkg-query -W -f='${Status}' "$a" 2>/dev/null | grep -q 'install ok installed' ||
      die "Debian package $a is not installed (scripts/setup.sh installs it)" ;;
    bin) [ -x "$BINDIR/$a" ] || die "no $BINDIR/$a (cargo build --release -p overlayd -p felt-cni)"
      install -m 0755 "$BINDIR/$a" "$ROOT/usr/bin/$a"
      libs "$BINDIR/$a" ;;
    file) put "$a" ;;
    glob) found=0
      for f in "$a"/$b; do [ -f "$f" ] && put "$f" && found=1; done
      [ $found = 1 ] || die "nothing matches $a/$b" ;;
    link) mkdir -p "$ROOT$(dirname "$a")"; ln -sfn "$b" "$ROOT$a" ;;
    applets) applets_dir=$a ;;
    *) die "$CONTENTS: unknown entry '$kind'" ;;
  esac
done <"$CONTENTS"

if [ -n "$applets_dir" ]; then
  for a in $("$ROOT/usr/bin/busybox" --list); do
    [ -e "$ROOT$applets_dir/$a" ] || [ -L "$ROOT$applets_dir/$a" ] || [ -e "$ROOT/usr/sbin/$a" ] ||
      ln -s busybox "$ROOT$applets_dir/$a"
  done
fi
