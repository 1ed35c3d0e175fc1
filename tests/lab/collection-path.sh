#!/usr/bin/env bash
# Prints a directory to use as ANSIBLE_COLLECTIONS_PATH in which kvm.live_migration is this
# working tree (a symlink), so playbooks and tests run the code as it is, uncommitted changes too.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
farm=${KVMLM_COLLECTIONS_DIR:-${TMPDIR:-/tmp}/kvmlm-collections-$(id -u)}
mkdir -p "$farm/ansible_collections/kvm"
ln -sfn "$repo" "$farm/ansible_collections/kvm/live_migration"
echo "$farm"
