"""The evacuate role's defaults, its argument specs and the evacuate module agree; so do the migrate playbook's
documented defaults and the migrate module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.kvm.live_migration.plugins.modules import evacuate, migrate

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "evacuate"
# Role variables whose 0 or [] stands for the module's unset option (a survey cannot send "unset").
UNSET_IN_ROLE = {"max_per_destination": 0, "timeout": 0, "parallel_connections": 0, "compression": []}
ROLE_ONLY = {"target", "group", "destinations", "guests", "guests_query", "report_path", "set_stats",
             "return_report_path"}


def load(path):
    return yaml.safe_load(path.read_text())


def role_specs():
    return load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]


# Templated defaults that the spec documents by their usual value, the template being told in the description.
DOCUMENTED_BY_VALUE = {"evacuate_group": "hypervisors", "hypervisor_group": "hypervisors"}


def assert_documented_defaults(defaults, documented):
    assert set(defaults) == set(documented)
    for name, value in defaults.items():
        assert documented[name].get("default") == DOCUMENTED_BY_VALUE.get(name, value), name
        if name in DOCUMENTED_BY_VALUE:
            assert "{{" in value and value.split("|")[0].strip(" {") in " ".join(documented[name]["description"])


def test_every_default_is_documented_with_the_same_value():
    assert_documented_defaults(load(ROLE / "defaults" / "main.yml"), role_specs()["return"]["options"])


def test_the_main_entry_point_documents_everything_but_the_return_report():
    specs = role_specs()
    assert set(specs["return"]["options"]) - set(specs["main"]["options"]) == {"evacuate_return_report_path"}


@pytest.mark.parametrize("name", [name for name in load(ROLE / "defaults" / "main.yml")
                                  if name.removeprefix("evacuate_") not in ROLE_ONLY])
def test_each_role_default_is_the_module_default(name):
    option = name.removeprefix("evacuate_")
    spec = evacuate.ARGUMENT_SPEC[option]
    role_default = load(ROLE / "defaults" / "main.yml")[name]
    if option in UNSET_IN_ROLE:
        assert (role_default, spec.get("default")) == (UNSET_IN_ROLE[option], None)
    else:
        assert role_default == spec["default"]
        assert role_specs()["main"]["options"][name]["type"] == spec["type"]
        assert role_specs()["main"]["options"][name].get("choices") == spec.get("choices")


def test_the_migrate_playbook_documents_the_module_defaults():
    options = load(REPO / "meta" / "argument_specs.yml")["argument_specs"]["migrate"]["options"]
    mapped = {name.removeprefix("migrate_"): spec for name, spec in options.items()
              if name.removeprefix("migrate_") in migrate.ARGUMENT_SPEC}
    assert set(mapped) == {"transport", "allow_insecure", "bandwidth", "max_downtime_ms", "allow_auto_converge",
                           "allow_post_copy", "convergence_threshold", "timeout"}
    for option, spec in mapped.items():
        assert spec.get("default") == migrate.ARGUMENT_SPEC[option].get("default"), option
        assert spec["type"] == migrate.ARGUMENT_SPEC[option]["type"], option


HYPERVISOR = REPO / "roles" / "hypervisor"


def hypervisor_specs():
    return load(HYPERVISOR / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]


def test_every_hypervisor_default_is_documented_with_the_same_value():
    assert_documented_defaults(load(HYPERVISOR / "defaults" / "main.yml"), hypervisor_specs())


def test_the_cgroup_controllers_are_the_one_setting_for_what_a_host_cannot_do():
    """Left alone unless given (null: libvirt's default), a list of names when given; the readiness line names it."""
    spec = hypervisor_specs()["hypervisor_qemu_cgroup_controllers"]
    assert (spec["type"], spec["elements"], spec.get("default")) == ("list", "str", None)
    assert "hypervisor_qemu_cgroup_controllers" in (REPO / "roles/hypervisor/tasks/verify.yml").read_text()
    assert "hypervisor_qemu_cgroup_controllers" in (REPO / "playbooks/prepare_hosts.yml").read_text()
    assert "hypervisor_qemu_cgroup_controllers" in (REPO / "docs/security.md").read_text()


def test_every_family_lists_its_packages_without_python_libraries_on_the_host():
    """The installed packages are read with dpkg-query or rpm: a minimal Debian host has no python3-apt, which
    package_facts (and the apt module in check mode) need."""
    families = load(HYPERVISOR / "vars" / "main.yml")["hypervisor_family_settings"]
    assert {family["installed_query"][0] for family in families.values()} == {"dpkg-query", "rpm"}
    assert "python3-apt" in families["Debian"]["packages"]
    tasks = (HYPERVISOR / "tasks" / "packages.yml").read_text()
    assert "ansible.builtin.package_facts" not in tasks


def test_no_task_of_the_role_knows_about_containers():
    for path in [*sorted((HYPERVISOR / "tasks").glob("*.yml")), HYPERVISOR / "vars" / "main.yml"]:
        text = path.read_text().lower()
        assert not any(word in text for word in ("container", "nspawn", "docker", "lxc")), path


def run_role_templates(tmp_path, tasks, hosts=("h1", "h2", "h3")):
    """Run ``tasks`` (set_fact/debug/fail only: nothing on any host) with the hypervisor role's vars on fake local
    hosts; {task name: {host: result}} from the json callback."""
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                         "children": {"hypervisors": {"hosts": {host: {} for host in hosts}}}}}
    play = [{"hosts": "hypervisors", "gather_facts": False,
             "vars_files": [str(HYPERVISOR / "defaults" / "main.yml"), str(HYPERVISOR / "vars" / "main.yml")],
             "vars": {"_hypervisor_daemon_mode": "monolithic"}, "tasks": tasks}]
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "json", "ANSIBLE_LOCALHOST_WARNING": "false",
           "ANSIBLE_HOST_KEY_CHECKING": "false", "ANSIBLE_NOCOLOR": "1"}
    completed = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "inventory.yml",
                                "play.yml"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                               timeout=120)
    output = json.loads(completed.stdout)
    return {task["task"]["name"]: task["hosts"] for task in output["plays"][0]["tasks"]}


