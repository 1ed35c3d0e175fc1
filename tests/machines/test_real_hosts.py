"""The collection on real systemd hypervisors of three Debian generations, from a fresh install to maintenance.

One scenario, in order, on the same three machines (deb11: Python 3.9, libvirt 7.0, QEMU 5.2; deb12: 3.11, 9.0,
7.2; deb13: 3.13, 11.3, 10.0), each booted by systemd from a fresh debootstrap with sshd, python3 and nftables
with a drop policy, nothing of libvirt: what a new user's hosts look like. A fourth, deb13b (trixie), joins for
the rolling maintenance, which needs a host of the same generation to bring the guests back from. The oldest and
the newest ansible-core the collection claims (2.16 on Python 3.11, 2.20 on Python 3.13) prepare the hosts and
migrate once each. Each step is a test; a step relies on the ones before it.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import NAMES, USER_VENV, host_times, machines, recap

GUEST = "upgraded"
EVACUEE = "evacuee"
OLDEST_CORE, NEWEST_CORE = "2.16", "2.20"
# The firewall of a careful admin: the role must open what migration needs, and nothing is open before it.
NO_FIREWALL = {"hypervisor_manage_firewall": False}


def assert_recap(output, hosts, failed=0, changed=None):
    counts = recap(output)
    for host in hosts:
        assert host in counts, output[-3000:]
        assert counts[host]["failed"] == failed and counts[host]["unreachable"] == 0, output[-6000:]
        if changed is not None:
            assert counts[host]["changed"] == changed, (host, counts[host], changed_tasks(output, host))
    return counts


def changed_tasks(output, host):
    """The tasks that reported a change on host, each with its result line."""
    changed, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line.rstrip(" *")
        elif re.match(rf"changed: \[{re.escape(host)}[\] ]", line):
            changed.append(f"{task}: {line}")
    return changed


def failures(result):
    return [finding for finding in result["findings"] if finding["status"] == "fail"]


def readiness_lines(output):
    return re.findall(r'"msg": "((?:deb\d+): [^"]*)"', output)


@pytest.fixture(scope="module")
def hosts(bare_machines):
    return bare_machines


def test_the_playbooks_run_from_a_users_controller_with_the_collection_from_its_tarball(hosts, user_collections):
    listed = subprocess.run([str(USER_VENV / "bin" / "ansible-galaxy"), "collection", "list", "kvm.live_migration",
                             "--format", "json"], env=hosts.env, capture_output=True, text=True, check=True).stdout
    [(path, found)] = json.loads(listed).items()
    assert path.startswith(str(user_collections)), listed
    assert list(found) == ["kvm.live_migration"], listed
    installed = user_collections / "ansible_collections" / "kvm" / "live_migration"
    assert (installed / "MANIFEST.json").exists() and not (installed / "tests").exists()
    print(subprocess.run([str(USER_VENV / "bin" / "ansible"), "--version"], capture_output=True, text=True,
                         check=True).stdout.splitlines()[0])


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
    print(f"prepare from a fresh install, busy seconds per host: {host_times(output)}")
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
    print(f"prepare (deb13 from a fresh install, the firewall on all), busy seconds per host: {host_times(output)}")
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


def input_rules(hosts, name):
    """The rules of the machine's input chain, in order."""
    listed = hosts.ssh(name, "nft list chain inet filter input")
    return [line.strip() for line in listed.splitlines()
            if line.strip() and not line.strip().startswith(("table", "chain", "type", "}"))]


def test_the_firewall_rule_and_libvirtd_survive_a_reboot(hosts):
    # The next test's second run proves the role changes nothing on it after the reboot.
    live = input_rules(hosts, "deb13")
    assert "kvm.live_migration" in live[0], live  # inserted first, before the admin's own rules
    machines("reboot", "deb13")
    assert input_rules(hosts, "deb13") == live  # loaded at boot in the same place
    assert hosts.ssh("deb13", "systemctl is-enabled libvirtd libvirtd.socket").split() == ["enabled", "enabled"]
    assert hosts.ssh("deb13", "systemctl is-active libvirtd.socket").strip() == "active"
    assert "Running hypervisor: QEMU" in hosts.ssh("deb13", "virsh -c qemu:///system version")
    # deb12 has no guest: its libvirtd exits after 120 idle seconds, as Debian ships it. The second run must take
    # that for the daemon working, not stopped (a run that started it again reported a change).
    hosts.let_libvirtd_exit_idle("deb12")


