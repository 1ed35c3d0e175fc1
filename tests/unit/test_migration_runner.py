"""MigrationRunner.run against the fake cloud: hv1 (source) and hv2 (destination), fake time."""

from __future__ import annotations

import pytest
from conftest import DEST_URI, SOURCE_URI
from fake_libvirt import GIB, MIB, C, Migration, libvirtError, sample

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.migration import MigrationRequest, MigrationRunner

STATE_NAMES = {C.VIR_DOMAIN_RUNNING: "running", C.VIR_DOMAIN_PAUSED: "paused", C.VIR_DOMAIN_SHUTOFF: "shutoff"}
DEFAULT_FLAGS = (C.VIR_MIGRATE_LIVE | C.VIR_MIGRATE_PEER2PEER | C.VIR_MIGRATE_ABORT_ON_ERROR
                 | C.VIR_MIGRATE_PERSIST_DEST | C.VIR_MIGRATE_UNDEFINE_SOURCE | C.VIR_MIGRATE_TLS)

# Three passes of a 1 GiB guest at 64 MiB/s; the dirty rate falls from 16 to 8 MiB/s.
PASSES = [
    sample(1, remaining=900 * MIB, processed=124 * MIB, dirty_pages=0),
    sample(2, remaining=300 * MIB, processed=850 * MIB, dirty_pages=4096),
    sample(3, remaining=40 * MIB, processed=1100 * MIB, dirty_pages=2048),
]
# Ten passes that never converge, 100 MiB more each.
SLOW = [sample(n, remaining=500 * MIB, processed=n * 100 * MIB, dirty_pages=16384) for n in range(1, 11)]
# Passes that send 300 MiB each.
HEAVY = [sample(n, remaining=500 * MIB, processed=n * 300 * MIB, dirty_pages=16384) for n in range(1, 11)]
CPU_ERROR = ("the CPU is incompatible with host CPU: Host CPU does not provide required features: avx512f",
             C.VIR_ERR_CPU_INCOMPATIBLE)
TIMEOUT_WHY = "the migration ran longer than its timeout of 2 s"
NO_ACTIONS = []


def run(cloud, clock, check_mode=False, name="web01", **changes):
    lv = cloud.libvirt
    request = MigrationRequest(name=name, dest_uri=DEST_URI, **changes)
    with (Hypervisor(SOURCE_URI, lv) as source, Hypervisor(SOURCE_URI, lv) as monitor,
          Hypervisor(DEST_URI, lv) as destination):
        runner = MigrationRunner(source, monitor, destination, request, clock=clock, wait=clock.wait)
        return runner.run(check_mode=check_mode)


def where(cloud, name="web01"):
    """{'hv1': state, 'hv2': state} of the guest, None where it is not defined."""
    found = {}
    for uri in (SOURCE_URI, DEST_URI):
        host = cloud.hosts[uri]
        guest = host.guests.get(name)
        found[host.hostname] = None if guest is None else STATE_NAMES[guest.state]
    return found


def action(what, why, pass_, time_ms):
    return {"pass": pass_, "time_ms": time_ms, "what": what, "why": why, "helped": None}


def test_completed_result(cloud, hv1, clock):
    job = Migration(samples=PASSES)
    cloud.add_guest(hv1, "web01", migration=job)

    result = run(cloud, clock)

    assert result.changed is True
    assert result.as_dict() == {
        "status": "completed", "owner": "hv2", "source": "hv1", "destination": "hv2", "strategy": "precopy",
        "actions": [], "total_time_ms": 1712, "downtime_ms": 31, "downtime_net_ms": 29, "setup_time_ms": 2,
        "data_sent_bytes": 1_200_000_000, "data_total_bytes": GIB, "passes": 4, "final_ratio": 0.125,
        "prediction": None, "error": None,
        "timeline": [
            {"pass": 1, "time_ms": 0, "remaining_bytes": 900 * MIB, "processed_bytes": 124 * MIB,
             "dirty_rate_bps": 0, "transfer_rate_bps": 64 * MIB, "ratio": None, "expected_downtime_ms": 300,
             "throttle_pct": 0, "downtime_limit_ms": 500},
            {"pass": 2, "time_ms": 500, "remaining_bytes": 300 * MIB, "processed_bytes": 850 * MIB,
             "dirty_rate_bps": 16 * MIB, "transfer_rate_bps": 64 * MIB, "ratio": 0.25, "expected_downtime_ms": 300,
             "throttle_pct": 0, "downtime_limit_ms": 500},
            {"pass": 3, "time_ms": 1000, "remaining_bytes": 40 * MIB, "processed_bytes": 1100 * MIB,
             "dirty_rate_bps": 8 * MIB, "transfer_rate_bps": 64 * MIB, "ratio": 0.125, "expected_downtime_ms": 300,
             "throttle_pct": 0, "downtime_limit_ms": 500},
        ],
    }
    assert (job.dconnuri, job.flags, job.params, job.max_downtime) == (DEST_URI, DEFAULT_FLAGS, {}, [(500, 0)])
    assert where(cloud) == {"hv1": None, "hv2": "running"}


