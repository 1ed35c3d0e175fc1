#!/usr/bin/python
# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: preflight
short_description: Check before moving whether a guest's live migration to a destination can work
version_added: 0.1.0
description:
  - Reads the guest, its source and the destination, runs every check and returns a list of findings
    (check, status V(ok), V(warn) or V(fail), message, fix) and RV(ok). Nothing changes on either host.
  - Fails the task when a check fails and O(fail_on_error=true), so a playbook stops before anything moves.
  - "Checks: C(host_identity) (the destination is another host with its own host UUID and a name the source resolves),
    C(transport) (the destination's libvirt answers over O(dest_uri)), C(tls) (for V(tls): the source's client and the
    destination's server certificates and keys are there, signed by one CA, valid now and for the name the source
    connects to, and readable by QEMU; the destination's directory is read through its libvirt, its keys never),
    C(ports) (the migration port answers: not dropped by a firewall), C(versions) (the destination's
    libvirt and QEMU are not older), C(architecture) (for example no 64-bit guest to a 32-bit-only host),
    C(machine_type), C(cpu) (the guest's CPU compared on the destination with the missing features named;
    host-passthrough guests need identical CPUs; Intel to AMD only with a vendor-neutral model), C(memory) (available
    memory on the destination covers the guest plus O(memory_margin_mib)), C(storage) (every disk and boot file is
    visible at the same path in a destination storage pool, or is copied with O(copy_storage) into a pool with room),
    C(network) (libvirt networks, bridges and devices exist and are active on the destination), C(devices) (no host
    devices or other non-migratable devices), C(guest_state), C(migration_job) (no job in progress),
    C(destination_name) (no other guest with this name or UUID there, and no second running copy), and with
    O(measure_dirty_rate) C(convergence) (the measured dirty rate against O(bandwidth))."
  - Run it where M(kvm.live_migration.migrate) runs, on the source hypervisor, so that the transport check opens the
    destination the way the source's libvirtd does.
author:
  - kvm.live_migration maintainers (@kvm-live-migration)
options:
  migrate_uri:
    description:
      - The address the migration stream will use, when not the destination's host name.
    type: str
  copy_storage:
    description:
      - Whether the migration will copy the disks (V(all) or V(incremental)).
    type: str
    choices: [all, incremental]
  migrate_disks:
    description:
      - Target names of the disks O(copy_storage) will copy; all writable disks by default.
    type: list
    elements: str
  memory_margin_mib:
    description:
      - Memory the destination must have available beyond the guest's, for QEMU itself and the host, in MiB.
    type: int
    default: 512
  fail_on_error:
    description:
      - Fail the task when any check fails. With V(false) the task succeeds and RV(ok) tells.
    type: bool
    default: true
  measure_dirty_rate:
    description:
      - Measure the guest's dirty rate for one second and predict whether pre-copy converges at O(bandwidth).
    type: bool
    default: false
  bandwidth:
    description:
      - Bandwidth cap of the migration in MiB/s, for the convergence prediction.
    type: int
    default: 0
  max_downtime_ms:
    description:
      - Downtime budget of the migration, for the convergence prediction.
    type: int
    default: 500
  convergence_threshold:
    description:
      - Convergence ratio (dirty rate / transfer rate) at or above which pre-copy does not converge.
    type: float
    default: 0.8
  allow_auto_converge:
    description:
      - Whether the migration may throttle the guest, for the convergence prediction.
    type: bool
    default: true
  allow_post_copy:
    description:
      - Whether the migration may switch to post-copy, for the convergence prediction.
    type: bool
    default: false
extends_documentation_fragment:
  - kvm.live_migration.libvirt
  - kvm.live_migration.pair
  - kvm.live_migration.pair.transport
  - kvm.live_migration.attributes
  - kvm.live_migration.attributes.actiongroups
  - kvm.live_migration.attributes.info_module
"""

EXAMPLES = r"""
- name: Stop here if db01 cannot move to hv2
  kvm.live_migration.preflight:
    name: db01
    dest_host: hv2
    transport: tls

- name: Check without failing, then show what would block it
  kvm.live_migration.preflight:
    name: db01
    dest_host: hv2
    fail_on_error: false
  register: preflight

- name: Show the checks that failed, with their fixes
  ansible.builtin.debug:
    msg: "{{ preflight.findings | community.general.json_query(\"[?status=='fail'].[check, message, fix]\") }}"
"""

RETURN = r"""
ok:
  description: Whether no check failed.
  returned: always
  type: bool
  sample: false
findings:
  description: One entry per check (storage and network have one per disk or interface).
  returned: always
  type: list
  elements: dict
  contains:
    check:
      description: The check's name.
      type: str
      sample: network
    status:
      description: V(ok), V(warn) or V(fail).
      type: str
      sample: fail
    message:
      description: What was found.
      type: str
      sample: "interface 52:54:00:6b:3c:58 (bridge br-prod): hv2 has no bridge br-prod; ..."
    fix:
      description: What to do; V(null) for V(ok).
      type: str
failed_checks:
  description: Names of the checks that failed.
  returned: always
  type: list
  elements: str
  sample: [network]
counts:
  description: Number of findings per status.
  returned: always
  type: dict
  sample: {"ok": 13, "warn": 0, "fail": 1}
already_migrated:
  description: Whether the guest already runs on the destination (nothing to check or move).
  returned: always
  type: bool
source:
  description: Host name of the source.
  returned: always
  type: str
destination:
  description: Host name of the destination; V(null) when it could not be reached.
  returned: always
  type: str
name:
  description: The guest.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import LIBVIRT_IMPORT_ERROR, Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.module_support import (
    PAIR_ARGUMENT_SPEC,
    PAIR_CONSTRAINTS,
    build_request,
    run_engine,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.preflight import Preflight
from ansible_collections.kvm.live_migration.plugins.module_utils.request import COPY_STORAGE, PreflightRequest

ARGUMENT_SPEC = {
    **PAIR_ARGUMENT_SPEC,
    "migrate_uri": {"type": "str"},
    "copy_storage": {"type": "str", "choices": list(COPY_STORAGE)},
    "migrate_disks": {"type": "list", "elements": "str"},
    "memory_margin_mib": {"type": "int", "default": 512},
    "fail_on_error": {"type": "bool", "default": True},
    "measure_dirty_rate": {"type": "bool", "default": False},
    "bandwidth": {"type": "int", "default": 0},
    "max_downtime_ms": {"type": "int", "default": 500},
    "convergence_threshold": {"type": "float", "default": 0.8},
    "allow_auto_converge": {"type": "bool", "default": True},
    "allow_post_copy": {"type": "bool", "default": False},
}


def run_preflight(params):
    request = build_request(PreflightRequest, params)
    with Hypervisor(params["source_uri"]) as source:
        return Preflight(source, request).run()


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, **PAIR_CONSTRAINTS)
    result = run_engine(module, lambda: run_preflight(module.params), LIBVIRT_IMPORT_ERROR)
    if not result.ok and module.params["fail_on_error"]:
        module.fail_json(msg=result.summary(), **result.as_dict())
    module.exit_json(changed=False, **result.as_dict())


if __name__ == "__main__":
    main()
