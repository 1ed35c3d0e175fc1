#!/usr/bin/python
# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: migrate
short_description: Live-migrate a running KVM/QEMU guest to another libvirt hypervisor
version_added: 0.1.0
description:
  - Moves one running guest from the source hypervisor to a destination hypervisor while it keeps running,
    with libvirt's peer-to-peer live migration driven by the source libvirtd.
  - Watches every pre-copy pass (remaining memory, dirty rate, transfer rate, expected downtime) and reports a
    per-pass timeline.
  - Aborts the migration when it exceeds its time or data budget; an abort is bounded in time and the guest is
    left running on the source.
  - After every outcome it checks both hypervisors and reports which one runs the guest. It never leaves the guest
    running on both or on neither.
  - A guest that already runs on the destination and not on the source is reported as unchanged.
  - Run it on the source hypervisor (the default O(source_uri) is the local system daemon), or anywhere with a remote
    O(source_uri).
author:
  - kvm.live_migration maintainers (@kvm-live-migration)
options:
  name:
    description:
      - Name or UUID of the guest to migrate.
    type: str
    required: true
  dest_uri:
    description:
      - libvirt URI of the destination hypervisor, as the source libvirtd reaches it (peer-to-peer).
      - Required unless O(dest_host) is given.
    type: str
  dest_host:
    description:
      - Host name of the destination hypervisor. Shorthand for O(dest_uri=qemu+ssh://DEST_HOST/system).
      - The source's libvirtd (usually root) must trust the destination's SSH host key and log in with a key.
    type: str
  transport:
    description:
      - How the guest's memory travels.
      - V(tls) uses QEMU's native TLS; both hosts need libvirt's migration certificates.
      - V(ssh) tunnels the data through the libvirt connection (O(dest_uri) must be C(qemu+ssh://)); slower, and it
        cannot be combined with post-copy or parallel connections.
      - V(tcp) sends the data unencrypted and is refused unless O(allow_insecure=true).
    type: str
    choices: [tls, ssh, tcp]
    default: tls
  allow_insecure:
    description:
      - Permit O(transport=tcp), which sends guest memory across the network in the clear.
      - Only for a trusted, isolated migration network.
    type: bool
    default: false
  bandwidth:
    description:
      - Bandwidth cap of the migration in MiB/s. V(0) leaves libvirt's default.
    type: int
    default: 0
  max_downtime_ms:
    description:
      - The longest pause of the guest accepted for the final switch-over, in milliseconds.
      - Set on the guest before the migration starts.
    type: int
    default: 500
  persistent:
    description:
      - Define the guest persistently on the destination.
    type: bool
    default: true
  undefine_source:
    description:
      - Remove the guest's definition from the source after a successful migration.
    type: bool
    default: true
  migrate_uri:
    description:
      - Where the source's QEMU sends the data, for example C(tcp://10.0.0.2) on a dedicated migration network.
      - By default the destination's host name is used, which the source must resolve.
    type: str
  listen_address:
    description:
      - Address the destination's QEMU listens on for the incoming migration.
    type: str
  timeout:
    description:
      - Seconds the migration may take before it is aborted.
      - By default 150 s per GiB of guest memory, at least 60 s.
    type: int
  max_data_factor:
    description:
      - Abort when the bytes sent exceed this multiple of the guest's memory.
    type: float
    default: 5.0
  poll_interval:
    description:
      - Seconds between two readings of the migration's statistics (0.05 to 1).
    type: float
    default: 0.5
extends_documentation_fragment:
  - kvm.live_migration.libvirt
  - kvm.live_migration.attributes
  - kvm.live_migration.attributes.actiongroups
attributes:
  check_mode:
    support: full
    details:
      - Validates the options, connects to both hypervisors and reports whether the guest would move, moving nothing.
  diff_mode:
    support: none
notes:
  - The result's O(max_downtime_ms) budget applies to the switch-over; QEMU measures the real downtime, reported as
    RV(migration.downtime_ms).
seealso:
  - name: libvirt migration guide
    description: Transports, URIs and flags of libvirt live migration.
    link: https://libvirt.org/migration.html
"""

EXAMPLES = r"""
- name: Move web01 from this hypervisor to hv2 over QEMU native TLS
  kvm.live_migration.migrate:
    name: web01
    dest_host: hv2.example.com
    max_downtime_ms: 300
    bandwidth: 1024
  register: moved

- name: Use a dedicated, isolated migration network without encryption
  kvm.live_migration.migrate:
    name: db01
    dest_uri: qemu+ssh://root@hv3.example.com/system
    migrate_uri: tcp://192.0.2.13
    transport: tcp
    allow_insecure: true

- name: Run from the controller against two remote hypervisors
  kvm.live_migration.migrate:
    name: batch07
    source_uri: qemu+ssh://root@hv1.example.com/system
    dest_uri: qemu+ssh://root@hv2.example.com/system
    transport: ssh
  delegate_to: localhost

- name: Show what happened
  ansible.builtin.debug:
    msg: "{{ moved.migration | kvm.live_migration.migration_summary }}"
"""

RETURN = r"""
migration:
  description: What the migration did and where the guest runs now.
  returned: always
  type: dict
  contains:
    status:
      description: C(completed), C(aborted), C(failed), C(already_migrated), or C(would_migrate) in check mode.
      type: str
      sample: completed
    owner:
      description: Host name of the hypervisor that runs the guest at the end, checked on both sides.
      type: str
      sample: hv2
    source:
      description: Host name of the source hypervisor.
      type: str
      sample: hv1
    destination:
      description: Host name of the destination hypervisor.
      type: str
      sample: hv2
    strategy:
      description: How the migration converged; C(precopy) for iterative pre-copy.
      type: str
      sample: precopy
    actions:
      description: What the module did to the running migration, in order (pass, time_ms, what, why, helped).
      type: list
      elements: dict
      sample:
        - {"pass": 7, "time_ms": 120500, "what": "abort", "helped": null,
           "why": "the migration ran longer than its timeout of 120 s"}
    total_time_ms:
      description: Time from start to switch-over (or to the abort), in milliseconds.
      type: int
      sample: 7412
    downtime_ms:
      description: Time the guest was paused for the switch-over, measured by QEMU, in milliseconds.
      type: int
      sample: 31
    downtime_net_ms:
      description: Downtime without the time the hosts needed to hand over control, in milliseconds.
      type: int
      sample: 29
    setup_time_ms:
      description: Time QEMU spent setting the migration up, in milliseconds.
      type: int
      sample: 2
    data_sent_bytes:
      description: Bytes the source sent.
      type: int
      sample: 480247808
    data_total_bytes:
      description: Bytes of guest memory (and disks) to migrate.
      type: int
      sample: 537264128
    passes:
      description: Number of pre-copy passes over guest memory.
      type: int
      sample: 3
    final_ratio:
      description: Convergence ratio (dirty rate / transfer rate) of the last pass that measured one.
      type: float
      sample: 0.12
    prediction:
      description: Convergence prediction made before the migration, when one was made.
      type: dict
      sample: null
    timeline:
      description: One entry per pass.
      type: list
      elements: dict
      sample: [{"pass": 1, "time_ms": 500, "remaining_bytes": 400000000, "processed_bytes": 33554432,
                "dirty_rate_bps": 0, "transfer_rate_bps": 67108864, "ratio": null, "expected_downtime_ms": 500,
                "throttle_pct": 0, "downtime_limit_ms": 500}]
    error:
      description: The libvirt error that ended a failed migration (message, fix, code, code_name).
      type: dict
      sample: null
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import LIBVIRT_IMPORT_ERROR, Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.migration import (
    TRANSPORTS,
    MigrationRequest,
    MigrationRunner,
    validate_request,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.module_support import run_engine

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "source_uri": {"type": "str", "default": "qemu:///system"},
    "dest_uri": {"type": "str"},
    "dest_host": {"type": "str"},
    "transport": {"type": "str", "choices": list(TRANSPORTS), "default": "tls"},
    "allow_insecure": {"type": "bool", "default": False},
    "bandwidth": {"type": "int", "default": 0},
    "max_downtime_ms": {"type": "int", "default": 500},
    "persistent": {"type": "bool", "default": True},
    "undefine_source": {"type": "bool", "default": True},
    "migrate_uri": {"type": "str"},
    "listen_address": {"type": "str"},
    "timeout": {"type": "int"},
    "max_data_factor": {"type": "float", "default": 5.0},
    "poll_interval": {"type": "float", "default": 0.5},
}


def build_request(params):
    dest_uri = params["dest_uri"] or f"qemu+ssh://{params['dest_host']}/system"
    return MigrationRequest(
        name=params["name"],
        dest_uri=dest_uri,
        transport=params["transport"],
        allow_insecure=params["allow_insecure"],
        bandwidth_mib=params["bandwidth"],
        max_downtime_ms=params["max_downtime_ms"],
        persistent=params["persistent"],
        undefine_source=params["undefine_source"],
        migrate_uri=params["migrate_uri"],
        listen_address=params["listen_address"],
        timeout_s=params["timeout"],
        max_data_factor=params["max_data_factor"],
        poll_interval_s=params["poll_interval"],
    )


def run_migration(params, check_mode):
    request = validate_request(build_request(params))  # a bad option is reported before any connection
    with (Hypervisor(params["source_uri"]) as source, Hypervisor(params["source_uri"]) as monitor,
          Hypervisor(request.dest_uri) as destination):
        return MigrationRunner(source, monitor, destination, request).run(check_mode=check_mode)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[("dest_uri", "dest_host")],
        mutually_exclusive=[("dest_uri", "dest_host")],
        supports_check_mode=True,
    )
    result = run_engine(module, lambda: run_migration(module.params, module.check_mode), LIBVIRT_IMPORT_ERROR)
    migration = result.as_dict()
    if result.status in ("completed", "already_migrated", "would_migrate"):
        module.exit_json(changed=result.changed, migration=migration)
    module.fail_json(msg=failure_message(result), changed=True, migration=migration)


def failure_message(result):
    reason = (result.error or {}).get("message") or next(
        (action["why"] for action in result.actions if action["what"] == "abort"), "the migration did not complete")
    return f"migration of the guest from {result.source} to {result.destination} {result.status}: {reason}; " \
           f"the guest runs on {result.owner}"


if __name__ == "__main__":
    main()