@pytest.mark.parametrize(
    ("script", "changes", "expected", "placement", "abort_calls"),
    [
        pytest.param(
            {"samples": PASSES}, {},
            {"status": "completed", "owner": "hv2", "actions": NO_ACTIONS, "passes": 4, "total_time_ms": 1712,
             "data_sent_bytes": 1_200_000_000, "error": None},
            {"hv1": None, "hv2": "running"}, 0, id="completed"),
        pytest.param(
            {"samples": PASSES}, {"undefine_source": False, "persistent": False, "max_downtime_ms": 100},
            {"status": "completed", "owner": "hv2", "actions": NO_ACTIONS, "downtime_ms": 31, "error": None},
            {"hv1": "shutoff", "hv2": "running"}, 0, id="completed-keep-source-definition"),
        pytest.param(
            {"samples": []}, {},
            {"status": "completed", "owner": "hv2", "actions": NO_ACTIONS, "passes": 4, "timeline": [],
             "final_ratio": None},
            {"hv1": None, "hv2": "running"}, 0, id="completed-before-first-sample"),
        pytest.param(
            {"samples": SLOW}, {"timeout_s": 2},
            {"status": "aborted", "owner": "hv1", "actions": [action("abort", TIMEOUT_WHY, 6, 2500)],
             "passes": 6, "total_time_ms": 2500, "data_sent_bytes": 600 * MIB, "data_total_bytes": GIB,
             "downtime_ms": None, "error": None},
            {"hv1": "running", "hv2": None}, 1, id="timeout-aborts"),
        pytest.param(
            {"samples": HEAVY}, {"max_data_factor": 1.0},
            {"status": "aborted", "owner": "hv1", "passes": 4, "total_time_ms": 1500, "error": None,
             "actions": [action("abort", f"{1200 * MIB} bytes sent, more than max_data_factor=1.0 times the guest's "
                                "memory", 4, 1500)]},
            {"hv1": "running", "hv2": None}, 1, id="max-data-aborts"),
        pytest.param(
            {"samples": SLOW, "abort_failures": 2}, {"timeout_s": 2},
            {"status": "aborted", "owner": "hv1", "total_time_ms": 6500, "error": None,
             "actions": [action("abort", TIMEOUT_WHY, 6, 2500),
                         action("abort_retry", "abortJob failed: internal error: unable to abort job: monitor is "
                                "busy", 6, 2500),
                         action("abort_retry", "abortJob failed: internal error: unable to abort job: monitor is "
                                "busy", 6, 4500)]},
            {"hv1": "running", "hv2": None}, 3, id="abort-retried"),
        pytest.param(
            {"samples": SLOW, "abort_ignored": True}, {"timeout_s": 2},
            {"status": "failed", "owner": "hv1", "total_time_ms": 32500, "error": None,
             "actions": [action("abort", TIMEOUT_WHY, 6, 2500),
                         action("abort_timeout", "the migration job did not end within 30 s of the abort", 6,
                                32500)]},
            {"hv1": "running", "hv2": None}, 15, id="abort-never-ends"),
        pytest.param(
            {"samples": PASSES[:2], "failure": libvirtError(*CPU_ERROR)}, {},
            {"status": "failed", "owner": "hv1", "actions": NO_ACTIONS, "passes": 2, "total_time_ms": 1000,
             "data_sent_bytes": 850 * MIB,
             "error": {"message": f"the migration failed: {CPU_ERROR[0]}", "code": 91,
                       "code_name": "VIR_ERR_CPU_INCOMPATIBLE",
                       "fix": "the destination CPU lacks features of the guest CPU; use a portable CPU model"}},
            {"hv1": "running", "hv2": None}, 0, id="libvirt-failure"),
        pytest.param(
            {"samples": PASSES[:2], "failure": TypeError("bad params")}, {},
            {"status": "failed", "owner": "hv1", "actions": NO_ACTIONS,
             "error": {"message": "the migration call raised TypeError: bad params", "code": None,
                       "code_name": None, "fix": "report this as a bug of kvm.live_migration, with the versions"}},
            {"hv1": "running", "hv2": None}, 0, id="non-libvirt-failure-is-not-success"),
        pytest.param(
            {"samples": PASSES[:2], "failure": libvirtError(*CPU_ERROR), "source_paused_after": True}, {},
            {"status": "failed", "owner": "hv1",
             "actions": [action("resume", "the guest was left paused on hv1", 2, 1000)]},
            {"hv1": "running", "hv2": None}, 0, id="failure-resumes-paused-source"),
        pytest.param(
            {"samples": PASSES[:2], "failure": libvirtError(*CPU_ERROR), "destination_copy_after": True}, {},
            {"status": "failed", "owner": "hv1",
             "actions": [action("destroy_destination_copy",
                                "the migration did not complete but a copy runs on the destination", 2, 1000)]},
            {"hv1": "running", "hv2": None}, 0, id="failure-destroys-destination-copy"),
        pytest.param(
            {"samples": SLOW, "source_paused_after": True, "destination_copy_after": True}, {"timeout_s": 2},
            # A copy that runs on the destination has the guest's latest state; the paused source is kept.
            {"status": "aborted", "owner": "hv2", "actions": [action("abort", TIMEOUT_WHY, 6, 2500)]},
            {"hv1": "paused", "hv2": "running"}, 1, id="abort-keeps-running-destination-over-paused-source"),
    ],
)
def test_run(cloud, hv1, clock, script, changes, expected, placement, abort_calls):
    job = Migration(**script)
    cloud.add_guest(hv1, "web01", migration=job)

    result = run(cloud, clock, **changes).as_dict()

    assert {key: result[key] for key in expected} == expected
    assert where(cloud) == placement
    assert job.abort_calls == abort_calls


