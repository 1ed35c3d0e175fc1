"""The collection on real systemd hypervisors of three Debian generations, from a fresh install to migrations.

One scenario, in order, on the same three machines (deb11: Python 3.9, libvirt 7.0, QEMU 5.2; deb12: 3.11, 9.0,
7.2; deb13: 3.13, 11.3, 10.0), each booted by systemd from a fresh debootstrap with sshd, python3 and nftables
with a drop policy, nothing of libvirt: what a new user's hosts look like. Each step is a test; a step relies on
the ones before it.
"""

from __future__ import annotations

import re

import pytest
from conftest import NAMES, machines, recap

GUEST = "upgraded"
# The firewall of a careful admin: the role must open what migration needs, and nothing is open before it.
NO_FIREWALL = {"hypervisor_manage_firewall": False}


def assert_recap(output, hosts, failed=0, changed=None):
    counts = recap(output)
    for host in hosts:
        assert host in counts, output[-3000:]
        assert counts[host]["failed"] == failed and counts[host]["unreachable"] == 0, output[-6000:]
        if changed is not None:
            assert counts[host]["changed"] == changed, f"{host}: {counts[host]}\n{output[-6000:]}"
    return counts


def failures(result):
    return [finding for finding in result["findings"] if finding["status"] == "fail"]


def readiness_lines(output):
    return re.findall(r'"msg": "((?:deb\d+): [^"]*)"', output)


@pytest.fixture(scope="module")
def hosts(bare_machines):
    return bare_machines


def test_check_mode_on_bare_hosts_reports_and_installs_nothing(hosts):
    code, output = hosts.prepare("--check")
    assert code == 0, output[-6000:]
    counts = assert_recap(output, NAMES)
    assert all(counts[name]["changed"] > 0 for name in NAMES), counts
    for name in NAMES:
        assert hosts.ssh(name, "command -v libvirtd || echo absent").strip() == "absent"


def test_a_failed_host_does_not_stop_the_others(hosts, tmp_path):
    # deb13 fails the role's own check of its request; deb11 and deb12 are prepared, without the firewall yet.
    broken = tmp_path / "broken.yml"
    broken.write_text("all:\n  hosts:\n    deb13:\n      hypervisor_migration_port_min: 70000\n")
    code, output = hosts.prepare(extra_vars=NO_FIREWALL, more_inventory=broken)
    assert code != 0
    assert_recap(output, ["deb11", "deb12"])
    assert recap(output)["deb13"]["failed"] == 1, output[-4000:]
    assert "UndefinedMarker" not in output and "undefined" not in output.lower(), output[-6000:]


def test_the_firewall_refuses_migration_until_the_role_opens_it(hosts, tmp_path):
    hosts.start_guest("deb11", GUEST)
    closed = hosts.module("deb11", "preflight", {"name": GUEST, "dest_host": "deb12"}, tmp_path)
    assert closed["failed"] is True
    refused = {finding["check"] for finding in closed["findings"] if finding["status"] == "fail"}
    assert refused & {"ports", "transport"}, closed["findings"]

    code, output = hosts.prepare()
    assert code == 0, output[-6000:]
    assert_recap(output, NAMES)
    for name in NAMES:
        assert hosts.ssh(name, "systemctl is-enabled libvirtd").strip() == "enabled"
        assert "kvm.live_migration" in hosts.ssh(name, "nft list ruleset")
    lines = readiness_lines(output)
    assert len(lines) == len(NAMES), lines
    assert all("post-copy possible" in line and "TLS ready" in line for line in lines), lines
    machines("share-images")  # the image directory, shared by every host, as a libvirt pool (the storage check)
    opened = hosts.module("deb11", "preflight", {"name": GUEST, "dest_host": "deb12"}, tmp_path)
    assert opened["failed"] is False, failures(opened)


def test_a_second_run_and_check_mode_change_nothing(hosts):
    code, output = hosts.prepare()
    assert code == 0, output[-6000:]
    assert_recap(output, NAMES, changed=0)
    code, output = hosts.prepare("--check")
    assert code == 0, output[-6000:]
    assert_recap(output, NAMES, changed=0)


def test_a_restart_left_pending_by_a_failed_run_happens_on_the_next_run(hosts):
    before = hosts.libvirtd_pid("deb12")
    wider_ports = {"hypervisor_migration_port_max": 49300}
    # qemu.conf changes, then the run fails (the CA files do not exist) before its handlers restart libvirtd.
    missing_ca = {"hypervisor_tls_ca_cert": "/nonexistent/ca.pem", "hypervisor_tls_ca_key": "/nonexistent/key.pem"}
    code, output = hosts.prepare("--limit", "deb12", extra_vars={**wider_ports, **missing_ca})
    assert code != 0 and recap(output)["deb12"]["failed"] == 1, output[-4000:]
    assert "migration_port_max = 49300" in hosts.ssh("deb12", "cat /etc/libvirt/qemu.conf")
    assert hosts.libvirtd_pid("deb12") == before
    assert hosts.ssh("deb12", "ls /run/kvm-live-migration.restart-pending").strip()

    # The next run finds qemu.conf as it wants it, and restarts libvirtd all the same.
    code, output = hosts.prepare("--limit", "deb12", extra_vars=wider_ports)
    assert code == 0, output[-6000:]
    assert hosts.libvirtd_pid("deb12") != before
    assert hosts.ssh("deb12", "ls /run/kvm-live-migration.restart-pending", check=False).strip() == ""

    code, output = hosts.prepare("--limit", "deb12")  # back to the ports of the other hosts
    assert code == 0, output[-6000:]


def test_the_firewall_rule_survives_a_reboot(hosts):
    code, output = hosts.prepare("--limit", "deb13")
    assert code == 0, output
    machines("reboot", "deb13")
    assert "kvm.live_migration" in hosts.ssh("deb13", "nft list ruleset")
    assert hosts.ssh("deb13", "systemctl is-active libvirtd").strip() == "active"
    code, output = hosts.prepare("--limit", "deb13")
    assert code == 0, output[-6000:]
    assert_recap(output, ["deb13"], changed=0)


@pytest.mark.parametrize(("source", "destination"), [("deb11", "deb12"), ("deb12", "deb13")])
def test_tls_migration_to_the_next_generation_keeps_the_guest_intact(hosts, tmp_path, source, destination):
    result = hosts.module(source, "migrate", {"name": GUEST, "dest_host": destination}, tmp_path)
    assert result.get("failed") is not True, result
    migration = result["migration"]
    assert migration["status"] == "completed" and migration["transport"] == "tls", migration
    assert GUEST in hosts.running_guests(destination)
    assert GUEST not in hosts.running_guests(source)
    print(hosts.assert_intact(destination, GUEST))


@pytest.mark.parametrize(("source", "destination"), [("deb13", "deb12"), ("deb13", "deb11")])
def test_a_move_to_an_older_generation_is_refused_by_preflight_before_anything_moves(hosts, tmp_path, source,
                                                                                     destination):
    result = hosts.module(source, "preflight", {"name": GUEST, "dest_host": destination}, tmp_path)
    assert result["failed"] is True
    refused = {finding["check"]: finding for finding in result["findings"] if finding["status"] == "fail"}
    assert "versions" in refused, result["findings"]
    assert f"{destination} runs older software than {source}" in refused["versions"]["message"]
    assert GUEST in hosts.running_guests(source)
    assert GUEST not in hosts.defined_guests(destination)
    print(result["msg"])
