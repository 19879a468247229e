#!/usr/bin/env bash
# Builds a tiny local image from Debian's static busybox, without any registry:
#   scripts/test-image.sh TAG LABEL
# LABEL is KEY=VALUE (e.g. minkube.test-run=1234); it lets the caller remove
# exactly the images it made. Prints TAG on stdout when done.
set -euo pipefail

usage() {
    echo "usage: $0 TAG LABEL   (e.g. $0 minkube-test:busybox minkube.test-run=42)" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
tag=$1
label=$2
[[ -n $tag ]] || usage
if [[ $label != ?*=* ]]; then
    echo "error: LABEL must be KEY=VALUE, got '$label'" >&2
    exit 2
fi

busybox=${BUSYBOX:-/bin/busybox}
if [[ ! -x $busybox ]]; then
    echo "error: $busybox not found: install Debian's static busybox (apt-get install busybox-static)" >&2
    exit 1
fi
# A dynamically linked busybox would not run in an image without a libc.
if command -v ldd >/dev/null 2>&1 && ldd "$busybox" >/dev/null 2>&1; then
    echo "error: $busybox is dynamically linked: install the static build (apt-get install busybox-static)" >&2
    exit 1
fi
if ! command -v docker >/dev/null 2>&1; then
    echo "error: docker CLI not found: install Docker and make sure the daemon is running" >&2
    exit 1
fi

workdir=$(mktemp -d "${TMPDIR:-/tmp}/minkube-image.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
rootfs=$workdir/rootfs

mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/www" "$rootfs/etc"
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
chmod 0755 "$rootfs/bin/busybox"
for applet in sh sleep true false echo env httpd cat ls wget nc; do
    ln -s busybox "$rootfs/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$rootfs/etc/passwd"
echo "root:x:0:" >"$rootfs/etc/group"

tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . |
    docker import \
        --change "LABEL $label" \
        --change 'ENV PATH=/bin' \
        --change 'CMD ["/bin/sh"]' \
        - "$tag" >/dev/null
echo "$tag"
