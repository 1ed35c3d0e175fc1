"""Live progress of a migration job: the pure progress() and the migration_info module."""

from __future__ import annotations

import pytest
from conftest import SOURCE_URI
from fake_libvirt import GIB, MIB, C, Migration, completed_stats, sample

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.jobs import read_job
from ansible_collections.kvm.live_migration.plugins.module_utils.jobstats import JobSample, progress
from ansible_collections.kvm.live_migration.plugins.modules import migration_info


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (JobSample(time_ms=0, iteration=1, total_bytes=GIB, remaining_bytes=GIB // 4, transfer_rate_bps=64 * MIB),
         {"percent": 75.0, "pass": 1, "ratio": None, "eta_s": 4.0}),
        (JobSample(time_ms=0, iteration=3, total_bytes=GIB, remaining_bytes=96 * MIB, transfer_rate_bps=64 * MIB,
                   dirty_rate_pages=4096),  # 16 MiB/s dirtied: 48 MiB/s net
         {"percent": 90.6, "pass": 3, "ratio": 0.25, "eta_s": 2.0}),
        (JobSample(time_ms=0, iteration=4, total_bytes=GIB, remaining_bytes=400 * MIB, transfer_rate_bps=64 * MIB,
                   dirty_rate_pages=20000),  # dirties faster than it sends
         {"percent": 60.9, "pass": 4, "ratio": 1.221, "eta_s": None}),
        (JobSample(time_ms=0), {"percent": 0.0, "pass": 0, "ratio": None, "eta_s": None}),
        (JobSample(time_ms=0, total_bytes=100, remaining_bytes=150),  # remaining grew past the total
         {"percent": 0.0, "pass": 0, "ratio": None, "eta_s": None}),
    ],
    ids=["first-pass", "converging", "not-converging", "nothing-measured", "clamped"],
)
def test_progress(job, expected):
    report = progress(job)
    assert {key: report[key] for key in expected} == expected
    assert report["remaining_bytes"] == job.remaining_bytes


def test_read_job_while_migrating(cloud, hv1, lv):
    job = Migration(samples=[{**sample(2, remaining=256 * MIB, processed=900 * MIB, dirty_pages=2048),
                              "time_elapsed": 12000}])
    cloud.add_guest(hv1, "web01", migration=job)
    job.started.set()
    with Hypervisor(SOURCE_URI, lv) as hypervisor:
        live, completed = read_job(hypervisor, "web01")
    assert completed is None
    assert {key: live[key] for key in ("active", "pass", "percent", "elapsed_ms", "ratio", "eta_s")} == {
        "active": True, "pass": 2, "percent": 75.0, "elapsed_ms": 12000, "ratio": 0.125, "eta_s": 4.6}


@pytest.mark.parametrize(
    ("state", "completed", "expected_completed"),
    [
        (C.VIR_DOMAIN_RUNNING, completed_stats(downtime=42), completed_stats(downtime=42)),
        (C.VIR_DOMAIN_RUNNING, None, None),
        (C.VIR_DOMAIN_SHUTOFF, completed_stats(), None),  # a stopped guest has no job to read
    ],
    ids=["idle-with-completed-stats", "idle-never-migrated", "shut-off"],
)
def test_read_job_without_a_job(cloud, hv1, lv, state, completed, expected_completed):
    job = Migration()
    job.ended.set()
    cloud.add_guest(hv1, "web01", migration=job, state=state, completed=completed)
    with Hypervisor(SOURCE_URI, lv) as hypervisor:
        assert read_job(hypervisor, "web01") == ({"active": False}, expected_completed)


def test_read_job_of_an_unknown_guest(cloud, lv):
    with Hypervisor(SOURCE_URI, lv) as hypervisor, pytest.raises(MigrationError, match="guest 'nope' is not on"):
        read_job(hypervisor, "nope")


def test_module_reports_progress_and_failures(cloud, hv1, module_runner):
    run = module_runner(migration_info)
    job = Migration()
    job.ended.set()
    cloud.add_guest(hv1, "web01", migration=job, completed=completed_stats(downtime=42))

    assert run({"name": "web01"}) == ("exit", {"changed": False, "job": {"active": False},
                                               "completed": completed_stats(downtime=42)})

    outcome, returned = run({"name": "missing"})
    assert outcome == "fail"
    assert returned["msg"].startswith("guest 'missing' is not on qemu:///system")