@pytest.mark.parametrize(
    ("changes", "flags", "params", "downtime", "persistent_on_destination"),
    [
        ({}, DEFAULT_FLAGS, {}, [(500, 0)], True),
        ({"transport": "ssh", "bandwidth_mib": 256, "max_downtime_ms": 50},
         DEFAULT_FLAGS & ~C.VIR_MIGRATE_TLS | C.VIR_MIGRATE_TUNNELLED, {"bandwidth": 256}, [(50, 0)], True),
        ({"transport": "tcp", "allow_insecure": True, "persistent": False, "migrate_uri": "tcp://192.0.2.2",
          "listen_address": "192.0.2.2"},
         DEFAULT_FLAGS & ~C.VIR_MIGRATE_TLS & ~C.VIR_MIGRATE_PERSIST_DEST,
         {"migrate_uri": "tcp://192.0.2.2", "listen_address": "192.0.2.2"}, [(500, 0)], False),
    ],
    ids=["defaults", "ssh-bandwidth-downtime", "tcp-transient-addresses"],
)
def test_run_passes_options_to_libvirt(cloud, hv1, hv2, clock, changes, flags, params, downtime,
                                       persistent_on_destination):
    job = Migration(samples=PASSES)
    cloud.add_guest(hv1, "web01", migration=job)

    assert run(cloud, clock, **changes).status == "completed"
    assert (job.flags, job.params, job.max_downtime) == (flags, params, downtime)
    assert hv2.guests["web01"].persistent is persistent_on_destination


def test_run_by_uuid(cloud, hv1, clock):
    guest = cloud.add_guest(hv1, "web01", migration=Migration(samples=PASSES))
    result = run(cloud, clock, name=guest.uuid)
    assert (result.status, result.owner, result.passes) == ("completed", "hv2", 4)
    assert where(cloud) == {"hv1": None, "hv2": "running"}


