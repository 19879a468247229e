#!/usr/bin/env bash
# Builds the image the test cluster runs: the minkube binaries and the shared
# libraries `ldd` lists, in an otherwise empty root (no registry, no base
# image: `docker import` of a tarball).
#
#   deploy/compose/build-image.sh BIN_DIR TAG [LABEL=VALUE]
#
# BIN_DIR holds minkube, minkube-manager and minkube-agent (e.g. target/release).
set -euo pipefail

bin_dir=${1:?usage: build-image.sh BIN_DIR TAG [LABEL=VALUE]}
tag=${2:?usage: build-image.sh BIN_DIR TAG [LABEL=VALUE]}
label=${3:-minkube.cluster=local}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/var/lib/minkube" "$root/etc/minkube"
chmod 1777 "$root/tmp"
for b in minkube minkube-manager minkube-agent; do
    [[ -x "$bin_dir/$b" ]] || { echo "build-image: $bin_dir/$b is missing: build the binaries first" >&2; exit 1; }
    # Debug info is most of a debug build's size; the image does not need it.
    if command -v strip >/dev/null 2>&1; then
        strip --strip-debug -o "$root/usr/local/bin/$b" "$bin_dir/$b"
    else
        cp "$bin_dir/$b" "$root/usr/local/bin/$b"
    fi
done
# The dynamic loader and every library the binaries link, at the same paths.
ldd "$bin_dir"/minkube "$bin_dir"/minkube-manager "$bin_dir"/minkube-agent \
    | awk '/=> \// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }' \
    | sort -u \
    | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
tar -C "$root" -c . | docker import \
    --change "LABEL $label" \
    --change "ENV PATH=/usr/local/bin" \
    --change "WORKDIR /" \
    - "$tag" >/dev/null
echo "built $tag from $bin_dir"
