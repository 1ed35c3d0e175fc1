"""jobstats: samples from jobStats() dicts, the convergence ratio, and the per-pass timeline."""

from __future__ import annotations

import pytest
from fake_libvirt import MIB, sample

from ansible_collections.kvm.live_migration.plugins.module_utils.jobstats import JobSample, Timeline, timeline_entry


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        (sample(3, remaining=100 * MIB, processed=900 * MIB, total=1024 * MIB, bps=64 * MIB, dirty_pages=2000,
                downtime=250, throttle=20),
         JobSample(time_ms=1500, iteration=3, remaining_bytes=100 * MIB, processed_bytes=900 * MIB,
                   total_bytes=1024 * MIB, transfer_rate_bps=64 * MIB, dirty_rate_pages=2000, page_size=4096,
                   expected_downtime_ms=250, throttle_pct=20)),
        ({"type": 2, "memory_iteration": 2, "memory_remaining": 5, "memory_processed": 7, "memory_total": 9,
          "memory_postcopy_requests": 4},
         JobSample(time_ms=1500, iteration=2, remaining_bytes=5, processed_bytes=7, total_bytes=9,
                   postcopy_requests=4)),
        ({"type": 2, "data_remaining": 1, "memory_remaining": 5, "data_processed": 2, "memory_processed": 7,
          "data_total": 3, "memory_total": 9, "memory_page_size": 65536},
         JobSample(time_ms=1500, remaining_bytes=1, processed_bytes=2, total_bytes=3, page_size=65536)),
        ({"type": 2, "memory_iteration": None, "memory_page_size": 0}, JobSample(time_ms=1500)),
    ],
    ids=["realistic", "memory-keys-only", "data-keys-win", "missing-and-none"],
)
def test_from_stats(stats, expected):
    assert JobSample.from_stats(stats, 1500.7) == expected


@pytest.mark.parametrize(
    ("iteration", "bps", "dirty_pages", "page_size", "expected"),
    [
        (1, 64 * MIB, 5000, 4096, None),  # pass 1 has nothing dirtied yet
        (0, 64 * MIB, 5000, 4096, None),
        (2, 0, 5000, 4096, None),  # no transfer rate measured
        (2, 8_192_000, 1000, 4096, 0.5),
        (5, 4_096_000, 2000, 4096, 2.0),
        (2, 64 * MIB, 0, 4096, 0.0),
        (3, 1_048_576, 16, 65536, 1.0),
    ],
    ids=["pass-1", "pass-0", "no-bps", "half", "diverging", "nothing-dirty", "large-pages"],
)
def test_ratio(iteration, bps, dirty_pages, page_size, expected):
    job = JobSample(time_ms=0, iteration=iteration, transfer_rate_bps=bps, dirty_rate_pages=dirty_pages,
                    page_size=page_size)
    assert job.ratio == expected
    assert job.dirty_rate_bps == dirty_pages * page_size


def test_timeline_entry():
    job = JobSample(time_ms=2500, iteration=4, remaining_bytes=10, processed_bytes=20, total_bytes=30,
                    transfer_rate_bps=3_000_000, dirty_rate_pages=250, expected_downtime_ms=120, throttle_pct=30)
    assert timeline_entry(job, 500) == {
        "pass": 4, "time_ms": 2500, "remaining_bytes": 10, "processed_bytes": 20, "dirty_rate_bps": 1_024_000,
        "transfer_rate_bps": 3_000_000, "ratio": 0.341, "expected_downtime_ms": 120, "throttle_pct": 30,
        "downtime_limit_ms": 500,
    }


@pytest.mark.parametrize(
    ("readings", "expected_passes", "expected_times", "last"),
    [
        ([], [], [], None),
        ([(0, 0)], [], [], None),  # before QEMU counts a pass
        ([(1, 0), (1, 500), (2, 1000)], [1, 2], [500, 1000], (2, 1000)),
        ([(1, 0), (2, 500), (2, 1000), (2, 1500), (3, 2000)], [1, 2, 3], [0, 1500, 2000], (3, 2000)),
        ([(2, 500), (1, 900)], [1, 2], [900, 500], (1, 900)),  # entries sorted by pass
    ],
    ids=["empty", "pass-0-skipped", "latest-of-pass-1", "latest-of-pass-2", "sorted"],
)
def test_timeline_keeps_latest_sample_per_pass(readings, expected_passes, expected_times, last):
    timeline = Timeline()
    for iteration, time_ms in readings:
        timeline.add(JobSample(time_ms=time_ms, iteration=iteration), 300)
    entries = timeline.entries()
    assert [entry["pass"] for entry in entries] == expected_passes
    assert [entry["time_ms"] for entry in entries] == expected_times
    assert {entry["downtime_limit_ms"] for entry in entries} <= {300}
    assert (None if timeline.last is None else (timeline.last.iteration, timeline.last.time_ms)) == last
