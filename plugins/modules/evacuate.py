#!/usr/bin/python
# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: evacuate
short_description: Empty a KVM hypervisor by live-migrating its guests to other hypervisors
version_added: 0.1.0
description:
  - Moves the guests of the hypervisor it runs on (or O(source_uri)) to the hypervisors in O(destinations), so the
    host can be taken out of service without stopping a guest.
  - Plans before anything moves. Each guest goes to a destination that passes M(kvm.live_migration.preflight) for it
    (host identity, transport and TLS, ports, versions, CPU, machine type, storage, networks, devices, name) and
    whose available memory, less O(memory_reserve_mib) and the guests already placed there, still holds it; among
    those, the one with the most memory left. Larger guests are placed first. In check mode the plan is all it does.
  - Live-migrates at most O(concurrency) guests at once and at most O(max_per_destination) into one destination,
    each under the convergence engine of M(kvm.live_migration.migrate) with its share of O(bandwidth). A guest whose
    migration failed and that runs on the source again is tried on another destination that takes it (O(retries)).
  - Guests that are defined but not running follow O(stopped); running guests no destination can take, or that
    failed on every destination tried, follow O(unmovable). Nothing is skipped silently - every guest has a report
    entry that says what happened and why.
  - Reads the source again at the end and fails when a guest still runs there that the policy did not allow to
    stay. The other guests are moved all the same.
  - Moves back what an evacuation moved when run on the host the guests went to, with O(destinations) the host they
    came from and O(guests) their names (the C(kvm.live_migration.return_guests) role does that from a saved
    report; the C(kvm.live_migration.evacuate) role runs this module with C(evacuate_*) variables, saves the report
    and hands it to AWX)..
author:
  - kvm.live_migration maintainers (@kvm-live-migration)
