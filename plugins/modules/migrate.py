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
  - Steers a migration that does not converge. A pass whose convergence ratio (dirty rate / transfer rate) is at
    least O(convergence_threshold) does not converge; after O(stall_passes) such passes in a row the module climbs
    one rung of a ladder and checks O(stall_passes) passes later whether the ratio fell. The rungs, each only when
    permitted and supported by both hosts, are raise the downtime limit to exactly what the remaining data needs
    (within O(max_downtime_ms)), auto-converge (QEMU throttles the guest's vCPUs), post-copy, and wait (with
    nothing permitted left, the strongest measures stay in force and each pass may still finish within the budget).
  - With post-copy permitted, a guest whose dirty rate measured before the start alone reaches O(bandwidth) (no
    pre-copy pass could shrink what is left) starts post-copy at once. Any other guest runs its first pass in
    pre-copy, at full speed on the source; from the second pass on, a pass whose measured ratio is 0.2 or more
    (pre-copy of what is left would take 1.25 times as long as post-copy of it; the larger of the dirty rate's
    ratio and what the pass left of what it began with) and whose data no stop within O(max_downtime_ms) sends
    switches to post-copy, before any throttle. Only what the guest dirtied is then left
    for post-copy, the window in which a failure would lose the guest.
  - Aborts a pre-copy migration whose data left at the start of a pass reaches no new low for O(progress_timeout)
    seconds, the guest staying on the source.
  - Before moving, measures the guest's dirty rate (O(measure_dirty_rate)), predicts whether pre-copy converges at
    O(bandwidth), reports the expected strategy and sizes auto-converge's throttle from it.
  - Aborts the migration when it exceeds its time or data budget; an abort is bounded in time and the guest is
    left running on the source.
  - After every outcome it checks both hypervisors and reports which one runs the guest. It never leaves the guest
    running on both or on neither.
  - A guest that already runs on the destination and not on the source is reported as unchanged.
  - Reads both hosts first and refuses to start while a migration job of the guest is active (another run, or a run
    whose controller died) or a post-copy of it is under way, naming how to watch or abort it.
  - A post-copy that breaks after the switch (a cut link, a host that stops answering) is waited for within
    O(post_copy_recovery_timeout). After a cut link QEMU's stream survives and, once the link is back, completes;
    libvirt then finishes the migration by itself. A stream QEMU gave up itself is resumed with libvirt's post-copy
    recovery once the destination answers and shows the break. The source's copy, out of date then, is never
    resumed. If the budget ends first, the task fails; run it again once the hosts reach each other, and the re-run
    waits for or resumes the broken post-copy instead of starting anything (C(would_resume) in check mode).
    libvirt 11.3.0 cannot resume a post-copy (its daemon crashes); the module says so and sends no resume there.
  - Every connection has keepalive, and the time budget holds by the clock even when no statistics come. See the
    collection's docs/reliability.md.
  - Run it on the source hypervisor (the default O(source_uri) is the local system daemon), or anywhere with a remote
    O(source_uri).
author:
  - kvm.live_migration maintainers (@kvm-live-migration)
options:
  bandwidth:
    description:
      - Bandwidth cap of the migration in MiB/s. V(0) leaves libvirt's default.
    type: int
    default: 0
  copy_storage:
    description:
      - Copy the guest's disks too, for hosts without shared storage.
      - V(all) copies whole disks; V(incremental) copies only the top images whose backing files both hosts share.
    type: str
    choices: [all, incremental]
  migrate_disks:
    description:
      - Target names (for example V(vda)) of the disks to copy with O(copy_storage); all writable disks by default.
    type: list
    elements: str
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
extends_documentation_fragment:
  - kvm.live_migration.libvirt
  - kvm.live_migration.pair
  - kvm.live_migration.pair.transport
  - kvm.live_migration.convergence
  - kvm.live_migration.progress
  - kvm.live_migration.attributes
  - kvm.live_migration.attributes.actiongroups
attributes:
  check_mode:
    support: full
    details:
      - Validates the options, connects to both hypervisors, measures the dirty rate and predicts the outcome, and
        reports whether the guest would move and with which strategy, moving nothing.
  diff_mode:
    support: none
