# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading a guest's jobs from libvirt: the dirty-rate measurement, the live job, completed statistics.

``jobstats`` turns what is read here into samples; nothing here steers or migrates.
"""

from __future__ import annotations

import threading

from ansible_collections.kvm.live_migration.plugins.module_utils.errors import from_libvirt_error
from ansible_collections.kvm.live_migration.plugins.module_utils.jobstats import JobSample, progress
from ansible_collections.kvm.live_migration.plugins.module_utils.units import MIB

DIRTY_RATE_SECONDS = 1
DIRTY_RATE_GRACE_S = 5


def measure_dirty_rate(lv, conn, domain, clock, wait):
    """(bytes/s, None) measured by QEMU over DIRTY_RATE_SECONDS, or (None, why) when libvirt could not.

    ``wait(seconds, event)`` sleeps; ``clock()`` reads monotonic seconds (both injected for tests).
    """
    idle = threading.Event()
    try:
        domain.startDirtyRateCalc(DIRTY_RATE_SECONDS, 0)
        deadline = clock() + DIRTY_RATE_SECONDS + DIRTY_RATE_GRACE_S
        wait(DIRTY_RATE_SECONDS, idle)
        while True:
            stats = conn.domainListGetStats([domain], lv.VIR_DOMAIN_STATS_DIRTYRATE, 0)[0][1]
            if stats.get("dirtyrate.calc_status") == lv.VIR_DOMAIN_DIRTYRATE_MEASURED:
                return int(stats.get("dirtyrate.megabytes_per_second", 0)) * MIB, None
            if clock() >= deadline:
                return None, "libvirt did not finish measuring the dirty rate in time"
            wait(0.1, idle)
    except lv.libvirtError as error:
        return None, f"measuring the dirty rate failed: {error.get_error_message()}"


def read_job(hypervisor, name):
    """(live progress, completed statistics or None, whether ``hypervisor`` still has the guest).

    A guest this host no longer has (it migrated away and was undefined here) has no job: that is an
    answer, not an error, so a poll that outlives the migration ends cleanly.
    """
    lv = hypervisor.lv
    domain = hypervisor.find_domain(name)
    state = None if domain is None else hypervisor.describe(domain)
    if state is None:
        return {"active": False}, None, False
    if not (state.running or state.paused):
        return {"active": False}, None, True  # a stopped guest has no job, and libvirt refuses to read one
    try:
        stats = domain.jobStats()
    except lv.libvirtError as error:
        if error.get_error_code() in (lv.VIR_ERR_NO_DOMAIN, lv.VIR_ERR_OPERATION_INVALID):
            return {"active": False}, None, False  # gone, or stopped, between the lookup and the call
        raise from_libvirt_error(lv, error, f"reading the job statistics of {name!r}") from error
    if stats.get("type") not in (None, lv.VIR_DOMAIN_JOB_NONE):
        sample = JobSample.from_stats(stats, stats.get("time_elapsed") or 0)
        return {"active": True, **progress(sample)}, None, True
    return {"active": False}, completed_job_stats(lv, domain), True


def completed_job_stats(lv, domain):
    """The statistics of the domain's last completed job, or None when libvirt keeps none."""
    try:
        stats = domain.jobStats(lv.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except lv.libvirtError:
        return None  # this libvirt keeps no completed statistics for the guest
    return None if not stats or stats.get("type") in (None, lv.VIR_DOMAIN_JOB_NONE) else stats
