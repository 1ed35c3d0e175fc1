"""Each playbook takes its variables from the inventory with Ansible's usual precedence: set in group_vars (the one
that chooses the hosts in group_vars/all, some overridden in host_vars or extra vars), they reach the tasks that use
them; a bad one is refused, naming it, before anything runs.

The playbooks run by their FQCN against hosts whose connection is local, from a copy of the collection (its
playbooks, roles and meta linked) whose preflight, migrate, evacuate and host_info are action plugins that record
their arguments and answer on the controller: nothing reaches a hypervisor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

FAKE_ACTION = '''
import json
import os

from ansible.plugins.action import ActionBase


def _evacuate(host, args):
    guests = args.get("guests") or ["g1"]
    entries = [{"name": name, "status": "migrated", "from": host, "to": min(args["destinations"]), "why": "recorded"}
               for name in guests]
    return {"evacuation": {"source": host, "ok": True, "report": entries, "summary": "recorded",
                           "guests": {entry["name"]: entry for entry in entries}}}


ANSWERS = {
    "preflight": lambda host, args: {"ok": True, "findings": []},
    "migrate": lambda host, args: {},
    "evacuate": _evacuate,
    # The guests each host runs: {host: [{"name", "state"}]} in KVMLM_FAKE_DOMAINS; none by default.
    "host_info": lambda host, args: {"virtualization": {"kvm_usable": False},
                                     "domains": json.loads(os.environ.get("KVMLM_FAKE_DOMAINS", "{}")).get(host, [])},
}


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        name = self._task.action.rpartition(".")[2]
        host = self._task.delegate_to or task_vars["inventory_hostname"]
        with open(os.environ["KVMLM_FAKE_CALLS"], "a") as calls:
            calls.write(json.dumps({"module": name, "host": host, "args": dict(self._task.args)}) + "\\n")
        return {"changed": False, **ANSWERS[name](host, args=self._task.args)}
'''


class Run(NamedTuple):
    code: int
    output: str
    calls: list

    def of(self, module):
        return [(call["host"], call["args"]) for call in self.calls if call["module"] == module]


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    root = tmp_path_factory.mktemp("collections")
    collection = root / "ansible_collections" / "kvm" / "live_migration"
    (collection / "plugins" / "action").mkdir(parents=True)
    for name in ("meta", "playbooks", "roles", "plugins/filter"):
        (collection / name).symlink_to(REPO / name)
    for module in ("preflight", "migrate", "evacuate", "host_info"):
        (collection / "plugins" / "action" / f"{module}.py").write_text(FAKE_ACTION)
    return root


@pytest.fixture
def run(collections, tmp_path):
    """run(playbook, groups={group: [hosts]}, group_vars={group: vars}, host_vars=..., extra_vars=..., check=False,
    domains={host: [guests host_info reports]})"""

    def run_playbook(playbook, groups, group_vars, host_vars=None, extra_vars=None, check=False, domains=None):
        inventory = tmp_path / "inventory"
        for kind, variables in (("group_vars", group_vars), ("host_vars", host_vars or {})):
            (inventory / kind).mkdir(parents=True)
            for name, values in variables.items():
                (inventory / kind / f"{name}.yml").write_text(yaml.safe_dump(values))
        (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "children": {group: {"hosts": dict.fromkeys(hosts)} for group, hosts in groups.items()}}}))
        calls = tmp_path / "calls.jsonl"
        command = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), f"kvm.live_migration.{playbook}"]
        command += ["-e", json.dumps(extra_vars)] if extra_vars else []
        command += ["--check"] if check else []
        # This copy first; community.general (the evacuate role's json_query) from wherever it is installed.
        collections_path = os.pathsep.join(filter(None, [str(collections),
                                                         os.environ.get("ANSIBLE_COLLECTIONS_PATH")]))
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": collections_path, "KVMLM_FAKE_CALLS": str(calls),
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_RETRY_FILES_ENABLED": "false",
               "KVMLM_FAKE_DOMAINS": json.dumps(domains or {})}
        completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                                   timeout=120)
        recorded = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
        return Run(completed.returncode, completed.stdout + completed.stderr, recorded)

    return run_playbook


def test_migrate_takes_its_variables_from_the_inventory(run, tmp_path):
    result_file = tmp_path / "result.json"
    group_vars = {
        "all": {"migrate_source": "hv1"},
        "hypervisors": {"migrate_guest": "web01", "migrate_destination": "hv2", "migrate_transport": "ssh",
                        "migrate_bandwidth": 64, "migrate_max_downtime_ms": 300, "migrate_allow_auto_converge": False,
                        "migrate_timeout": 120, "migrate_result_file": str(result_file)}}
    done = run("migrate", {"hypervisors": ["hv1", "hv2"]}, group_vars=group_vars,
               host_vars={"hv1": {"migrate_bandwidth": 128}}, extra_vars={"migrate_max_downtime_ms": 250})
    assert done.code == 0, done.output
    assert done.of("preflight") == [("hv1", {"name": "web01", "dest_host": "hv2", "transport": "ssh"})]
    [(host, args)] = done.of("migrate")
    # ansible-core before 2.19 templates a number into the arguments as text; the module converts it.
    assert (host, {option: str(value) for option, value in args.items()}) == ("hv1", {
        "name": "web01", "dest_host": "hv2", "transport": "ssh", "allow_auto_converge": "False", "timeout": "120",
        "bandwidth": "128", "max_downtime_ms": "250"})  # host_vars over group_vars, extra vars over both
    assert json.loads(result_file.read_text())["changed"] is False  # where group_vars said


def test_evacuate_host_takes_its_variables_from_the_inventory(run, tmp_path):
    report = tmp_path / "hv1.json"
    done = run("evacuate_host", {"hypervisors": ["hv1", "hv2"], "pool": ["hv1", "hv2", "hv3"]}, group_vars={
        "all": {"target": "hv1"},
        "hypervisors": {"evacuate_group": "pool", "evacuate_transport": "ssh", "evacuate_concurrency": 3,
                        "evacuate_report_path": str(report)}})
    assert done.code == 0, done.output
    [(host, args)] = done.of("evacuate")
    assert (host, sorted(args["destinations"]), args["transport"], str(args["concurrency"])) == (
        "hv1", ["hv2", "hv3"], "ssh", "3")
    assert json.loads(report.read_text())["source"] == "hv1"


@pytest.mark.parametrize(("query", "moved"), [
    pytest.param("[?state=='running'].name", ["db1"], id="names"),
    pytest.param("[?state=='paused'].name", [], id="nothing-selected"),
    pytest.param("[?state=='paused'] | [0].name", [], id="null-moves-nothing"),
])
def test_evacuate_guests_query_moves_what_it_names_and_nothing_when_it_answers_null(run, query, moved):
    done = run("evacuate_host", {"hypervisors": ["hv1", "hv2"]}, group_vars={
        "all": {"target": "hv1"}, "hypervisors": {"evacuate_guests_query": query}},
        domains={"hv1": [{"name": "db1", "state": "running"}, {"name": "old", "state": "shutoff"}]})
    assert done.code == 0, done.output
    [(host, args)] = done.of("evacuate")
    assert (host, args["guests"]) == ("hv1", moved)


def test_evacuate_guests_query_that_answers_no_names_is_refused_before_anything_moves(run):
    done = run("evacuate_host", {"hypervisors": ["hv1", "hv2"]}, group_vars={
        "all": {"target": "hv1"}, "hypervisors": {"evacuate_guests_query": "[?state=='running']"}},
        domains={"hv1": [{"name": "db1", "state": "running"}]})
    assert done.code != 0
    assert "not a list of guest names: end it with .name" in done.output, done.output
    assert done.of("evacuate") == []


def test_return_guests_takes_its_variables_from_the_inventory(run, tmp_path):
    saved = tmp_path / "evacuation.json"
    saved.write_text(json.dumps({"source": "hv1", "report": [
        {"name": "g1", "status": "migrated", "to": "hv2"}, {"name": "g2", "status": "left", "to": None}]}))
    done = run("return_guests", {"hypervisors": ["hv1", "hv2"]}, group_vars={
        "all": {"target": "hv1"},
        "hypervisors": {"evacuate_return_report_path": str(saved), "evacuate_transport": "ssh",
                        "evacuate_bandwidth": 32}})
    assert done.code == 0, done.output
    [(host, args)] = done.of("evacuate")
    assert (host, args["destinations"], args["guests"]) == ("hv2", ["hv1"], ["g1"])
    assert (args["transport"], str(args["bandwidth"])) == ("ssh", "32")


def test_rolling_maintenance_takes_its_variables_from_the_inventory(run, tmp_path):
    maintained, reports, last_report = tmp_path / "maintained", tmp_path / "reports", tmp_path / "last.json"
    reports.mkdir()
    tasks = tmp_path / "maintain.yml"
    tasks.write_text(yaml.safe_dump([{"name": "Note the host", "ansible.builtin.lineinfile": {
        "path": str(maintained), "line": "{{ inventory_hostname }}", "create": True, "mode": "0644"}}]))
    group_vars = {
        "all": {"rolling_maintenance_group": "rack"},
        "hypervisors": {"rolling_maintenance_tasks_file": str(tasks), "rolling_maintenance_report_dir": str(reports),
                        "rolling_maintenance_timeout": 5, "rolling_maintenance_require_kvm": False,
                        "evacuate_transport": "ssh", "evacuate_report_path": str(last_report)}}
    done = run("rolling_maintenance", {"hypervisors": ["hv1", "hv2", "hv3"], "rack": ["hv1", "hv2"]},
               group_vars=group_vars, host_vars={"hv2": {"evacuate_group": "hypervisors"}})
    assert done.code == 0, done.output
    assert maintained.read_text().split() == ["hv1", "hv2"]  # the rack, in turn; hv3 is not in it
    evacuations = [(host, sorted(args["destinations"]), args["transport"]) for host, args in done.of("evacuate")]
    assert evacuations == [
        ("hv1", ["hv2"], "ssh"),  # evacuate_group follows the rack
        ("hv2", ["hv1"], "ssh"),  # hv1's guest comes back from hv2
        ("hv2", ["hv1", "hv3"], "ssh"),  # hv2's own evacuate_group (host_vars) is not overridden
        ("hv1", ["hv2"], "ssh")]
    # Each host read empty before its maintenance, then healthy without KVM (require_kvm arrived).
    assert [(host, args.get("probe_kvm")) for host, args in done.of("host_info")] == [
        ("hv1", False), ("hv1", None), ("hv2", False), ("hv2", None)]
    assert sorted(path.name for path in reports.iterdir()) == ["hv1.json", "hv2.json"]
    assert json.loads(last_report.read_text())["source"] == "hv2"  # the role's evacuate_report_path, not replaced


@pytest.mark.parametrize("left", [
    pytest.param({"evacuate_unmovable": "leave"}, id="unmovable-left"),
    pytest.param({"evacuate_guests": ["web*"]}, id="a-subset-moved"),
    pytest.param({}, id="reported-moved-but-still-running"),
])
def test_rolling_maintenance_never_maintains_or_reboots_a_host_that_still_runs_guests(run, tmp_path, left):
    maintained = tmp_path / "maintained"
    tasks = tmp_path / "maintain.yml"
    tasks.write_text(yaml.safe_dump([{"name": "Note the host", "ansible.builtin.lineinfile": {
        "path": str(maintained), "line": "{{ inventory_hostname }}", "create": True, "mode": "0644"}}]))
    guests = [{"name": "db1", "state": "running"}, {"name": "batch", "state": "paused"},
              {"name": "spare", "state": "shutoff"}]
    done = run("rolling_maintenance", {"hypervisors": ["hv1", "hv2"]},
               group_vars={"hypervisors": {**left, **QUICK_ROLL, "rolling_maintenance_tasks_file": str(tasks),
                                           "rolling_maintenance_reboot": True}},
               domains={"hv1": guests})
    assert done.code != 0
    assert "hv1 still runs db1 (running), batch (paused) after its evacuation" in done.output, done.output
    assert not maintained.exists()
    assert "TASK [Reboot the host]" not in done.output
    assert [call[0] for call in done.of("evacuate")] == ["hv1"]  # the roll stops: hv2 is not emptied


def test_prepare_hosts_takes_its_variables_from_the_inventory(run):
    # The port range, min above max, stops the role at its own checks on every host, before it changes anything;
    # should a check ever let it through, --check, no packages and a failing restart command keep this machine as is.
    done = run("prepare_hosts", {"hypervisors": ["hv1", "hv2", "hv3"], "rack": ["hv1", "hv2"], "kvm": ["hv1"]},
               group_vars={
                   "all": {"prepare_hosts_group": "rack"},
                   "hypervisors": {"hypervisor_group": "kvm", "hypervisor_migration_port_min": 50001,
                                   "hypervisor_migration_port_max": 50000, "hypervisor_manage_packages": False,
                                   "hypervisor_libvirtd_restart_command": "/bin/false"}},
               check=True)
    assert done.code != 0
    assert "hv2 is not in hypervisor_group=kvm" in done.output, done.output  # not replaced by prepare_hosts_group
    assert "hypervisor_migration_port_min=50001 is above hypervisor_migration_port_max=50000" in done.output
    assert "hv3" not in done.output  # not in the rack
    assert done.calls == []


MIGRATE = {"migrate_guest": "web01", "migrate_destination": "hv2"}
# A roll that a check let through would wait rolling_maintenance_timeout (900 s) for KVM on each host.
QUICK_ROLL = {"rolling_maintenance_require_kvm": False}


@pytest.mark.parametrize(("playbook", "group_vars", "host_vars", "refusal"), [
    pytest.param("migrate", {"all": {"migrate_source": "hv1"},
                             "hypervisors": {**MIGRATE, "migrate_transport": "bogus"}}, {},
                 "value of migrate_transport must be one of: tls, ssh, tcp, got: bogus", id="migrate"),
    pytest.param("migrate", {"hypervisors": {**MIGRATE, "migrate_source": "hv1"}}, {},
                 "missing required arguments: migrate_source", id="migrate-source-not-on-the-controller"),
    pytest.param("evacuate_host", {"all": {"target": "hv1"}, "hypervisors": {"evacuate_transport": "bogus"}}, {},
                 "value of evacuate_transport must be one of: tls, ssh, tcp, got: bogus", id="evacuate_host"),
    pytest.param("return_guests",
                 {"all": {"target": "hv1"},
                  "hypervisors": {"evacuate_return_report_path": "/nonexistent.json", "evacuate_bandwidth": "lots"}},
                 {}, "argument 'evacuate_bandwidth' is of type", id="return_guests"),
    pytest.param("rolling_maintenance", {"hypervisors": {"rolling_maintenance_timeout": "soon"}}, {},
                 "argument 'rolling_maintenance_timeout' is of type", id="rolling_maintenance"),
    pytest.param("rolling_maintenance", {"all": QUICK_ROLL}, {"hv2": {"evacuate_stopped": "bogus"}},
                 "value of evacuate_stopped must be one of: move, leave, fail, got: bogus",
                 id="rolling_maintenance-second-host"),
    pytest.param("rolling_maintenance", {"hypervisors": {"rolling_maintenance_group": "hypervisors"},
                                         "all": {**QUICK_ROLL, "rolling_maintenance_group": "rack"}}, {},
                 "rolling_maintenance_group is hypervisors on hv1, a group without hv3, which the roll goes over",
                 id="rolling_maintenance-group-not-on-the-controller"),
    pytest.param("prepare_hosts", {"hypervisors": {"hypervisor_daemon_mode": "bogus"}}, {},
                 "value of hypervisor_daemon_mode must be one of: auto, monolithic, modular, got: bogus",
                 id="prepare_hosts"),
])
def test_a_bad_variable_from_the_inventory_is_refused_before_anything_runs(run, playbook, group_vars, host_vars,
                                                                           refusal):
    done = run(playbook, {"hypervisors": ["hv1", "hv2"], "rack": ["hv1", "hv2", "hv3"]}, group_vars, host_vars,
               check=playbook == "prepare_hosts")
    assert done.code != 0
    assert refusal in done.output, done.output
    assert done.calls == []
