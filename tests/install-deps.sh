#!/usr/bin/env bash
# Installs everything the collection, its tests and its lab need on a Debian 12 machine (as root):
# Debian packages, then a Python venv with the Python requirements. Safe to run again.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${KVMLM_VENV:-/opt/kvmlm/venv}
packages=(
    # hypervisor
    qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients
    # libvirt-python builds against these
    libvirt-dev pkg-config gcc libc6-dev python3-dev python3-venv
    # lab: namespaces, SSH between the hypervisors, the guest image
    openssh-server openssh-client iproute2 util-linux procps cpio gzip
    # ansible-test sanity runs shellcheck on the lab scripts
    shellcheck git
)

[ "$(id -u)" -eq 0 ] || { echo "install-deps.sh: run as root" >&2; exit 1; }

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # libvirt-daemon-system's scripts try to start services; there may be no init system to start them.
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/requirements.txt" -r "$repo/test-requirements.txt"
echo "install-deps.sh: ready ($("$venv/bin/ansible" --version | head -1), venv $venv)"
