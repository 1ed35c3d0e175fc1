"""Host maintenance in the lab: evacuate hv1 and bring its guests back (rolling maintenance: tests/machines).

The evacuation runs as AWX runs a job template: ansible-runner on the AWX project of docs/awx/project,
with the survey's answers (docs/awx/evacuate_host.survey.json) as extra vars; its set_stats artifact
must carry every guest. Every guest's memory is verified intact wherever it ends.
"""

from __future__ import annotations

import itertools
import json

import ansible_runner
import pytest
from conftest import REPO, lab

AWX = REPO / "docs" / "awx"
RUNNING = ("ev1", "ev2", "ev3")
STOPPED = "evs"
BRIDGE = "kvmlmbr2"
BRIDGED = f"<interface type='bridge'><source bridge='{BRIDGE}'/><model type='e1000'/></interface>"


def survey_answers(name, **answers):
    """The extra vars AWX passes for a survey answered with its defaults, except ``answers``."""
    spec = json.loads((AWX / f"{name}.survey.json").read_text())["spec"]
    return {**{question["variable"]: question["default"] for question in spec if question["default"] != ""},
            **answers}


def run_job_template(running_lab, tmp_path, playbook, extra_vars):
    """ansible-runner, as AWX runs a job: (runner, its output, the set_stats artifacts of the run)."""
    private_data_dir = tmp_path / "runner"
    private_data_dir.mkdir()
    runner = ansible_runner.run(
        private_data_dir=str(private_data_dir), project_dir=str(AWX / "project"), playbook=playbook,
        inventory=str(running_lab.inventory), extravars=extra_vars, quiet=True,
        envvars={key: running_lab.env[key] for key in ("PATH", "ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_NOCOLOR")})
    output = runner.stdout.read()
    stats = next(event for event in runner.events if event["event"] == "playbook_on_stats")
    return runner, output, stats["event_data"].get("artifact_data", {})


def most_at_once(report):
    """The largest number of the report's migrations whose [started_at, ended_at] overlap."""
    edges = sorted(itertools.chain.from_iterable(
        ((entry["started_at"], 1), (entry["ended_at"], -1)) for entry in report if entry["status"] == "migrated"),
        key=lambda edge: (edge[0], edge[1]))
    return max(itertools.accumulate(change for _when, change in edges), default=0)


@pytest.fixture
def hv1_guests(running_lab):
    """Three running guests (256 MiB, 32 MiB rewritten at 200 pages/s) and one stopped guest on hv1."""
    for name in (*RUNNING, STOPPED):
        running_lab.start_guest("hv1", name, memory_mib=256, dirty_mib=32, pages_per_s=200)
    running_lab.virsh("hv1", "destroy", STOPPED)
    yield RUNNING
    for name in (*RUNNING, STOPPED):
        running_lab.remove_guest(name)


def test_evacuate_host_from_awx_empties_hv1_and_return_guests_brings_every_guest_back(
        running_lab, hv1_guests, tmp_path):
    # --check prints the plan and moves nothing.
    code, output = running_lab.playbook(REPO / "playbooks" / "evacuate_host.yml", {"target": "hv1"}, check=True)
    assert code == 0, output
    for name in RUNNING:
        assert f"{name}: would_migrate to hv2" in output
    assert f"{STOPPED}: would_move to hv2" in output
    assert running_lab.running_guests("hv1") == set(RUNNING)
    assert running_lab.defined_guests("hv2") == set()
    # A JMESPath query over host_info's guests selects what moves.
    code, output = running_lab.playbook(REPO / "playbooks" / "evacuate_host.yml", {
        "target": "hv1", "evacuate_guests_query": "[?state=='running' && name!='ev2'].name"}, check=True)
    assert code == 0, output
    assert "ev1: would_migrate" in output and "ev3: would_migrate" in output
    assert "ev2:" not in output and f"{STOPPED}:" not in output

    before = {name: running_lab.console("hv1", name) for name in RUNNING}
    report_path = tmp_path / "hv1-evacuation.json"
    answers = survey_answers("evacuate_host", target="hv1", evacuate_progress_interval=2,
                             evacuate_report_path=str(report_path))
    runner, output, artifacts = run_job_template(running_lab, tmp_path, "evacuate_host.yml", answers)
    assert (runner.status, runner.rc) == ("successful", 0), output

    # AWX's artifact: every guest, keyed by name, with where it went and how.
    guests = artifacts["kvm_live_migration_evacuation"]
    assert sorted(guests) == sorted((*RUNNING, STOPPED))
    for name in RUNNING:
        assert (guests[name]["status"], guests[name]["from"], guests[name]["to"], guests[name]["attempts"]) == (
            "migrated", "hv1", "hv2", 1), guests[name]
        assert guests[name]["downtime_ms"] is not None and guests[name]["strategy"] == "precopy"
    assert (guests[STOPPED]["status"], guests[STOPPED]["owner"]) == ("moved", "hv2")
    # The report: at most two migrations at once (evacuate_concurrency's default), and two did run together.
    report = json.loads(report_path.read_text())["report"]
    assert most_at_once(report) == 2, report
    # Progress lines came while it ran.
    assert "guests done" in output and " -> hv2: " in output, output

    assert running_lab.running_guests("hv2") == set(RUNNING)
    assert running_lab.defined_guests("hv2") == {*RUNNING, STOPPED}
    assert running_lab.defined_guests("hv1") == set()
    arrived = {name: running_lab.assert_intact("hv2", name, before[name]) for name in RUNNING}

    code, output = running_lab.playbook(REPO / "playbooks" / "return_guests.yml", {
        "target": "hv1", "evacuate_return_report_path": str(report_path)})
    assert code == 0, output
    assert running_lab.running_guests("hv1") == set(RUNNING)
    assert running_lab.defined_guests("hv1") == {*RUNNING, STOPPED}
    assert running_lab.defined_guests("hv2") == set()
    for name in RUNNING:
        running_lab.assert_intact("hv1", name, arrived[name])


