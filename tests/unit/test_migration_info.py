"""Live progress of a migration job: the pure progress() and the migration_info module."""

from __future__ import annotations

import json
import re

import pytest
from conftest import SOURCE_URI
from fake_libvirt import GIB, MIB, C, Migration, completed_stats, sample

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.jobs import read_job
from ansible_collections.kvm.live_migration.plugins.module_utils.jobstats import JobSample, progress
from ansible_collections.kvm.live_migration.plugins.modules import host_info, migration_info


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
        live, completed, present = read_job(hypervisor, "web01")
    assert (completed, present) == (None, True)
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
        assert read_job(hypervisor, "web01") == ({"active": False}, expected_completed, True)


def test_a_guest_that_left_the_source_has_no_job_and_is_not_an_error(cloud, lv):
    """After the source undefined the migrated guest, a poll still ends cleanly."""
    with Hypervisor(SOURCE_URI, lv) as hypervisor:
        assert read_job(hypervisor, "gone") == ({"active": False}, None, False)


def write_job(directory, job_id, content):
    (directory / job_id).write_text(content if isinstance(content, str) else json.dumps(content))


RUNNING_NOTE = {"started": True, "finished": False, "ansible_job_id": "j1"}
ENDED = {"changed": True, "migration": {"status": "completed", "owner": "hv2"}}
FAILED = {"failed": True, "msg": "migration of the guest from hv1 to hv2 aborted: ...", "changed": True,
          "migration": {"status": "aborted", "owner": "hv1"}}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (RUNNING_NOTE, {"finished": False}),
        ("", {"finished": False}),  # async_wrapper is writing the file
        (ENDED, {"finished": True, "migration": ENDED["migration"], "job_failed": False, "job_msg": None}),
        (FAILED, {"finished": True, "migration": FAILED["migration"], "job_failed": True, "job_msg": FAILED["msg"]}),
    ],
    ids=["running", "being-written", "completed", "failed"],
)
def test_background_task_states(tmp_path, content, expected):
    write_job(tmp_path, "j1", content)
    assert migration_info.background_task(str(tmp_path), "j1") == expected


@pytest.mark.parametrize(
    ("job_id", "message"),
    [("j404", "no background task j404 in"), ("../etc/passwd", "async_job_id='../etc/passwd' is not a job id"),
     ("..", "async_job_id='..' is not a job id")],
    ids=["unknown", "path", "dot-dot"],
)
def test_background_task_refuses_what_is_not_a_job(tmp_path, job_id, message):
    with pytest.raises(MigrationError, match=re.escape(message)):
        migration_info.background_task(str(tmp_path), job_id)


def test_module_follows_a_migration_from_before_its_job_to_after_the_source_undefined_the_guest(
        cloud, hv1, module_runner, tmp_path):
    """The documented async pattern: not finished while no job exists yet, finished with the result once the
    task ended, also after the guest left the source."""
    run = module_runner(migration_info)
    job = Migration()
    job.ended.set()
    cloud.add_guest(hv1, "web01", migration=job)
    args = {"name": "web01", "async_job_id": "j1", "async_dir": str(tmp_path)}

    write_job(tmp_path, "j1", RUNNING_NOTE)
    assert run(args) == ("exit", {"changed": False, "job": {"active": False}, "present": True, "finished": False})

    del hv1.guests["web01"]  # migrated away and undefined, the task not yet ended
    assert run(args) == ("exit", {"changed": False, "job": {"active": False}, "present": False, "finished": False})

    write_job(tmp_path, "j1", ENDED)
    assert run(args) == ("exit", {"changed": False, "job": {"active": False}, "present": False, "finished": True,
                                  "migration": ENDED["migration"], "job_failed": False, "job_msg": None})


def test_module_reports_completed_statistics(cloud, hv1, module_runner):
    run = module_runner(migration_info)
    job = Migration()
    job.ended.set()
    cloud.add_guest(hv1, "web01", migration=job, completed=completed_stats(downtime=42))

    assert run({"name": "web01"}) == ("exit", {"changed": False, "job": {"active": False}, "present": True,
                                               "completed": completed_stats(downtime=42)})


@pytest.mark.parametrize("module_code", [migration_info, host_info], ids=["migration_info", "host_info"])
@pytest.mark.parametrize("uri", ["hv1", "qemu+ssh://hv1/", "xen:///system"], ids=["schemeless", "no-path", "not-qemu"])
def test_a_source_uri_that_is_no_libvirt_uri_is_refused_before_any_connection(cloud, module_runner, module_code, uri):
    run = module_runner(module_code)
    opened = len(cloud.connections)
    outcome, result = run({"name": "web01", "source_uri": uri} if module_code is migration_info
                          else {"source_uri": uri})
    assert outcome == "fail", result
    assert result["msg"].startswith(f"source_uri={uri!r} "), result["msg"]
    assert len(cloud.connections) == opened
