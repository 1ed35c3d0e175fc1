#!/usr/bin/env bash
# Installs everything the collection, its tests and its lab need on a Debian 12 machine (as root):
# Debian packages, then a Python venv with the Python requirements. Safe to run again.
#
# The virtualization stack comes in one of two generations (KVMLM_STACK, default backports):
#   backports  QEMU 10.0 / libvirt 11.3 from Debian 12's bookworm-backports suite. The default: QEMU
#              7.2 under TCG loses guest writes during pre-copy (DEVELOPERS.md), 10.0 does not.
#   stock      QEMU 7.2 / libvirt 9.0, what a plain Debian 12 host runs.
# Switching from one to the other installs or downgrades only the qemu, libvirt and seabios packages
# (an apt pin, /etc/apt/preferences.d/kvmlm-virt.pref) and rebuilds libvirt-python against the
# libvirt that is then installed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${KVMLM_VENV:-/opt/kvmlm/venv}
stack=${KVMLM_STACK:-backports}
virt_packages=(qemu-system-x86 qemu-utils seabios libvirt-daemon-system libvirt-clients libvirt-dev)
packages=(
    # libvirt-python builds against these
    pkg-config gcc libc6-dev python3-dev python3-venv
    # lab: namespaces, SSH between the hypervisors, the guest image
    openssh-server openssh-client iproute2 util-linux procps cpio gzip
    # what the hypervisor role installs on a Debian host (present here, so the lab needs no package mirror)
    python3-libvirt python3-cryptography
    # ansible-test sanity runs shellcheck on the lab scripts
    shellcheck git
    # the real-hosts tier (tests/machines): systemd-nspawn machines from debootstrap, their packages through a
    # caching proxy on this machine
    debootstrap systemd-container apt-cacher-ng curl
)
backports_sources=/etc/apt/sources.list.d/kvmlm-bookworm-backports.sources
pin_file=/etc/apt/preferences.d/kvmlm-virt.pref

[ "$(id -u)" -eq 0 ] || { echo "install-deps.sh: run as root" >&2; exit 1; }
case "$stack" in
    backports) suite=bookworm-backports priority=990 ;;
    # Above 1000, so that apt downgrades what the backports stack installed.
    stock) suite=bookworm priority=1001 ;;
    *) echo "install-deps.sh: KVMLM_STACK=$stack: use backports or stock" >&2; exit 2 ;;
esac

write_if_changed() {
    local path=$1 content=$2
    [ -f "$path" ] && [ "$(cat "$path")" = "$content" ] && return 1
    printf '%s\n' "$content" >"$path"
}

apt_changed=0
# The machine's own sources may already list backports; a second entry for the same suite is harmless.
write_if_changed "$backports_sources" "Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" && apt_changed=1
write_if_changed "$pin_file" "# kvm.live_migration (tests/install-deps.sh): the virtualization stack comes from $suite.
Package: src:qemu src:libvirt src:seabios
Pin: release n=$suite
Pin-Priority: $priority" || true

export DEBIAN_FRONTEND=noninteractive
if [ "$apt_changed" = 1 ] || [ ! -d /var/lib/apt/lists ] || [ -z "$(ls /var/lib/apt/lists/*bookworm-backports* 2>/dev/null)" ]; then
    apt-get update -q
fi

# The wanted version of a package: apt's candidate under the pin.
candidate() { apt-cache policy "$1" | awk '/Candidate:/ {print $2}'; }
installed() { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | awk '$3 == "installed" {print $4}'; }

missing=()
for package in "${packages[@]}"; do
    [ -n "$(installed "$package")" ] || missing+=("$package")
done
for package in "${virt_packages[@]}"; do
    wanted=$(candidate "$package")
    if [ -z "$wanted" ] || [ "$wanted" = "(none)" ]; then
        apt-get update -q
        wanted=$(candidate "$package")
    fi
    [ "$(installed "$package")" = "$wanted" ] || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps.sh: installing ${missing[*]} ($stack stack)"
    # libvirt-daemon-system's scripts try to start services; there may be no init system to start them.
    # --allow-downgrades: going back to the stock stack; apt removes the packages only backports has.
    apt-get install -y -q --no-install-recommends --allow-downgrades "${packages[@]}" "${virt_packages[@]}"
fi

# Files move between packages across the generations (libvirt 11's libvirt-common took over
# libvirt0's cpu_map): going back, removing the newer owner deletes files the older package ships,
# and dpkg no longer lists them as that package's, so 'dpkg --verify' cannot see them missing.
# After a switch, reinstall every package of the stack; otherwise those that miss a file of their own.
damaged=()
for package in $(dpkg-query -W -f='${binary:Package} ${source:Package} ${db:Status-Status}\n' |
    awk '$3 == "installed" && ($2 == "qemu" || $2 == "libvirt" || $2 == "seabios") {print $1}'); do
    # grep without -q: an early exit would fail the pipeline (pipefail) and hide the package.
    if [ ${#missing[@]} -gt 0 ] || dpkg --verify "$package" 2>/dev/null | grep '^missing ' >/dev/null; then
        damaged+=("$package")
    fi
done
if [ ${#damaged[@]} -gt 0 ]; then
    echo "install-deps.sh: reinstalling ${damaged[*]} (files lost in the switch between stacks)"
    apt-get install -y -q --no-install-recommends --reinstall "${damaged[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# libvirt-python is compiled against the libvirt headers it finds: a build against 11.3 does not load
# with libvirt 9.0, and one against 9.0 lacks the newer API. Build it (never from pip's wheel cache,
# which may hold a build against the other stack) when the stack changed, before the other requirements.
libvirt_version=$(pkg-config --modversion libvirt)
built_against="$venv/.kvmlm-libvirt-python-built-against"
if [ "$(cat "$built_against" 2>/dev/null)" != "$libvirt_version" ]; then
    echo "install-deps.sh: building libvirt-python against libvirt $libvirt_version"
    "$venv/bin/pip" uninstall -q -y libvirt-python >/dev/null 2>&1 || true
    "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir --no-deps \
        "$(grep -E '^libvirt-python' "$repo/requirements.txt")"
    echo "$libvirt_version" >"$built_against"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/requirements.txt" \
    -r "$repo/requirements-controller.txt" -r "$repo/test-requirements.txt"
"$venv/bin/python" -c 'import libvirt' || { echo "install-deps.sh: libvirt-python does not load" >&2; exit 1; }
echo "install-deps.sh: ready ($stack stack: $(qemu-system-x86_64 --version | head -1), libvirt $libvirt_version;" \
    "$("$venv/bin/ansible" --version | head -1), venv $venv)"
