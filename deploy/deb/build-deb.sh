#!/usr/bin/env bash
# Wraps a `make install DESTDIR=ROOT PREFIX=/usr` tree into a .deb.
#
#   deploy/deb/build-deb.sh ROOT OUT_DIR
#
# DEB_COMPRESS: xz (default), gzip or none.
set -euo pipefail

root=${1:?usage: build-deb.sh ROOT OUT_DIR}
out=${2:?usage: build-deb.sh ROOT OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture)
[[ -x "$root/usr/bin/minkube-agent" ]] || { echo "build-deb: $root is not an install tree (make install DESTDIR=... PREFIX=/usr)" >&2; exit 1; }

mkdir -p "$root/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" "$here/control" > "$root/DEBIAN/control"
cp "$here/conffiles" "$here/postinst" "$here/postrm" "$root/DEBIAN/"
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/minkube_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$root" "$deb" >/dev/null
echo "built $deb"
