# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """How each migration is steered and bounded (migrate, and every migration of evacuate).

    Mirrors ``module_utils/module_support.py``'s CONVERGENCE_ARGUMENT_SPEC; ``ansible-test sanity``
    (validate-modules) checks that they agree. The bandwidth is documented by each module: migrate's caps one
    migration, evacuate's is split among the migrations that run at once.
    """

    DOCUMENTATION = r"""
options:
  max_downtime_ms:
    description:
      - The longest pause of the guest accepted for the final switch-over, in milliseconds (the downtime budget).
      - The limit given to QEMU starts at 100 ms (or lower budgets) and is raised only to what the measured
        remaining data needs, at most to the budget minus a reserve (15 %, at least 50 ms) for the device state and
        the hand-over that QEMU's limit does not cover.
    type: int
    default: 500
  convergence_threshold:
    description:
      - A pass whose convergence ratio (dirty rate / transfer rate) is at least this value does not converge.
      - Between 0 and 1.
    type: float
    default: 0.8
  stall_passes:
    description:
      - Non-converging passes in a row that trigger the next escalation step, and passes to wait after a step
        before judging whether it helped.
    type: int
    default: 2
  allow_auto_converge:
    description:
      - Permit auto-converge, QEMU's throttling of the guest's vCPUs while it dirties memory faster than it is sent.
      - libvirt cannot enable it after the start, so it is armed from the start. QEMU throttles only a guest that
        dirties more than half of what is sent, in two one-second looks in a row.
      - At throttle t QEMU stops a vCPU for t / (1 - t) x 10 ms after each 10 ms of running, and under TCG the
        switch-over can include one such hold. So the throttle starts at the strongest level whose hold fits beside
        the starting downtime limit within O(max_downtime_ms) less its reserve (a 500 ms budget gives 97 %, holds of
        323 ms), or higher if the measured dirty rate needs it, then steps to 99 %. While QEMU throttles, the
        downtime limit leaves room for one hold. A short strong throttle costs the guest less than libvirt's default
        of 20 % + 10 % per step.
    type: bool
    default: true
  allow_post_copy:
    description:
      - Permit post-copy. The guest then runs on the destination, which fetches the memory it still lacks from the
        source. A network failure during post-copy leaves no complete copy on either host until it is recovered,
        so it is off by default.
      - Needs C(vm.unprivileged_userfaultfd=1) on the destination when QEMU runs as a non-root user; the module
        detects a refusal and goes on without post-copy, recording why.
      - Not available with O(transport=ssh).
    type: bool
    default: false
  post_copy_recovery_timeout:
    description:
      - Seconds to wait for a post-copy that broke after the switch (the link or the destination failed) to complete.
      - After a cut link libvirt calls the job failed while QEMU's stream survives; once the link is back the stream
        carries on and libvirt finishes the migration by itself, which the module waits for, touching nothing. A
        stream that QEMU gave up itself is resumed with libvirt's post-copy recovery (C(VIR_MIGRATE_POSTCOPY_RESUME)),
        every 5 s, once the destination answers and shows the guest C(postcopy_failed).
      - Neither host holds all of the guest's memory meanwhile, so the source's copy is never resumed; if the
        recovery does not succeed in time, the task fails with both hosts' states. Running the same task again
        waits for it or resumes it; the failure gives the command too.
      - V(0) tries nothing and fails at once.
      - Needs libvirt 8.5 or later on both hosts; libvirt 11.3.0 crashes on every post-copy resume, so no resume is
        sent when a host runs it (the wait for QEMU's own stream still is).
    type: int
    default: 300
  progress_timeout:
    description:
      - Seconds a pre-copy migration may go without progress before it is aborted, the guest staying on the source.
        Progress is a new low of the data left at the start of a pass, at least 5 % below the last (KubeVirt's
        progress timeout and default, with a margin for the few % by which a stuck migration's passes jitter).
      - When nothing permitted is left to make a migration converge, the strongest measures stay in force (the
        downtime limit, QEMU's throttle) and every pass is a chance to finish within O(max_downtime_ms), until this
        or O(timeout) or O(max_data_factor) ends it. The action C(wait) records it, with why (for example a guest
        that a throttle at 99 % cannot slow down).
    type: int
    default: 150
  measure_dirty_rate:
    description:
      - Measure the guest's dirty rate for one second before moving (libvirt's dirty-rate calculation) to predict
        convergence and choose the starting strategy and throttle. Reported as the
        migration's C(prediction).
      - Skipped, with a recorded reason, where libvirt or QEMU cannot measure it.
    type: bool
    default: true
  parallel_connections:
    description:
      - Send memory over this many connections (multifd). Not available with O(transport=ssh).
    type: int
  compression:
    description:
      - Compression methods for the memory stream.
    type: list
    elements: str
    choices: [xbzrle, mt, zlib, zstd]
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
    default: 0.25
"""