@pytest.mark.parametrize(("core", "mode"), [(OLDEST_CORE, []), (NEWEST_CORE, ["--check"])],
                         ids=["second-run-2.16", "check-mode-2.20"])
def test_a_second_run_and_check_mode_change_nothing_from_the_oldest_and_the_newest_ansible_core(hosts, core, mode):
    """On every host, deb13 just rebooted among them."""
    print(hosts.controller_version(core))
    code, output = hosts.prepare(*mode, core=core)
    assert code == 0, output[-6000:]
    print(recap(output))
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
    # deb12 keeps the wider range: hosts of one cluster may differ, and migrations to it use its own.
    code, output = hosts.prepare("--limit", "deb12", extra_vars=wider_ports)
    assert code == 0, output[-6000:]
    assert hosts.libvirtd_pid("deb12") != before
    assert hosts.ssh("deb12", "ls /run/kvm-live-migration.restart-pending", check=False).strip() == ""


def test_the_migration_ports_open_to_the_given_sources_only_and_the_running_rules_follow_the_file(hosts, tmp_path):
    """The machines' network, 10.251.78.0/24, is where every peer connects from; the migrations below run under it."""
    wider_on_deb12 = tmp_path / "deb12.yml"  # as the test before left it
    wider_on_deb12.write_text("all:\n  hosts:\n    deb12:\n      hypervisor_migration_port_max: 49300\n")
    code, output = hosts.prepare(extra_vars={"hypervisor_migration_sources": ["10.251.78.0/24"]},
                                 more_inventory=wider_on_deb12)
    assert code == 0, output[-6000:]
    for name in NAMES:
        ours = [rule for rule in input_rules(hosts, name) if "kvm.live_migration" in rule]
        assert len(ours) == 1 and ours[0].startswith("ip saddr") and "10.251.78.0/24" in ours[0], ours
        assert "16514" not in ours[0]
        assert "ip saddr { 10.251.78.0/24 }" in hosts.ssh(name, "cat /etc/nftables.d/kvm-live-migration.nft")
    opened = hosts.module("deb11", "preflight", {"name": GUEST, "dest_host": "deb12"}, tmp_path)
    assert opened["failed"] is False, failures(opened)


@pytest.mark.parametrize(("source", "destination", "core"), [("deb11", "deb12", OLDEST_CORE),
                                                             ("deb12", "deb13", NEWEST_CORE)])
def test_tls_migration_to_the_next_generation_keeps_the_guest_intact(hosts, tmp_path, source, destination, core):
    result = hosts.module(source, "migrate", {"name": GUEST, "dest_host": destination}, tmp_path, core=core)
    assert result.get("failed") is not True, result
    assert result["controller_core"].startswith(f"{core}."), result["controller_core"]
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


def test_evacuate_host_moves_the_oldest_generations_guest_forward(hosts, tmp_path):
    hosts.start_guest("deb11", EVACUEE)
    report_path = tmp_path / "deb11.json"
    code, output = hosts.playbook("kvm.live_migration.evacuate_host",
                                  extra_vars={"target": "deb11", "evacuate_report_path": str(report_path)})
    assert code == 0, output[-6000:]
    report = {entry["name"]: entry for entry in json.loads(report_path.read_text())["report"]}
    moved = report[EVACUEE]
    assert moved["status"] == "migrated" and moved["to"] in ("deb12", "deb13"), moved
    assert not hosts.running_guests("deb11")
    assert EVACUEE in hosts.running_guests(moved["to"])
    print(f"{EVACUEE} -> {moved['to']}: {hosts.assert_intact(moved['to'], EVACUEE)}")


