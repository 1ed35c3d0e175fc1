#!/usr/bin/env bash
# A controller set up as README.md's "Install" tells a user to: a venv with the `ansible` package (ansible-core
# and the collections the roles use: community.crypto, community.general, ansible.posix) and
# requirements-controller.txt, and this collection built by tests/build.sh (the tarball a user gets, without
# development files) and installed from it with ansible-galaxy. Galaxy is not reachable here: ansible-galaxy
# finds the dependencies the `ansible` package installed, as it would on a user's machine without Galaxy.
#
#   tests/machines/user-controller.sh DIR
#
# Installs the collection under DIR/collections and prints that path: run $KVMLM_USER_VENV/bin/ansible-playbook
# with ANSIBLE_COLLECTIONS_PATH set to it. The venv ($KVMLM_USER_VENV, default /opt/kvmlm/user-controller) is
# made once for each set of requirements. The `ansible` package is 12.x: the newest whose ansible-core (2.19)
# runs on this machine's Python 3.11.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${KVMLM_USER_VENV:-/opt/kvmlm/user-controller}
dir=${1:?usage: user-controller.sh DIR}
requirements="ansible==12.*
-r $repo/requirements-controller.txt"

log() { echo "user-controller.sh: $*" >&2; }

ensure_venv() {
    local wanted
    wanted="$requirements
$(cat "$repo/requirements-controller.txt")"
    if [[ -x "$venv/bin/ansible-playbook" && "$(cat "$venv/.kvmlm-requirements" 2>/dev/null)" == "$wanted" ]]; then
        return 0
    fi
    log "building $venv"
    rm -rf -- "$venv"
    python3 -m venv "$venv"
    printf '%s\n' "$requirements" >"$venv/requirements.txt"
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$venv/requirements.txt" \
        >"$venv/pip.log" 2>&1; then
        tail -n 30 "$venv/pip.log" >&2
        rm -rf -- "$venv"
        log "could not install the ansible package"
        exit 2
    fi
    printf '%s\n' "$wanted" >"$venv/.kvmlm-requirements"
}

ensure_venv
mkdir -p "$dir/dist" "$dir/home"
KVMLM_VENV=$venv bash "$repo/tests/build.sh" "$dir/dist" >&2
# A HOME of its own: nothing from ~/.ansible (an earlier install of this collection) counts as installed.
HOME=$dir/home ANSIBLE_COLLECTIONS_PATH=$dir/collections "$venv/bin/ansible-galaxy" collection install \
    "$dir"/dist/kvm-live_migration-*.tar.gz >&2
echo "$dir/collections"
