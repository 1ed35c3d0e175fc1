# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Job-stat samples of a migration, as plain values (no libvirt, no clock inside).

libvirt's ``virDomainGetJobStats`` returns a dict whose keys depend on the job's phase; a
``JobSample`` gives every field a value and derives the rates the convergence policy reads:
dirty rate in bytes/s (libvirt reports pages/s), transfer rate, and their ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PAGE_SIZE = 4096


@dataclass(frozen=True)
class JobSample:
    """One reading of a migration job, ``time_ms`` after the migration started."""

    time_ms: int
    iteration: int = 0
    remaining_bytes: int = 0
    processed_bytes: int = 0
    total_bytes: int = 0
    transfer_rate_bps: int = 0
    dirty_rate_pages: int = 0
    page_size: int = DEFAULT_PAGE_SIZE
    expected_downtime_ms: int = 0
    throttle_pct: int = 0
    postcopy_requests: int = 0

    @classmethod
    def from_stats(cls, stats, time_ms):
        """Build a sample from a ``jobStats()`` dict read ``time_ms`` after the start."""

        def value(key):
            return int(stats.get(key) or 0)

        return cls(
            time_ms=int(time_ms),
            iteration=value("memory_iteration"),
            remaining_bytes=value("data_remaining") or value("memory_remaining"),
            processed_bytes=value("data_processed") or value("memory_processed"),
            total_bytes=value("data_total") or value("memory_total"),
            transfer_rate_bps=value("memory_bps"),
            dirty_rate_pages=value("memory_dirty_rate"),
            page_size=value("memory_page_size") or DEFAULT_PAGE_SIZE,
            expected_downtime_ms=value("downtime"),
            throttle_pct=value("auto_converge_throttle"),
            postcopy_requests=value("memory_postcopy_requests"),
        )

    @property
    def dirty_rate_bps(self):
        return self.dirty_rate_pages * self.page_size

    @property
    def ratio(self):
        """Convergence ratio: dirty rate / transfer rate; None until QEMU has measured both."""
        if self.transfer_rate_bps <= 0 or self.iteration < 2:  # noqa: PLR2004 - pass 1 dirties nothing yet
            return None
        return self.dirty_rate_bps / self.transfer_rate_bps

    @property
    def rounded_ratio(self):
        """The ratio as reported to users: three decimals, or None."""
        ratio = self.ratio
        return None if ratio is None else round(ratio, 3)


def timeline_entry(sample, downtime_limit_ms):
    """What the result's timeline records for one pass."""
    return {
        "pass": sample.iteration,
        "time_ms": sample.time_ms,
        "remaining_bytes": sample.remaining_bytes,
        "processed_bytes": sample.processed_bytes,
        "dirty_rate_bps": sample.dirty_rate_bps,
        "transfer_rate_bps": sample.transfer_rate_bps,
        "ratio": sample.rounded_ratio,
        "expected_downtime_ms": sample.expected_downtime_ms,
        "throttle_pct": sample.throttle_pct,
        "downtime_limit_ms": downtime_limit_ms,
    }


def progress(sample):
    """A running job's progress for people and dashboards: percent, pass, rates, ratio and ETA.

    ``sample.time_ms`` is taken as the job's elapsed time (libvirt's ``time_elapsed``).

    The ETA assumes the current rates hold: remaining data shrinks at transfer minus dirty rate.
    When the guest dirties memory as fast as it is sent, there is no ETA (None).
    """
    done = sample.total_bytes - sample.remaining_bytes
    percent = round(100 * done / sample.total_bytes, 1) if sample.total_bytes > 0 else 0.0
    net_rate = sample.transfer_rate_bps - sample.dirty_rate_bps
    eta_s = round(sample.remaining_bytes / net_rate, 1) if net_rate > 0 and sample.transfer_rate_bps > 0 else None
    return {
        "percent": max(0.0, min(100.0, percent)),
        "pass": sample.iteration,
        "elapsed_ms": sample.time_ms,
        "remaining_bytes": sample.remaining_bytes,
        "processed_bytes": sample.processed_bytes,
        "total_bytes": sample.total_bytes,
        "dirty_rate_bps": sample.dirty_rate_bps,
        "transfer_rate_bps": sample.transfer_rate_bps,
        "ratio": sample.rounded_ratio,
        "expected_downtime_ms": sample.expected_downtime_ms,
        "throttle_pct": sample.throttle_pct,
        "eta_s": eta_s,
    }


class Timeline:
    """Keeps the latest sample of every pass (a pass is one ``memory_iteration`` value)."""

    def __init__(self):
        self._passes = {}
        self.last = None

    def add(self, sample, downtime_limit_ms):
        if sample.iteration <= 0:
            return
        self.last = sample
        self._passes[sample.iteration] = timeline_entry(sample, downtime_limit_ms)

    def entries(self, passes=None, started_ms=None):
        """One entry per pass, 1 to ``passes`` (or the last sampled pass). A pass that began and ended
        between two samples has the time its MIGRATION_ITERATION event came (``started_ms``, by pass)
        and nothing measured: ``sampled`` tells them apart."""
        started_ms = started_ms or {}
        last = max([passes or 0, *self._passes])
        return [{**self._passes[number], "sampled": True} if number in self._passes else
                {**dict.fromkeys(UNSAMPLED_KEYS), "pass": number, "time_ms": started_ms.get(number), "sampled": False}
                for number in range(1, last + 1)]


UNSAMPLED_KEYS = tuple(timeline_entry(JobSample(time_ms=0), None))