def test_rolling_maintenance_restarts_libvirtd_and_reboots_each_host_with_its_guests_kept(hosts, tmp_path):
    machines("add", "deb13b", timeout=1200)
    code, output = hosts.prepare("--limit", "trixie")
    print(f"prepare deb13b from a fresh install beside deb13, busy seconds per host: {host_times(output)}")
    assert code == 0, output[-6000:]
    machines("share-images", "deb13b")
    trixie = ("deb13", "deb13b")
    guests = {name: hosts.running_guests(name) for name in trixie}
    assert GUEST in guests["deb13"], guests
    boots = {name: hosts.boot_id(name) for name in trixie}
    maintenance = tmp_path / "maintenance.yml"
    maintenance.write_text("- name: Find the guests still running here\n"
                           "  ansible.builtin.command: virsh -q -c qemu:///system list --name\n"
                           "  register: still_running\n  changed_when: false\n"
                           "- name: Refuse to maintain a host that still runs guests\n"
                           "  ansible.builtin.assert:\n    that: still_running.stdout | trim == ''\n"
                           "- name: Restart libvirtd (the maintenance)\n"
                           "  ansible.builtin.systemd_service:\n    name: libvirtd\n    state: restarted\n")

    code, output = hosts.playbook("kvm.live_migration.rolling_maintenance", extra_vars={
        "rolling_maintenance_group": "trixie", "rolling_maintenance_tasks_file": str(maintenance),
        "rolling_maintenance_reboot": True, "rolling_maintenance_report_dir": str(tmp_path)})
    print(f"rolling_maintenance over {trixie}, busy seconds per host: {host_times(output)}")
    assert code == 0, output[-6000:]
    counts = assert_recap(output, trixie)
    assert all(counts[name]["changed"] > 0 for name in trixie), counts
    assert output.count("TASK [Restart libvirtd (the maintenance)]") == len(trixie), output[-6000:]
    for name in trixie:
        assert hosts.boot_id(name) != boots[name], f"{name} was not rebooted"
        assert hosts.running_guests(name) == guests[name], (name, guests[name])
        report = json.loads((tmp_path / f"{name}.json").read_text())["report"]
        assert sorted(entry["name"] for entry in report if entry["status"] == "migrated") == sorted(guests[name])
    for name in trixie:
        for guest in sorted(guests[name]):
            print(f"{guest} back on {name}: {hosts.assert_intact(name, guest)}")


def test_migrate_evacuate_host_and_return_guests_take_their_variables_from_group_vars(hosts, tmp_path):
    # The user's inventory beside the machines': every variable in group_vars, none on the command line.
    result_file, report = tmp_path / "migrate.json", tmp_path / "deb13b-evacuation.json"
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text("all:\n  children:\n    hypervisors: {}\n")
    (inventory / "group_vars" / "all.yml").write_text(json.dumps({"migrate_source": "deb13", "target": "deb13b"}))
    (inventory / "group_vars" / "hypervisors.yml").write_text(json.dumps({
        "migrate_guest": GUEST, "migrate_destination": "deb13b", "migrate_result_file": str(result_file),
        "evacuate_group": "trixie", "evacuate_report_path": str(report), "evacuate_return_report_path": str(report)}))

    code, output = hosts.playbook("kvm.live_migration.migrate", more_inventory=inventory)
    assert code == 0, output[-6000:]
    migration = json.loads(result_file.read_text())["migration"]
    assert (migration["status"], migration["owner"]) == ("completed", "deb13b"), migration
    print(f"migrate: {hosts.assert_intact('deb13b', GUEST)}")

    code, output = hosts.playbook("kvm.live_migration.evacuate_host", more_inventory=inventory)
    assert code == 0, output[-6000:]
    moved = {entry["name"]: entry for entry in json.loads(report.read_text())["report"]}
    assert moved[GUEST]["status"] == "migrated" and moved[GUEST]["to"] == "deb13", moved
    assert not hosts.running_guests("deb13b")

    code, output = hosts.playbook("kvm.live_migration.return_guests", more_inventory=inventory)
    assert code == 0, output[-6000:]
    assert GUEST in hosts.running_guests("deb13b")
    print(f"return_guests: {hosts.assert_intact('deb13b', GUEST)}")