@pytest.mark.parametrize(
    ("on_hv1", "on_hv2", "check_mode", "status", "owner", "changed"),
    [
        (None, C.VIR_DOMAIN_RUNNING, False, "already_migrated", "hv2", False),
        (C.VIR_DOMAIN_SHUTOFF, C.VIR_DOMAIN_RUNNING, False, "already_migrated", "hv2", False),
        (C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_RUNNING, False, "already_migrated", "hv2", False),
        (None, C.VIR_DOMAIN_RUNNING, True, "already_migrated", "hv2", False),
        (C.VIR_DOMAIN_RUNNING, None, True, "would_migrate", "hv1", True),
        (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_SHUTOFF, True, "would_migrate", "hv1", True),
    ],
    ids=["already-migrated", "already-migrated-source-definition-left", "already-migrated-paused-source",
         "already-migrated-check-mode", "check-mode", "check-mode-destination-definition"],
)
def test_run_without_migrating(cloud, hv1, hv2, clock, on_hv1, on_hv2, check_mode, status, owner, changed):
    jobs = []
    for host, state in ((hv1, on_hv1), (hv2, on_hv2)):
        if state is not None:
            jobs.append(cloud.add_guest(host, "web01", state=state, migration=Migration(samples=PASSES)).migration)
    before = where(cloud)

    result = run(cloud, clock, check_mode=check_mode)

    assert result.as_dict() == {
        "status": status, "owner": owner, "source": "hv1", "destination": "hv2", "strategy": "precopy",
        "actions": [], "total_time_ms": None, "downtime_ms": None, "downtime_net_ms": None, "setup_time_ms": None,
        "data_sent_bytes": None, "data_total_bytes": None, "passes": None, "final_ratio": None, "prediction": None,
        "timeline": [], "error": None}
    assert result.changed is changed
    assert where(cloud) == before
    assert [(job.flags, job.max_downtime) for job in jobs] == [(None, [])] * len(jobs)


@pytest.mark.parametrize(
    ("on_hv1", "on_hv2", "message"),
    [
        (None, None, "guest 'web01' was found on neither hv1 nor hv2; check the name or UUID with 'virsh list --all'"),
        (None, C.VIR_DOMAIN_SHUTOFF,
         "guest 'web01' was found on neither hv1 nor hv2; check the name or UUID with 'virsh list --all'"),
        (C.VIR_DOMAIN_PAUSED, None,
         "guest 'web01' is paused on hv1; a live migration needs a running guest (start or resume it first)"),
        (C.VIR_DOMAIN_SHUTOFF, C.VIR_DOMAIN_SHUTOFF,
         "guest 'web01' is shutoff on hv1; a live migration needs a running guest (start or resume it first)"),
        (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING,
         "guest 'web01' runs on both hv1 and hv2; stop the copy that must not run before migrating"),
    ],
    ids=["neither", "only-defined-on-destination", "paused-on-source", "shut-off-everywhere", "running-on-both"],
)
def test_run_refuses_unclear_placement(cloud, hv1, hv2, clock, on_hv1, on_hv2, message):
    jobs = []
    for host, state in ((hv1, on_hv1), (hv2, on_hv2)):
        if state is not None:
            jobs.append(cloud.add_guest(host, "web01", state=state).migration)
    before = where(cloud)

    with pytest.raises(MigrationError) as caught:
        run(cloud, clock)

    assert caught.value.message == message
    assert where(cloud) == before
    assert [job.flags for job in jobs] == [None] * len(jobs)


def test_run_refuses_same_host_uuid(cloud, hv1, hv2, clock):
    hv2.uuid = hv1.uuid = "4c4c4544-0042-3010-8056-b4c04f4d4d31"
    job = cloud.add_guest(hv1, "web01").migration

    with pytest.raises(MigrationError) as caught:
        run(cloud, clock)

    assert caught.value.message == (
        "source qemu:///system and destination qemu+ssh://hv2/system report the same host UUID "
        "4c4c4544-0042-3010-8056-b4c04f4d4d31: they are the same host, or host_uuid is duplicated; give each "
        "hypervisor a unique host_uuid in libvirtd.conf")
    assert job.flags is None
    assert where(cloud) == {"hv1": "running", "hv2": None}


def test_run_validates_before_connecting_to_guests(cloud, hv1, clock):
    job = cloud.add_guest(hv1, "web01").migration
    with pytest.raises(MigrationError, match=r"^transport=tcp sends the guest's memory"):
        run(cloud, clock, transport="tcp")
    assert job.flags is None
