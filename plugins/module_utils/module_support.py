# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one place where a module turns the engine's failures into ``fail_json``."""

from __future__ import annotations

import dataclasses
import os
import re

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import client_versions
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.progress import (
    MAX_PROGRESS_INTERVAL_S,
    MIN_PROGRESS_INTERVAL_S,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.request import (
    COMPRESSION_METHODS,
    TRANSPORTS,
    ssh_uri,
    validate_host_name,
    validate_libvirt_uri,
)

# Options of every module that acts on a guest and a pair of hypervisors (migrate, preflight).
# How the memory travels (doc_fragments/pair.py's TRANSPORT): the pair's modules and evacuate.
TRANSPORT_ARGUMENT_SPEC = {
    "transport": {"type": "str", "choices": list(TRANSPORTS), "default": "tls"},
    "allow_insecure": {"type": "bool", "default": False},
}
PAIR_ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "source_uri": {"type": "str", "default": "qemu:///system"},
    "dest_uri": {"type": "str"},
    "dest_host": {"type": "str"},
    **TRANSPORT_ARGUMENT_SPEC,
}
# How each migration is steered and bounded (mirrored by doc_fragments/convergence.py); the bandwidth is each
# module's own (one migration's cap, or evacuate's total).
CONVERGENCE_ARGUMENT_SPEC = {
    "max_downtime_ms": {"type": "int", "default": 500},
    "timeout": {"type": "int"},
    "max_data_factor": {"type": "float", "default": 5.0},
    "poll_interval": {"type": "float", "default": 0.25},
    "convergence_threshold": {"type": "float", "default": 0.8},
    "stall_passes": {"type": "int", "default": 2, "no_log": False},  # counts passes, not a password
    "allow_auto_converge": {"type": "bool", "default": True},
    "allow_post_copy": {"type": "bool", "default": False},
    "post_copy_recovery_timeout": {"type": "int", "default": 300},
    "progress_timeout": {"type": "int", "default": 150},
    "measure_dirty_rate": {"type": "bool", "default": True},
    "parallel_connections": {"type": "int"},
    "compression": {"type": "list", "elements": "str", "choices": list(COMPRESSION_METHODS)},
}
# Progress lines while the module runs in the background (mirrored by doc_fragments/progress.py).
PROGRESS_ARGUMENT_SPEC = {
    "progress_interval": {"type": "float", "default": 5},
    "progress_path": {"type": "path"},
}
# What the action plugin names a progress file (kvmlm-progress-<uuid>.json): nothing else is overwritten and removed.
PROGRESS_FILE_NAME = re.compile(r"^kvmlm-progress-[A-Za-z0-9._-]+\.json$")
PAIR_CONSTRAINTS = {"required_one_of": [("dest_uri", "dest_host")], "mutually_exclusive": [("dest_uri", "dest_host")]}


# Module options whose request field has another name (the unit), and those that become tuples.
_FIELD_OF_OPTION = {"bandwidth": "bandwidth_mib", "timeout": "timeout_s", "poll_interval": "poll_interval_s",
                    "post_copy_recovery_timeout": "post_copy_recovery_timeout_s",
                    "progress_timeout": "progress_timeout_s"}
_TUPLE_OPTIONS = ("compression", "migrate_disks")


def destination_uri(params):
    """dest_uri, or the qemu+ssh:// URI that dest_host (a host name, checked) stands for."""
    if params["dest_uri"] is not None:
        return params["dest_uri"]
    validate_host_name(params["dest_host"], "dest_host")
    return ssh_uri(params["dest_host"])


def build_request(request_class, params):
    """``request_class`` (a request dataclass) from a module's params: every option that names one of its fields."""
    if params.get("source_uri") is not None:
        validate_libvirt_uri(params["source_uri"], "source_uri")
    fields = {field.name for field in dataclasses.fields(request_class)}
    values = {}
    for option, value in params.items():
        name = _FIELD_OF_OPTION.get(option, option)
        if name in fields:
            values[name] = tuple(value or ()) if option in _TUPLE_OPTIONS else value
    return request_class(**{**values, "dest_uri": destination_uri(params)})


def validate_progress(params):
    """progress_interval within its range (0 turns the progress lines off); progress_path a progress file's name
    (the module replaces that file, then removes it)."""
    interval = params.get("progress_interval")
    if interval and not MIN_PROGRESS_INTERVAL_S <= interval <= MAX_PROGRESS_INTERVAL_S:
        raise MigrationError(f"progress_interval={interval} is outside {MIN_PROGRESS_INTERVAL_S}-"
                             f"{MAX_PROGRESS_INTERVAL_S} s", fix="give the seconds between progress lines, e.g. 5, "
                                                                 "or 0 for none")
    path = params.get("progress_path")
    if path and not PROGRESS_FILE_NAME.match(os.path.basename(path)):
        raise MigrationError(f"progress_path={path!r} is not named kvmlm-progress-NAME.json: the module replaces that "
                             "file and removes it when it ends",
                             fix="name a new file such as /run/kvmlm-progress-web01.json, or leave progress_path to "
                                 "the action plugin")


def run_engine(module, work, libvirt_import_error):
    """Return ``work()``; fail the module once when libvirt-python is missing or work raises MigrationError."""
    if libvirt_import_error:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=libvirt_import_error)
    try:
        return work()
    except MigrationError as error:
        partial = {} if error.result is None else {"migration": error.result, "changed": True}
        module.fail_json(msg=str(error), error=error.as_dict(), versions=client_versions(), **partial)
        raise  # not reached: fail_json exits
