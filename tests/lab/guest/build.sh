#!/usr/bin/env bash
# Builds the lab guest image: Debian's cloud kernel (direct boot) and an initramfs whose init is
# the dirtier workload. Output: $1/vmlinuz and $1/initrd.gz. Rebuilds only when missing.
set -euo pipefail

out=${1:?usage: build.sh OUTPUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
kernel_package=${KVMLM_KERNEL_PACKAGE:-linux-image-cloud-amd64}

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -s "$out/vmlinuz" ]; then
    # The meta package only depends on the versioned image; resolve it and unpack without installing.
    versioned=$(apt-cache depends "$kernel_package" | awk '/Depends: linux-image-/ {print $2; exit}')
    [ -n "$versioned" ] || { echo "build.sh: cannot resolve $kernel_package (run apt-get update)" >&2; exit 1; }
    (cd "$work" && apt-get download -q "$versioned" 2>/dev/null && dpkg -x ./*.deb unpacked)
    cp "$work"/unpacked/boot/vmlinuz-* "$out/vmlinuz.tmp"
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
fi

if [ ! -s "$out/initrd.gz" ] || [ "$here/dirtier.c" -nt "$out/initrd.gz" ]; then
    root="$work/root"
    mkdir -p "$root/dev" "$root/proc"
    gcc -O2 -static -Wall -Wextra -Werror -o "$root/init" "$here/dirtier.c"
    mknod -m 600 "$root/dev/console" c 5 1
    (cd "$root" && find . | cpio --quiet -o -H newc | gzip -9) > "$out/initrd.gz.tmp"
    mv "$out/initrd.gz.tmp" "$out/initrd.gz"
fi
chmod 0644 "$out/vmlinuz" "$out/initrd.gz"