def test_an_evacuation_moves_what_it_can_and_fails_naming_the_guest_that_cannot_move(running_lab, tmp_path):
    lab("exec", "hv1", "sh", "-c", f"ip link add {BRIDGE} type bridge && ip link set {BRIDGE} up")
    try:
        running_lab.start_guest("hv1", "bridged", memory_mib=256, dirty_mib=16, devices=BRIDGED)
        running_lab.start_guest("hv1", "movable", memory_mib=256, dirty_mib=16)
        before = {name: running_lab.console("hv1", name) for name in ("bridged", "movable")}
        report_path = tmp_path / "report.json"
        code, output = running_lab.playbook(REPO / "playbooks" / "evacuate_host.yml", {
            "target": "hv1", "evacuate_report_path": str(report_path)})

        assert code != 0, output  # evacuate_unmovable's default, fail, fails the play
        assert "bridged" in output and f"hv2 has no bridge {BRIDGE}" in output
        entries = json.loads(report_path.read_text())["guests"]
        assert entries["movable"]["status"] == "migrated"
        assert (entries["bridged"]["status"], entries["bridged"]["owner"]) == ("failed", "hv1")
        assert f"hv2 has no bridge {BRIDGE}" in entries["bridged"]["refusals"]["hv2"][0]
        assert running_lab.running_guests("hv1") == {"bridged"}
        assert running_lab.running_guests("hv2") == {"movable"}
        running_lab.assert_intact("hv2", "movable", before["movable"])
        running_lab.assert_intact("hv1", "bridged", before["bridged"])

        # A roll stops at the first host it cannot empty: hv1 is not maintained, hv2 is never reached.
        maintained = tmp_path / "maintained.log"
        tasks = tmp_path / "maintenance.yml"
        tasks.write_text(f"- name: Note the host\n  ansible.builtin.shell: echo {{{{ inventory_hostname }}}} >> "
                         f"{maintained}\n  changed_when: true\n")
        code, output = running_lab.playbook(REPO / "playbooks" / "rolling_maintenance.yml", {
            "rolling_maintenance_tasks_file": str(tasks)})
        assert code != 0, output
        assert not maintained.exists(), maintained.read_text()
        assert (running_lab.running_guests("hv1"), running_lab.running_guests("hv2")) == ({"bridged"}, {"movable"})

        # Allowed to stay (evacuate_unmovable: leave), the guest still keeps its host from maintenance and reboot.
        code, output = running_lab.playbook(REPO / "playbooks" / "rolling_maintenance.yml", {
            "rolling_maintenance_tasks_file": str(tasks), "evacuate_unmovable": "leave",
            "rolling_maintenance_reboot": True})
        assert code != 0, output
        assert "hv1 still runs bridged (running) after its evacuation" in output, output[-3000:]
        assert "TASK [Reboot the host]" not in output
        assert not maintained.exists(), maintained.read_text()
        assert (running_lab.running_guests("hv1"), running_lab.running_guests("hv2")) == ({"bridged"}, {"movable"})
        running_lab.assert_intact("hv1", "bridged", before["bridged"])
    finally:
        running_lab.remove_guest("bridged")
        running_lab.remove_guest("movable")
        lab("exec", "hv1", "ip", "link", "del", BRIDGE, check=False)
