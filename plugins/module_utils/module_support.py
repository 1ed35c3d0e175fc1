# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one place where a module turns the engine's failures into ``fail_json``."""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import client_versions
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.migration import TRANSPORTS

# Options of every module that acts on a guest and a pair of hypervisors (migrate, preflight).
PAIR_ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "source_uri": {"type": "str", "default": "qemu:///system"},
    "dest_uri": {"type": "str"},
    "dest_host": {"type": "str"},
    "transport": {"type": "str", "choices": list(TRANSPORTS), "default": "tls"},
    "allow_insecure": {"type": "bool", "default": False},
}
PAIR_CONSTRAINTS = {"required_one_of": [("dest_uri", "dest_host")], "mutually_exclusive": [("dest_uri", "dest_host")]}


def destination_uri(params):
    """dest_uri, or the qemu+ssh:// URI that dest_host stands for."""
    return params["dest_uri"] or f"qemu+ssh://{params['dest_host']}/system"


def run_engine(module, work, libvirt_import_error):
    """Return ``work()``; fail the module once when libvirt-python is missing or work raises MigrationError."""
    if libvirt_import_error:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=libvirt_import_error)
    try:
        return work()
    except MigrationError as error:
        module.fail_json(msg=str(error), error=error.as_dict(), versions=client_versions())
        raise  # not reached: fail_json exits
