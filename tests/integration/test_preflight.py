"""host_info and preflight against two real hypervisors: each problem is found, with its fix, before anything moves."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import jmespath
import pytest
from conftest import REPO, lab, qemu_version

GUEST = "preflighted"
LAB_TRANSPORT = {"dest_host": "hv2"}  # transport: tls, the default, with the certificates prepare_hosts issued
AES_CPU = ("<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model>"
           "<feature policy='require' name='aes'/></cpu>")
BRIDGE = "kvmlmbr1"
BRIDGED = f"<interface type='bridge'><source bridge='{BRIDGE}'/><model type='e1000'/></interface>"
OVERCOMMIT = Path("/proc/sys/vm/overcommit_memory")

# The json_query expressions documented in docs/preflight.md, applied to host_info's JSON.
RUNNING_GUESTS = "domains[?state=='running'].name"
SUPPORTED_FEATURES = "migration_features[?supported].name"
ACCELERATOR = "virtualization.accelerator"
FAILED_CHECKS = "findings[?status=='fail'].check"


@pytest.fixture(scope="module")
def quiet_guest(running_lab):
    """A 256 MiB guest on hv1 rewriting 100 pages/s of 16 MiB."""
    running_lab.start_guest("hv1", GUEST, memory_mib=256, dirty_mib=16, pages_per_s=100)
    yield GUEST
    running_lab.remove_guest(GUEST)


def preflight(running_lab, tmp_path, name, **options):
    return running_lab.module("hv1", {"name": name, **LAB_TRANSPORT, **options}, tmp_path, module="preflight")


def findings(result, check):
    return [finding for finding in result["findings"] if finding["check"] == check]


def assert_fails_only(result, check, message, fix):
    assert result["failed"] is True
    assert result["ok"] is False
    assert jmespath.search(FAILED_CHECKS, result) == [check], result["findings"]
    [failure] = [finding for finding in findings(result, check) if finding["status"] == "fail"]
    assert message in failure["message"]
    assert fix in failure["fix"]
    assert f"{check}: " in result["msg"] and "(fix: " in result["msg"]


def assert_nothing_moved(running_lab, name):
    assert name in running_lab.running_guests("hv1")
    assert name not in running_lab.defined_guests("hv2")


@pytest.mark.stock
def test_host_info_reports_tcg_honestly(running_lab, quiet_guest, tmp_path):
    facts = running_lab.module("hv1", {}, tmp_path, module="host_info")
    assert facts.get("failed") is not True, facts
    virtualization = facts["virtualization"]
    assert (virtualization["kvm_usable"], virtualization["hw_flag"]) == (False, None)
    assert jmespath.search(ACCELERATOR, facts) == "tcg"
    assert "neither vmx (Intel VT-x) nor svm (AMD-V)" in virtualization["reason"]
    assert "guests run emulated (TCG)" in virtualization["reason"]
    assert "qemu" in virtualization["libvirt_domain_types"]
    host = facts["host"]
    daemon = re.search(r"daemon: ([\d.]+)", lab("exec", "hv1", "virsh", "-c", "qemu:///system", "version",
                                                "--daemon").stdout).group(1)
    assert (host["hostname"], host["arch"], host["libvirt_version"]) == ("hv1", "x86_64", daemon)
    assert host["uuid"] == lab("host-uuid", "hv1").stdout.strip()
    assert isinstance(host["memory"]["available_bytes"], int) and host["memory"]["available_bytes"] > 0
    assert host["migration_ports"] == {"min": 49152, "max": 49215}
    # The hypervisor role (lab.sh up) sets vm.unprivileged_userfaultfd=1 only where QEMU has no /dev/userfaultfd.
    assert (host["post_copy"]["possible"], host["post_copy"]["via"]) == (
        True, "device" if qemu_version() >= (8, 1) else "sysctl"), host["post_copy"]
    assert (host["tls"]["configured"], host["tls"]["problems"]) == (True, []), host["tls"]
    assert host["qemu_version"].split(".")[:2] == [str(part) for part in qemu_version()]
    assert GUEST in jmespath.search(RUNNING_GUESTS, facts)
    assert {"auto_converge", "post_copy", "dirty_rate"} <= set(jmespath.search(SUPPORTED_FEATURES, facts))
    [guest] = [domain for domain in facts["domains"] if domain["name"] == GUEST]
    assert (guest["memory_bytes"], guest["vcpus"], guest["domain_type"], guest["migratable"]) == (
        256 * 1024 * 1024, 1, "qemu", True)


@pytest.mark.stock
def test_a_clean_pair_passes(running_lab, quiet_guest, tmp_path):
    result = preflight(running_lab, tmp_path, quiet_guest, measure_dirty_rate=True, bandwidth=64)
    assert result.get("failed") is not True, result
    assert result["ok"] is True
    assert {finding["status"] for finding in result["findings"]} == {"ok"}, result["findings"]
    checks = {finding["check"] for finding in result["findings"]}
    assert checks == {"host_identity", "transport", "tls", "ports", "versions", "architecture", "machine_type", "cpu",
                      "memory", "storage", "network", "devices", "guest_state", "migration_job", "destination_name",
                      "convergence"}
    assert any("in storage pool kvmlm-images" in finding["message"] for finding in findings(result, "storage"))
    assert "ratio" in findings(result, "convergence")[0]["message"]
    assert_nothing_moved(running_lab, quiet_guest)


@pytest.mark.stock
def test_tls_missing_on_the_destination_fails_with_the_fix_before_anything_moves(running_lab, quiet_guest, tmp_path):
    lab("exec", "hv2", "mv", "/etc/pki/qemu", "/etc/pki/qemu.moved")
    try:
        result = preflight(running_lab, tmp_path, quiet_guest)
    finally:
        lab("exec", "hv2", "mv", "/etc/pki/qemu.moved", "/etc/pki/qemu")
    assert_fails_only(result, "tls",
                      "hv2 has no /etc/pki/qemu, where QEMU reads the certificates to receive a migration",
                      "run the kvm.live_migration.hypervisor role (playbook kvm.live_migration.prepare_hosts)")
    assert_nothing_moved(running_lab, quiet_guest)


@pytest.mark.stock
def test_a_missing_bridge_stops_the_playbook_before_anything_moves(running_lab, tmp_path):
    lab("exec", "hv1", "sh", "-c", f"ip link add {BRIDGE} type bridge && ip link set {BRIDGE} up")
    try:
        running_lab.start_guest("hv1", "bridged", memory_mib=256, dirty_mib=16, devices=BRIDGED)
        result = preflight(running_lab, tmp_path, "bridged")
        assert_fails_only(result, "network", f"hv2 has no bridge {BRIDGE}", f"create bridge {BRIDGE}")

        result_file = tmp_path / "migration.json"
        code, output = running_lab.playbook(REPO / "playbooks" / "migrate.yml", {
            "migrate_guest": "bridged", "migrate_source": "hv1", "migrate_destination": "hv2",
            "migrate_transport": "tcp", "migrate_allow_insecure": True, "migrate_result_file": str(result_file)})
        assert code != 0, output
        assert f"hv2 has no bridge {BRIDGE}" in output
        assert json.loads(result_file.read_text())["preflight"]["failed_checks"] == ["network"]
        assert running_lab.running_guests("hv1") >= {"bridged"}
        assert "bridged" not in running_lab.defined_guests("hv2")
    finally:
        running_lab.remove_guest("bridged")
        lab("exec", "hv1", "ip", "link", "del", BRIDGE, check=False)


def test_the_name_already_running_on_the_destination_fails(running_lab, quiet_guest, tmp_path):
    running_lab.start_guest("hv2", quiet_guest, memory_mib=256, dirty_mib=16)  # another guest, same name
    try:
        result = preflight(running_lab, tmp_path, quiet_guest)
        assert_fails_only(result, "destination_name", f"a different guest named {quiet_guest} (UUID ",
                          "rename or remove that guest on hv2")
        assert "is running on hv2" in findings(result, "destination_name")[0]["message"]
    finally:
        running_lab.virsh("hv2", "destroy", quiet_guest)
        running_lab.virsh("hv2", "undefine", quiet_guest)
    assert_nothing_moved(running_lab, quiet_guest)


def test_both_hosts_with_the_same_host_uuid_fail(running_lab, quiet_guest, tmp_path):
    hv1_uuid = lab("host-uuid", "hv1").stdout.strip()
    lab("host-uuid", "hv2", hv1_uuid)
    try:
        result = preflight(running_lab, tmp_path, quiet_guest)
        assert_fails_only(result, "host_identity", f"report the same host UUID {hv1_uuid}",
                          "unique host_uuid in /etc/libvirt/libvirtd.conf")
    finally:
        lab("host-uuid", "hv2", "restore")
    assert lab("host-uuid", "hv2").stdout.strip() != hv1_uuid
    assert_nothing_moved(running_lab, quiet_guest)


def test_a_cpu_feature_the_destination_lacks_is_named(running_lab, tmp_path):
    running_lab.start_guest("hv1", "aes", memory_mib=256, dirty_mib=16, cpu=AES_CPU)
    try:
        before = preflight(running_lab, tmp_path, "aes")
        assert [finding["status"] for finding in findings(before, "cpu")] == ["ok"], before["findings"]
        lab("hide-cpu-feature", "hv2", "aes")
        try:
            result = preflight(running_lab, tmp_path, "aes")
        finally:
            lab("restore-cpu-features", "hv2")
        assert_fails_only(result, "cpu", "hv2's CPU lacks features the guest's CPU", "whose CPU has aes")
        assert findings(result, "cpu")[0]["message"].endswith("requires: aes")
        assert_nothing_moved(running_lab, "aes")
    finally:
        running_lab.remove_guest("aes")


def test_a_guest_larger_than_the_destinations_free_memory_fails(running_lab, tmp_path):
    destination = running_lab.module("hv2", {"domains": [], "probe_kvm": False}, tmp_path, module="host_info")
    available_mib = destination["host"]["memory"]["available_bytes"] // (1024 * 1024)
    memory_mib = available_mib + 2048
    # The guest's memory is allocated as it is touched; overcommit lets QEMU reserve more than the host has.
    overcommit = OVERCOMMIT.read_text()
    OVERCOMMIT.write_text("1")
    try:
        running_lab.start_guest("hv1", "large", memory_mib=memory_mib, dirty_mib=16)
    finally:
        OVERCOMMIT.write_text(overcommit)
    try:
        result = preflight(running_lab, tmp_path, "large")
        assert_fails_only(result, "memory", f"the guest needs {memory_mib:,} MiB plus a 512 MiB margin",
                          "choose a destination with at least")
        assert_nothing_moved(running_lab, "large")
    finally:
        with contextlib.suppress(Exception):
            running_lab.remove_guest("large")