def task_of(name, path):
    return next(task for task in load(HYPERVISOR / "tasks" / path) if task["name"] == name)


def test_a_failed_host_is_left_out_and_the_others_go_on(tmp_path):
    """Seen on fresh hosts: one host failed, and every other host failed at "Look up each peer's names here"
    (the peers came from ansible_play_hosts_all, which still held the failed host without facts)."""
    lookup = task_of("Look up each peer's names here (libvirt connects to the inventory name and sends memory to the "
                     "host name)", "identity.yml")
    unique_uuid = task_of("Give a unique libvirt host UUID to a host that shares one with another hypervisor",
                          "identity.yml")
    results = run_role_templates(tmp_path, [
        {"name": "h2 fails before host_info read it", "ansible.builtin.fail": {"msg": "down"},
         "when": "inventory_hostname == 'h2'"},
        {"name": "host_info", "ansible.builtin.set_fact": {
            "_hypervisor_facts": {"host": {"uuid": "same", "hostname": "{{ inventory_hostname }}-name"}}}},
        {"name": "peers", "ansible.builtin.debug": {"msg": lookup["loop"]}},
        {"name": "trusted", "ansible.builtin.debug": {"msg": "{{ _hypervisor_peers_in_play }}"}},
        {"name": "shares a UUID with an earlier host", "ansible.builtin.debug": {
            "msg": "{{ _hypervisor_facts.host.uuid in _hypervisor_earlier_uuids }}"}, "vars": unique_uuid["vars"]},
    ])
    assert results["h2 fails before host_info read it"]["h2"]["failed"] is True
    assert {host: result["msg"] for host, result in results["peers"].items()} == {
        "h1": ["h3", "h3-name"], "h3": ["h1", "h1-name"]}
    assert {host: result["msg"] for host, result in results["trusted"].items()} == {"h1": ["h3"], "h3": ["h1"]}
    assert {host: result["msg"] for host, result in results["shares a UUID with an earlier host"].items()} == {
        "h1": False, "h3": True}