options:
  destinations:
    description:
      - Host names of the hypervisors that may take the guests, as the source's libvirtd reaches them over
        C(qemu+ssh://HOST/system).
    type: list
    elements: str
    required: true
  guests:
    description:
      - Names, UUIDs or shell patterns (V(web*)) of the guests to move. Every guest of the source when omitted;
        V([]) moves none (a selection that matched nothing).
      - A plain name that matches no guest is reported with status V(not_found), not as a failure, so a second run
        after every guest left is a no-op.
    type: list
    elements: str
  concurrency:
    description:
      - Migrations that run at once.
    type: int
    default: 2
  max_per_destination:
    description:
      - Migrations one destination receives at once. As many as O(concurrency) when omitted.
    type: int
  bandwidth:
    description:
      - Bandwidth of all the migrations together in MiB/s, split evenly among those that run at once (the smaller
        of O(concurrency) and the number of running guests). V(0) caps nothing.
    type: int
    default: 0
  memory_reserve_mib:
    description:
      - Memory in MiB each destination keeps free beyond the guests placed on it.
    type: int
    default: 512
  retries:
    description:
      - Other destinations a guest is tried on after its migration failed and left it running on the source (0 to 3).
      - A guest whose failure did not leave it provably on the source is never tried again.
    type: int
    default: 1
  stopped:
    description:
      - What happens to guests that are defined on the source but not running.
      - V(move) defines the guest on a destination that passes the checks a definition needs (host identity,
        transport, architecture, machine type, CPU, storage, networks, name) and undefines it on the source; its
        disks must be on storage both hosts share, which the storage check proves. A guest no destination takes, or
        whose move fails, stays defined on the source, reported V(left) with why.
      - V(leave) keeps every stopped guest on the source (reported V(left)).
      - V(fail) refuses to start while a stopped guest is defined on the source, before anything moves.
    type: str
    choices: [move, leave, fail]
    default: move
  unmovable:
    description:
      - What happens to running guests that no destination takes, or that failed on every destination tried.
      - V(fail) moves every other guest, then fails the task naming each guest left and why.
      - V(leave) leaves them running on the source (reported V(left)); the task succeeds.
      - V(shutdown) shuts them down cleanly (ACPI) within O(shutdown_timeout), never by force; a guest that does
        not stop in time still runs and fails the task.
    type: str
    choices: [fail, leave, shutdown]
    default: fail
  shutdown_timeout:
    description:
      - Seconds a guest may take to shut down under O(unmovable=shutdown).
    type: int
    default: 300
extends_documentation_fragment:
  - kvm.live_migration.libvirt
  - kvm.live_migration.pair.transport
  - kvm.live_migration.convergence
  - kvm.live_migration.progress
  - kvm.live_migration.attributes
  - kvm.live_migration.attributes.actiongroups
attributes:
  check_mode:
    support: full
    details:
      - Reads both sides, runs every preflight and returns the plan (RV(evacuation.plan), and each guest's
        C(would_*) status), moving nothing.
  diff_mode:
    support: none
seealso:
  - module: kvm.live_migration.migrate
  - module: kvm.live_migration.preflight
"""

EXAMPLES = r"""
- name: Empty hv1 onto hv2 and hv3, two guests at a time, 2 GiB/s in total
  kvm.live_migration.evacuate:
    destinations: [hv2.example.com, hv3.example.com]
    concurrency: 2
    bandwidth: 2048
  register: evacuated

- name: Show what happened to each guest
  ansible.builtin.debug:
    msg: "{{ evacuated.evacuation.summary }}"

- name: Only the web tier, leaving what cannot move where it is
  kvm.live_migration.evacuate:
    destinations: [hv2.example.com]
    guests: ["web*"]
    unmovable: leave
"""

RETURN = r"""
evacuation:
  description: What the evacuation planned and did.
  returned: always
  type: dict
  contains:
    source:
      description: Host name of the hypervisor being emptied.
      type: str
      sample: hv1
    ok:
      description: Whether every guest went as the policy says and none runs on the source that may not.
      type: bool
      sample: true
    summary:
      description: One line, how many guests ended how, and each guest left or failed with why.
      type: str
      sample: "hv1: 3 migrated, 1 moved"
    report:
      description:
        - One entry per guest, in the order they started.
        - C(status) is V(migrated) (live, now running on C(to)), V(moved) (a stopped guest's definition), V(left)
          (stays on the source, as the policy allows), V(shut_down), V(failed), V(not_found), or in check mode
          V(would_migrate), V(would_move), V(would_leave), V(would_fail), V(would_be_left), V(would_shut_down).
        - C(from), C(to) (the last destination tried), C(owner) (where it runs or is defined at the end), C(was)
          (its state before), C(attempts), C(tried), C(time_ms) and C(downtime_ms) (QEMU's, of the last attempt),
          C(strategy), C(why), C(started_at) and C(ended_at) (UTC), C(refusals) (destination -> reasons, for a
          guest no destination takes), C(warnings) (what its completed migration warned about, as
          RV(evacuation.warnings)).
      type: list
      elements: dict
      sample:
        - {"name": "web01", "from": "hv1", "to": "hv2", "status": "migrated", "attempts": 1, "tried": ["hv2"],
           "time_ms": 7412, "downtime_ms": 31, "strategy": "precopy", "owner": "hv2", "was": "running",
           "why": "precopy in 7412 ms, 5 passes, downtime 31 ms", "started_at": "2026-12-02T03:10:04.120Z",
           "ended_at": "2026-12-02T03:10:13.020Z", "refusals": null, "uuid": "8f0d...", "hosts": null,
           "warnings": []}
    warnings:
      description:
        - What the migrations that moved guests warned about, each prefixed with the guest's name; the module also
          shows each as a warning. Today that is a measured stop that outlasted O(max_downtime_ms) (the migration's
          V(downtime_over_budget) action); the guest moved, but paused longer than the budget.
      type: list
      elements: str
      sample: ["web01: the guest was paused 503 ms, over max_downtime_ms=500: ..."]
    guests:
      description: The same entries keyed by guest name (what C(set_stats) hands to AWX).
      type: dict
    plan:
      description: >-
        The plan made before anything moved: C(placements) (name, to, memory_mib), C(refused) (guest -> destination
        -> reasons) and C(memory_left_mib) (destination -> MiB left after the plan).
      type: dict
    remaining:
      description: Guests running on the source at the end that the policy did not allow to stay.
      type: list
      elements: str
      sample: []
    allowed_to_stay:
      description: Guests running on the source at the end as the policy allows (O(unmovable=leave)).
      type: list
      elements: str
      sample: []
    source_unread:
      description:
        - Why the source could not be read after the moves (its connection died); V(null) when it was. The report
          of what moved is kept, and the evacuation fails, since which guests still run there is unknown.
      type: str
      sample: null
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import LIBVIRT_IMPORT_ERROR, Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.evacuation import (
    STOPPED_POLICIES,
    UNMOVABLE_POLICIES,
    Evacuation,
    EvacuationHooks,
    EvacuationRequest,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.module_support import (
    CONVERGENCE_ARGUMENT_SPEC,
    PROGRESS_ARGUMENT_SPEC,
    TRANSPORT_ARGUMENT_SPEC,
    build_request,
    run_engine,
    validate_progress,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.progress import ProgressBoard
from ansible_collections.kvm.live_migration.plugins.module_utils.request import MigrationRequest, validate_host_name

ARGUMENT_SPEC = {
    "source_uri": {"type": "str", "default": "qemu:///system"},
    **TRANSPORT_ARGUMENT_SPEC,
    **CONVERGENCE_ARGUMENT_SPEC,
    **PROGRESS_ARGUMENT_SPEC,
    "destinations": {"type": "list", "elements": "str", "required": True},
    "guests": {"type": "list", "elements": "str"},
    "concurrency": {"type": "int", "default": 2},
    "max_per_destination": {"type": "int"},
    "bandwidth": {"type": "int", "default": 0},
    "memory_reserve_mib": {"type": "int", "default": 512},
    "retries": {"type": "int", "default": 1},
    "stopped": {"type": "str", "choices": list(STOPPED_POLICIES), "default": "move"},
    "unmovable": {"type": "str", "choices": list(UNMOVABLE_POLICIES), "default": "fail"},
    "shutdown_timeout": {"type": "int", "default": 300},
}


def build_evacuation(params):
    for host in params["destinations"]:
        validate_host_name(host, "destinations")
    template = {**params, "name": "-", "dest_uri": None, "dest_host": (params["destinations"] or ["-"])[0]}
    return EvacuationRequest(
        destinations=tuple(params["destinations"]), migration=build_request(MigrationRequest, template),
        guests=None if params["guests"] is None else tuple(params["guests"]), concurrency=params["concurrency"],
        max_per_destination=params["max_per_destination"], bandwidth_mib=params["bandwidth"],
        memory_reserve_mib=params["memory_reserve_mib"], retries=params["retries"], stopped=params["stopped"],
        unmovable=params["unmovable"], shutdown_timeout_s=params["shutdown_timeout"])


def run_evacuation(params, check_mode, board):
    validate_progress(params)
    request = build_evacuation(params)  # a bad option is reported before any connection
    try:
        with Hypervisor(params["source_uri"]) as source:
            evacuation = Evacuation(source, request, params["source_uri"], EvacuationHooks(board=board))
            return evacuation.run(check_mode=check_mode)
    finally:
        board.remove()


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    board = ProgressBoard(module.params["progress_path"])
    result = run_engine(module, lambda: run_evacuation(module.params, module.check_mode, board),
                        LIBVIRT_IMPORT_ERROR)
    evacuation = result.as_dict()
    for warning in [*result.warnings, *filter(None, [board.write_error])]:
        module.warn(warning)
    if result.ok:
        module.exit_json(changed=result.changed, evacuation=evacuation)
    module.fail_json(msg=f"the evacuation of {result.source} is incomplete: {evacuation['summary']}",
                     changed=result.changed, evacuation=evacuation)


if __name__ == "__main__":
    main()