notes:
  - The result's O(max_downtime_ms) budget applies to the switch-over; QEMU measures the real downtime, reported as
    RV(migration.downtime_ms). Stopping the vCPUs, device state and the hosts' hand-over come on top of the memory
    QEMU's limit covers, and under TCG a stop can include one hold of QEMU's throttle; the engine keeps room for them
    within the budget. A stop that still outlasted it is recorded as V(downtime_over_budget), with what was measured,
    and warned about.
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

- name: Evacuate a write-heavy database within a 300 ms pause, post-copy permitted
  kvm.live_migration.migrate:
    name: db02
    dest_host: hv2.example.com
    bandwidth: 2048
    max_downtime_ms: 300
    allow_post_copy: true
  async: 3600
  poll: 0
  register: db02_job

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
      description: >-
        C(completed), C(aborted), C(failed), C(already_migrated), or in check mode C(would_migrate) (or
        C(would_resume), when a post-copy of the guest broke before and a run would resume it).
      type: str
      sample: completed
    owner:
      description:
        - Host name of the hypervisor that runs the guest at the end, checked on both sides.
        - C(unknown) when the module could not leave the guest running on exactly one host; then the task fails
          with what to do, and RV(migration.hosts) says what each host showed.
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
      description:
        - How the migration converged. C(precopy) for iterative pre-copy alone, C(auto_converge) when QEMU throttled
          the guest, C(post_copy) when it switched to post-copy.
        - In check mode, the strategy it would start with.
      type: str
      sample: precopy
    actions:
      description:
        - What the module did, in order, and why; the steps the policy chose are judged afterwards (O(stall_passes)
          passes later).
      type: list
      elements: dict
      sample:
        - {"pass": 3, "time_ms": 13200, "what": "auto_converge", "value": 85, "helped": true,
           "why": "ratio 0.91 >= 0.8 for 2 passes; QEMU throttles the guest at 85 %"}
      contains:
        pass:
          description: The pre-copy pass during which it happened (0 before the job started).
          type: int
          sample: 3
        time_ms:
          description: Milliseconds since the start of the run.
          type: int
          sample: 13200
        what:
          description:
            - The policy's steps - V(set_downtime), V(auto_converge), V(post_copy), V(wait) (nothing permitted is
              left; the measures in force stay and the migration waits for a pass that fits the budget), V(abort).
            - What the module did around them - V(abort_retry), V(abort_timeout), V(job_outlived_its_call) (the
              migration call returned an error, the client's connection having broken, while libvirt still ran the
              job, which was then watched on to its end), V(completed_unheard) (that call's connection broke and
              libvirt shows the guest running on the destination only), V(statistics_stalled) (libvirt did not answer
              a statistics call in 45 s, waiting on a hung QEMU monitor; the budgets hold by the clock and an abort
              call is bounded the same way), V(resume), V(pause_both) (both hosts
              ran the guest after a failed migration and nothing proved which copy is current), V(measure_failed),
              V(measure_skipped), V(post_copy_unavailable), V(auto_converge_unavailable),
              V(post_copy_recovery_unavailable) (a permission or recovery these hosts cannot honour, dropped),
              V(post_copy_failed), V(post_copy_refused) (the destination lacked the memory), V(post_copy_recovered),
              V(post_copy_recovery_failed), V(post_copy_found_broken), V(destination_unreachable),
              V(destination_unread_after_switch_over) (the source resumed after the switch-over began and the
              destination did not answer, so it may run a copy too and the owner is V(unknown)),
              V(source_unreachable), V(set_downtime_failed), V(budget_exceeded), V(downtime_over_budget) (the
              completed migration's measured stop outlasted O(max_downtime_ms); also a warning).
          type: str
          sample: auto_converge
        why:
          description: The measured reason, with the numbers it rests on.
          type: str
          sample: "ratio 0.91 >= 0.8 for 2 passes; QEMU throttles the guest at 85 %"
        value:
          description: The new downtime limit in ms (V(set_downtime)), the throttle in % (V(auto_converge)), else
            V(null).
          type: int
          sample: 85
        helped:
          description: Whether the ratio fell (or the migration ended) O(stall_passes) passes after the step; V(null)
            for actions that are not judged.
          type: bool
          sample: true
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
      description: The prediction made before the migration, next to which the outcome is reported.
      type: dict
      sample: {"dirty_rate_bps": 134217728, "bandwidth_bps": 67108864, "ratio": 2.0, "first_pass_s": 8.0,
               "precopy_s": null, "converges": false, "strategy": "post_copy", "throttle_initial_pct": 90,
               "throttle_step_pct": 9, "measure_time_ms": 1100,
               "why": "pre-copy would finish never (ratio 2.00); post-copy sends each page about once, about 8 s"}
      contains:
        dirty_rate_bps:
          description: The guest's dirty rate measured before the start, in bytes/s; V(null) when not measured.
          type: int
          sample: 134217728
        bandwidth_bps:
          description: The bandwidth cap in bytes/s; V(null) without a cap.
          type: int
          sample: 67108864
        ratio:
          description: Dirty rate / bandwidth; V(null) when either is unknown.
          type: float
          sample: 2.0
        first_pass_s:
          description: One copy of the guest's memory at the bandwidth, in seconds.
          type: float
          sample: 8.0
        precopy_s:
          description: How long pre-copy alone would take, in seconds; V(null) when it never converges.
          type: float
          sample: null
        converges:
          description: Whether the ratio is below O(convergence_threshold); V(null) when unknown.
          type: bool
          sample: false
        strategy:
          description: The strategy it starts with - V(precopy), V(auto_converge) or V(post_copy).
          type: str
          sample: post_copy
        why:
          description: Why that strategy, with the numbers.
          type: str
          sample: "pre-copy would finish never (ratio 2.00); post-copy sends each page about once, about 8 s"
        throttle_initial_pct:
          description: The throttle auto-converge starts at (the strongest whose stops fit O(max_downtime_ms));
            V(null) when auto-converge is not permitted.
          type: int
          sample: 90
        throttle_step_pct:
          description: Auto-converge's step; V(null) when auto-converge is not permitted.
          type: int
          sample: 9
        measure_time_ms:
          description: How long measuring the dirty rate took, in ms.
          type: int
          sample: 1100
    timeline:
      description:
        - One entry per pass, from pass 1 to RV(migration.passes), as read at the pass's last poll.
        - A pass that began and ended between two polls has RV(migration.timeline[].sampled=false), the time its
          MIGRATION_ITERATION event came (or V(null)), and V(null) for what was not measured.
      type: list
      elements: dict
      sample: [{"pass": 1, "time_ms": 500, "remaining_bytes": 400000000, "processed_bytes": 33554432,
                "dirty_rate_bps": 0, "transfer_rate_bps": 67108864, "ratio": null, "expected_downtime_ms": 500,
                "throttle_pct": 0, "downtime_limit_ms": 500, "sampled": true}]
      contains:
        pass:
          description: The pass number (libvirt's C(memory_iteration)).
          type: int
          sample: 1
        time_ms:
          description: Milliseconds since the job started.
          type: int
          sample: 500
        remaining_bytes:
          description: Memory QEMU still had to send at that poll.
          type: int
          sample: 400000000
        processed_bytes:
          description: Bytes sent so far.
          type: int
          sample: 33554432
        dirty_rate_bps:
          description: The guest's dirty rate QEMU measured, in bytes/s.
          type: int
          sample: 0
        transfer_rate_bps:
          description: The transfer rate QEMU measured, in bytes/s.
          type: int
          sample: 67108864
        ratio:
          description: Dirty rate / transfer rate (the convergence ratio); V(null) in pass 1.
          type: float
          sample: null
        expected_downtime_ms:
          description: How long QEMU expects the switch-over's stop to last if it happened now, in ms.
          type: int
          sample: 500
        throttle_pct:
          description: QEMU's auto-converge throttle in force, in %.
          type: int
          sample: 0
        downtime_limit_ms:
          description: The downtime limit in force, in ms.
          type: int
          sample: 500
        sampled:
          description: Whether a poll measured the pass (V(false) when it went by between two polls).
          type: bool
          sample: true
    error:
      description: The libvirt error that ended a failed migration; V(null) otherwise.
      type: dict
      sample: null
      contains:
        message:
          description: What failed, with libvirt's message.
          type: str
        fix:
          description: What to do about it (docs/troubleshooting.md lists every message).
          type: str
        code:
          description: libvirt's error code, when the failure came from libvirt.
          type: int
        code_name:
          description: The name of libvirt's error code (C(VIR_ERR_...)).
          type: str
    hosts:
      description: The guest's state on each host at the module's last look.
      type: dict
      sample: {"source": "absent", "destination": "running"}
      contains:
        source:
          description:
            - The guest's state on the source - V(running), V(paused), V(shutoff), ..., V(absent), or V(unreachable)
              when the host did not answer, with libvirt's reason when it tells of a migration
              (V(paused (postcopy_failed)), V(paused (migration))).
          type: str
        destination:
          description: The guest's state on the destination, in the same terms.
          type: str
    transport:
      description: How the guest's memory travelled - V(tls) (QEMU's TLS), V(ssh) (tunnelled through libvirt's SSH
        connection) or V(tcp) (clear text).
      type: str
      sample: tls
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import LIBVIRT_IMPORT_ERROR
from ansible_collections.kvm.live_migration.plugins.module_utils.migration import migrate_guest
from ansible_collections.kvm.live_migration.plugins.module_utils.module_support import (
    CONVERGENCE_ARGUMENT_SPEC,
    PAIR_ARGUMENT_SPEC,
    PAIR_CONSTRAINTS,
    PROGRESS_ARGUMENT_SPEC,
    build_request,
    run_engine,
    validate_progress,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.progress import ProgressBoard
from ansible_collections.kvm.live_migration.plugins.module_utils.request import COPY_STORAGE, MigrationRequest
from ansible_collections.kvm.live_migration.plugins.module_utils.result import warnings_of

ARGUMENT_SPEC = {
    **PAIR_ARGUMENT_SPEC,
    **CONVERGENCE_ARGUMENT_SPEC,
    **PROGRESS_ARGUMENT_SPEC,
    "bandwidth": {"type": "int", "default": 0},
    "persistent": {"type": "bool", "default": True},
    "undefine_source": {"type": "bool", "default": True},
    "migrate_uri": {"type": "str"},
    "listen_address": {"type": "str"},
    "copy_storage": {"type": "str", "choices": list(COPY_STORAGE)},
    "migrate_disks": {"type": "list", "elements": "str"},
}


def run_migration(params, check_mode, board):
    validate_progress(params)
    request = build_request(MigrationRequest, params)
    board.expect(1)
    try:
        return migrate_guest(params["source_uri"], request, check_mode,
                             on_progress=lambda fields: board.update(request.name, state="migrating",
                                                                     destination=params["dest_host"] or
                                                                     request.dest_uri, **fields))
    finally:
        board.remove()


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, **PAIR_CONSTRAINTS)
    board = ProgressBoard(module.params["progress_path"])
    result = run_engine(module, lambda: run_migration(module.params, module.check_mode, board), LIBVIRT_IMPORT_ERROR)
    migration = result.as_dict()
    for warning in [*warnings_of(result.actions), *filter(None, [board.write_error])]:
        module.warn(warning)
    if result.status in ("completed", "already_migrated", "would_migrate", "would_resume"):
        module.exit_json(changed=result.changed, migration=migration)
    module.fail_json(msg=failure_message(result), changed=True, migration=migration)


def failure_message(result):
    reason = (result.error or {}).get("message") or next(
        (action["why"] for action in result.actions if action["what"] == "abort"), "the migration did not complete")
    return f"migration of the guest from {result.source} to {result.destination} {result.status}: {reason}; " \
           f"the guest runs on {result.owner}"


if __name__ == "__main__":
    main()