def daemon_files(marker=False, pid_mtime=100.0, qemu_conf_mtime=50.0, daemon_conf_mtime=10.0):
    stat = {"/run/kvm-live-migration.restart-pending": {"exists": marker, "mtime": 1.0},
            "/run/libvirtd.pid": {"exists": pid_mtime is not None, "mtime": pid_mtime or 0},
            "/etc/libvirt/qemu.conf": {"exists": True, "mtime": qemu_conf_mtime},
            "/etc/libvirt/libvirtd.conf": {"exists": True, "mtime": daemon_conf_mtime}}
    return {"results": [{"item": path, "stat": value} for path, value in stat.items()]}


@pytest.mark.parametrize(("files", "due"), [
    (daemon_files(), ""),
    (daemon_files(marker=True), "a run changed its configuration and ended before restarting it"),
    (daemon_files(qemu_conf_mtime=100.5), "/etc/libvirt/qemu.conf changed after it started"),
    (daemon_files(daemon_conf_mtime=200.0), "/etc/libvirt/libvirtd.conf changed after it started"),
    (daemon_files(pid_mtime=None, qemu_conf_mtime=500.0), ""),  # not running, or no pid file: nothing to tell
    ({"skipped": True}, ""),
], ids=["current", "marker-left-by-a-failed-run", "qemu-conf-newer", "daemon-conf-newer", "no-pid-file", "not-read"])
def test_a_daemon_that_runs_an_older_configuration_is_told(tmp_path, files, due):
    """Seen: a run changed qemu.conf and failed before its handler; the next run saw no change and never restarted
    libvirtd. The marker and the pid file's age both tell the role (and verify.yml's readiness) to restart it."""
    results = run_role_templates(tmp_path, [{"name": "due", "ansible.builtin.debug": {
        "msg": "{{ _hypervisor_restart_due }}"}, "vars": {"_hypervisor_daemon_files": files}}], hosts=("h1",))
    assert results["due"]["h1"]["msg"] == due


def test_the_readiness_line_of_a_check_run_on_a_bare_host(tmp_path):
    say = next(task for task in load(REPO / "playbooks" / "prepare_hosts.yml")[-1]["tasks"]
               if task["name"] == "Say what the host is ready for")
    bare = {"would_install": ["libvirt-daemon-system", "python3-apt"], "kvm_usable": None, "kvm_reason": None,
            "post_copy_possible": None, "post_copy_reason": None, "tls_ready": None, "tls_problems": [],
            "libvirt_config_current": None, "libvirt_config_stale": None, "qemu_cgroup_controllers": [],
            "peers_trusted": [], "peers_untrusted": {}, "unresolved_names": []}
    ready = {**bare, "would_install": [], "kvm_usable": False, "kvm_reason": "no vmx", "post_copy_possible": True,
             "tls_ready": True, "libvirt_config_current": True, "qemu_cgroup_controllers": None,
             "peers_trusted": ["h1"]}
    stale = {**ready, "libvirt_config_current": False,
             "libvirt_config_stale": "/etc/libvirt/qemu.conf changed after it started"}
    extra = {**ready, "would_install": ["htop"]}  # check mode, libvirt installed: only an extra package is missing
    results = run_role_templates(tmp_path, [
        {"name": "readiness", "ansible.builtin.set_fact": {"hypervisor_readiness": "{{ cases[inventory_hostname] }}"},
         "vars": {"cases": {"h1": bare, "h2": ready, "h3": stale, "h4": extra}}},
        say], hosts=("h1", "h2", "h3", "h4"))
    lines = {host: result["msg"] for host, result in results[say["name"]].items()}
    assert lines == {
        "h1": "h1: would install libvirt-daemon-system, python3-apt first; libvirt is read once they are installed; "
              "qemu.conf cgroup_controllers = [] (hypervisor_qemu_cgroup_controllers)",
        "h2": "h2: KVM not usable (no vmx); post-copy possible; TLS ready; peers trusted: h1",
        "h3": "h3: KVM not usable (no vmx); post-copy possible; TLS ready; peers trusted: h1; libvirt runs an older "
              "configuration (/etc/libvirt/qemu.conf changed after it started)",
        "h4": "h4: KVM not usable (no vmx); post-copy possible; TLS ready; peers trusted: h1; would install htop"}


