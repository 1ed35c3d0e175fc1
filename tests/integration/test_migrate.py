"""kvm.live_migration.migrate against two real hypervisors (QEMU under TCG)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import LAB_SH, REPO

GUEST = "dirty"
BANDWIDTH_MIB = 64
MAX_DOWNTIME_MS = 500


@pytest.fixture(scope="module")
def dirty_guest(running_lab):
    """A 512 MiB guest rewriting 2,000 random pages/s (8 MiB/s) of a 128 MiB working set on hv1."""
    running_lab.start_guest("hv1", GUEST, memory_mib=512, dirty_mib=128, pages_per_s=2000)
    yield GUEST
    running_lab.remove_guest(GUEST)


def run_shipped_playbook(running_lab, tmp_path, check=False):
    """Run playbooks/migrate.yml; return (exit code, printed output, the module's result)."""
    result_file = tmp_path / "migration.json"
    extra_vars = {"migrate_guest": GUEST, "migrate_source": "hv1", "migrate_destination": "hv2",
                  "migrate_bandwidth": BANDWIDTH_MIB,
                  "migrate_max_downtime_ms": MAX_DOWNTIME_MS, "migrate_result_file": str(result_file)}
    code, output = running_lab.playbook(REPO / "playbooks" / "migrate.yml", extra_vars, check=check)
    assert result_file.exists(), output
    return code, output, json.loads(result_file.read_text())


@pytest.mark.stock
def test_check_mode_reports_and_moves_nothing(running_lab, dirty_guest, tmp_path):
    code, output, migrate = run_shipped_playbook(running_lab, tmp_path, check=True)
    assert code == 0, output
    assert migrate["changed"] is True
    assert migrate["migration"]["status"] == "would_migrate"
    assert running_lab.running_guests("hv1") == {dirty_guest}
    assert running_lab.defined_guests("hv2") == set()


@pytest.mark.stock
def test_migration_moves_the_running_guest(running_lab, dirty_guest, tmp_path):
    before = running_lab.console("hv1", dirty_guest)
    code, output, migrate = run_shipped_playbook(running_lab, tmp_path)

    assert code == 0, output
    migration = migrate["migration"]
    assert migrate["changed"] is True
    assert (migration["status"], migration["owner"], migration["source"], migration["destination"]) == (
        "completed", "hv2", "hv1", "hv2")
    # 512 MiB at 64 MiB/s: the action plugin printed the progress at least once while it ran.
    assert f"hv1: {dirty_guest} -> hv2: pass " in output, output
    assert migration["transport"] == "tls"  # the playbook's default, with the certificates prepare_hosts issued
    # The guest runs on hv2 only, defined there, gone from hv1.
    assert running_lab.running_guests("hv2") == {dirty_guest}
    assert running_lab.defined_guests("hv1") == set()
    # QEMU's measurements come back in the result.
    assert 0 < migration["downtime_ms"] <= MAX_DOWNTIME_MS
    assert migration["data_sent_bytes"] > 128 * 1024 * 1024  # at least the dirtied working set
    assert migration["data_total_bytes"] >= 512 * 1024 * 1024
    assert migration["passes"] >= 2
    assert migration["total_time_ms"] > 0
    assert [entry["pass"] for entry in migration["timeline"]] == sorted({e["pass"] for e in migration["timeline"]})
    assert '"completed: hv1 -> hv2, guest runs on hv2"' in output

    # Same boot, the counter went on from where the source left it, and the memory arrived intact.
    source = running_lab.console("hv1", dirty_guest)
    with running_lab.excusing_write_loss(migration, dirtying=True):
        destination = running_lab.assert_intact("hv2", dirty_guest, source)
    assert source.boot == destination.boot == before.boot
    assert source.last >= before.last
    assert 1 <= destination.first - source.last <= 2, (source.last, destination.first)


def test_second_run_finds_the_guest_already_migrated(running_lab, dirty_guest, tmp_path):
    for check in (False, True):
        code, output, migrate = run_shipped_playbook(running_lab, tmp_path, check=check)
        assert code == 0, output
        assert migrate["changed"] is False
        assert (migrate["migration"]["status"], migrate["migration"]["owner"]) == ("already_migrated", "hv2")
    assert running_lab.running_guests("hv2") == {dirty_guest}


def test_the_shipped_playbook_takes_its_options_from_the_inventory(running_lab, dirty_guest, tmp_path):
    """An inventory group variable reaches the migration (it was a play variable, which outranks the inventory)."""
    inventory = tmp_path / "override.yml"
    inventory.write_text("all:\n  children:\n    hypervisors:\n      vars:\n        migrate_transport: tcp\n"
                         "      hosts:\n        hv2: {}\n")
    code, output = running_lab.playbook(REPO / "playbooks" / "migrate.yml", {
        "migrate_guest": dirty_guest, "migrate_source": "hv2", "migrate_destination": "hv1"}, check=True,
        more_inventory=inventory)
    assert code != 0, output
    assert "transport=tcp sends the guest's memory across the network unencrypted" in output
    assert running_lab.running_guests("hv2") == {dirty_guest}
    assert running_lab.defined_guests("hv1") == set()


def test_a_bad_option_in_the_inventory_is_refused_by_name_before_anything_moves(running_lab, dirty_guest, tmp_path):
    """The check runs on the source, where the hypervisors' group variables are visible (on localhost they were
    not, and a bad transport passed it)."""
    source = "hv2" if dirty_guest in running_lab.running_guests("hv2") else "hv1"
    destination = {"hv1": "hv2", "hv2": "hv1"}[source]
    inventory = tmp_path / "bad.yml"
    inventory.write_text("all:\n  children:\n    hypervisors:\n      vars:\n        migrate_transport: bogus\n"
                         f"      hosts:\n        {source}: {{}}\n")
    code, output = running_lab.playbook(REPO / "playbooks" / "migrate.yml", {
        "migrate_guest": dirty_guest, "migrate_source": source, "migrate_destination": destination},
        more_inventory=inventory)
    assert code != 0, output
    assert "migrate_transport" in output and "bogus" in output, output[-3000:]
    assert "TASK [Live-migrate" not in output
    assert running_lab.running_guests(source) == {dirty_guest}
    assert running_lab.defined_guests(destination) == set()


def test_cleartext_transport_is_refused_without_allow_insecure(running_lab, dirty_guest, tmp_path):
    result = running_lab.module("hv2", {"name": dirty_guest, "dest_host": "hv1", "transport": "tcp"}, tmp_path)
    assert result["failed"] is True
    assert "transport=tcp" in result["msg"]
    assert "allow_insecure" in result["msg"]
    assert running_lab.running_guests("hv2") == {dirty_guest}


def test_unknown_guest_is_reported_on_neither_host(running_lab, tmp_path):
    result = running_lab.module("hv1", {"name": "no-such-guest", "dest_host": "hv2"}, tmp_path)
    assert result["failed"] is True
    assert "'no-such-guest' was found on neither hv1 nor hv2" in result["msg"]


def test_migration_info_reads_a_running_job(running_lab, tmp_path):
    """migration_info on the source shows a migration's live progress, then no job once it is cancelled."""
    running_lab.start_guest("hv1", "watched", memory_mib=512, dirty_mib=384, pages_per_s=40000)
    migration = subprocess.Popen(  # a migration started outside the collection, as an operator might
        [str(LAB_SH), "exec", "hv1", "virsh", "-q", "migrate", "--live", "--p2p", "--bandwidth", str(BANDWIDTH_MIB),
         "watched", "qemu+ssh://hv2/system"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = wait_for_pass(running_lab, tmp_path, "watched", 2)
        assert 0 < job["percent"] <= 100
        assert job["transfer_rate_bps"] > 32 * 1024 * 1024  # about the 64 MiB/s cap
        assert job["ratio"] > 0.5
        assert job["processed_bytes"] > 384 * 1024 * 1024
    finally:
        running_lab.virsh("hv1", "domjobabort", "watched")
        output = migration.communicate(timeout=60)[0]
    try:
        assert migration.returncode != 0, output
        idle = running_lab.module("hv1", {"name": "watched"}, tmp_path, module="migration_info")
        assert idle["job"]["active"] is False
        assert running_lab.running_guests("hv1") == {"watched"}
        assert "watched" not in running_lab.defined_guests("hv2")
        running_lab.assert_intact("hv1", "watched", running_lab.console("hv1", "watched"))
    finally:
        running_lab.remove_guest("watched")


def wait_for_pass(running_lab, tmp_path, name, wanted_pass, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = running_lab.module("hv1", {"name": name}, tmp_path, module="migration_info")
        assert result.get("failed") is not True, result
        if result["job"]["active"] and result["job"]["pass"] >= wanted_pass:
            return result["job"]
        time.sleep(1)
    raise AssertionError(f"migration_info saw no pass {wanted_pass} of {name} within {timeout} s")