@pytest.mark.parametrize(("trusting", "refused"), [(["h2"], True), ([], False)], ids=["a-host-trusts-a-ca", "none"])
def test_a_controller_without_the_ca_key_never_mints_a_second_ca_for_hosts_that_trust_one(tmp_path, trusting,
                                                                                          refused):
    """A new AWX execution environment, another admin's controller: a new CA would split the group."""
    ca_dir = tmp_path / "pki"
    results = run_role_templates(tmp_path, [
        {"name": "what the host trusts", "ansible.builtin.set_fact": {
            "_hypervisor_trusted_ca": "{{ {'content': 'LS0t'} if inventory_hostname in trusting else "
                                      "{'msg': 'file not found'} }}"}, "vars": {"trusting": trusting}},
        {"name": "the CA on the controller", "ansible.builtin.include_tasks": {
            "file": str(HYPERVISOR / "tasks" / "tls_ca.yml"),
            "apply": {"run_once": True, "delegate_to": "localhost"}},
         "vars": {"hypervisor_tls_ca_dir": str(ca_dir)}},
    ])
    check = results["Refuse to make a second CA for hosts that trust one"]
    [outcome] = check.values()
    assert bool(outcome.get("failed")) is refused, outcome
    assert (ca_dir / "ca-key.pem").exists() is not refused
    if refused:
        assert outcome["msg"].startswith("h2 already trust a CA (/etc/pki/CA/cacert.pem), but this controller has no "
                                         f"CA key in {ca_dir}")


@pytest.mark.parametrize(("sources", "nft", "rich"), [
    ([], ['tcp dport { 22, 49152-49215 } accept comment "kvm.live_migration"'], []),
    (["192.0.2.0/24", "198.51.100.7", "2001:db8::/64"],
     ['ip saddr { 192.0.2.0/24, 198.51.100.7 } tcp dport { 22, 49152-49215 } accept comment "kvm.live_migration"',
      'ip6 saddr { 2001:db8::/64 } tcp dport { 22, 49152-49215 } accept comment "kvm.live_migration"'],
     ['rule family="ipv4" source address="192.0.2.0/24" port port="22" protocol="tcp" accept',
      'rule family="ipv4" source address="192.0.2.0/24" port port="49152-49215" protocol="tcp" accept',
      'rule family="ipv4" source address="198.51.100.7" port port="22" protocol="tcp" accept',
      'rule family="ipv4" source address="198.51.100.7" port port="49152-49215" protocol="tcp" accept',
      'rule family="ipv6" source address="2001:db8::/64" port port="22" protocol="tcp" accept',
      'rule family="ipv6" source address="2001:db8::/64" port port="49152-49215" protocol="tcp" accept']),
], ids=["any-source", "restricted"])
def test_the_firewall_opens_ssh_and_the_migration_ports_to_the_sources_given(tmp_path, sources, nft, rich):
    """16514 is not opened: nothing listens there (the role does not make libvirtd listen on TLS)."""
    chain = ("table inet filter {\n chain input { # handle 1\n  tcp dport 22 accept # handle 4\n"
             '  tcp dport { 22, 16514, 49152-49215 } accept comment "kvm.live_migration" # handle 9\n }\n}')
    results = run_role_templates(tmp_path, [
        {"name": "rules", "ansible.builtin.debug": {"msg": {
            "nft": "{{ _hypervisor_nft_rules }}", "rich": "{{ _hypervisor_firewalld_rich_rules }}",
            "handles": "{{ _hypervisor_nft_handles }}"}},
         "vars": {"hypervisor_migration_sources": sources,
                  "_hypervisor_nft_chain": {"stdout_lines": chain.splitlines()}}},
    ], hosts=("h1",))
    assert results["rules"]["h1"]["msg"] == {"nft": nft, "rich": rich, "handles": ["9"]}


@pytest.mark.parametrize("source", ["hv2", "192.0.2.0/24; accept", "", "any"])
def test_a_source_that_is_not_an_address_or_network_is_refused(tmp_path, source):
    check = task_of("Check the sources the firewall accepts the ports from", "assert.yml")
    results = run_role_templates(tmp_path, [{**check, "vars": {**check["vars"],
                                                               "hypervisor_migration_sources": [source]}}],
                                 hosts=("h1",))
    [outcome] = results["Check the sources the firewall accepts the ports from"].values()
    assert outcome["failed"] is True
    assert "which is not an IP address or network" in outcome["msg"]
