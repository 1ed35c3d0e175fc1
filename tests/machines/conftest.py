"""Real systemd hypervisors of three Debian generations (tests/machines/machines.sh) and Ansible against them.

The playbooks run, unless a test names another ansible-core, from a controller set up as a user sets one up
(tests/machines/user-controller.sh: the `ansible` package, and this collection installed from its tarball), with
the machines' inventory directory (its variables in group_vars)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MACHINES_SH = REPO / "tests" / "machines" / "machines.sh"
CORE_MATRIX_SH = REPO / "tests" / "ansible-core-matrix.sh"
USER_CONTROLLER_SH = REPO / "tests" / "machines" / "user-controller.sh"
USER_VENV = Path(os.environ.get("KVMLM_USER_VENV", "/opt/kvmlm/user-controller"))
NAMES = ("deb11", "deb12", "deb13")
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def pytest_collection_modifyitems(items):
    if os.geteuid() != 0:
        for item in items:
            item.add_marker(pytest.mark.skip(reason="the machines need root (systemd-nspawn, a bridge)"))


def machines(*args, check=True, timeout=900):
    completed = subprocess.run([str(MACHINES_SH), *args], capture_output=True, text=True, timeout=timeout,
                               check=False)
    if check and completed.returncode != 0:
        raise AssertionError(f"machines.sh {' '.join(args)} exited {completed.returncode}:\n"
                             f"{completed.stdout[-3000:]}{completed.stderr[-3000:]}")
    return completed


def host_times(output):
    """{host: seconds its own tasks took} (callback_plugins/host_times.py)."""
    return {host: int(seconds) for host, seconds in re.findall(r"^host_times (\S+) (\d+)$", output, re.MULTILINE)}


def recap(output):
    """{host: {"ok", "changed", "unreachable", "failed"}} from a playbook's PLAY RECAP."""
    return {host: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, counts), strict=True))
            for host, *counts in RECAP.findall(output)}


class Machines:
    """Handles on the running machines: SSH, Ansible runs, the guest's console verdict."""

    def __init__(self, collections):
        """``collections``: where the user's controller installed the collection from its tarball."""
        self.state = Path(os.environ.get("KVMLM_MACHINES_STATE", "/var/tmp/kvmlm-machines"))
        self.inventory = self.state / "inventory"
        self.env = {**os.environ, "PATH": f"{USER_VENV / 'bin'}:{os.environ['PATH']}",
                    "ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_NOCOLOR": "1",
                    # each host's own time, printed at the end (callback_plugins/host_times.py)
                    "ANSIBLE_CALLBACK_PLUGINS": str(Path(__file__).parent / "callback_plugins"),
                    "ANSIBLE_CALLBACKS_ENABLED": "host_times"}

    def ssh(self, name, command, check=True):
        return machines("ssh", name, command, check=check).stdout

    def virsh(self, name, *args):
        return self.ssh(name, "virsh -q -c qemu:///system " + " ".join(args))

    def running_guests(self, name):
        return set(self.virsh(name, "list", "--name").split())

    def defined_guests(self, name):
        return set(self.virsh(name, "list", "--all", "--name").split())

    def start_guest(self, name, guest, memory_mib=256, dirty_mib=64, pages_per_s=0):
        machines("guest-start", name, guest, str(memory_mib), str(dirty_mib), str(pages_per_s))

    def assert_intact(self, name, guest, timeout_s=60):
        """The guest runs on ``name`` as the one boot it always was, and verified its memory there twice since it
        last printed anywhere else (tests/lab/guest_intact.py)."""
        verdict = machines("guest-intact", name, guest, str(timeout_s), check=False, timeout=timeout_s + 30)
        assert verdict.returncode == 0, verdict.stderr + verdict.stdout
        return verdict.stdout.strip()

    def boot_id(self, name):
        return self.ssh(name, "cat /proc/sys/kernel/random/boot_id").strip()

    def libvirtd_pid(self, name):
        """The running libvirtd's pid, woken first: Debian 12 and 13 let an idle one exit (--timeout 120)."""
        return self.ssh(name, "virsh -c qemu:///system version >/dev/null && "
                              "systemctl show -p MainPID --value libvirtd").strip()

    def let_libvirtd_exit_idle(self, name):
        """Stop libvirtd.service as its idle timeout does: the sockets stay, the next client starts it again."""
        self.ssh(name, "systemctl stop libvirtd.service && systemctl is-active libvirtd.socket >/dev/null")

    def playbook(self, playbook, *args, extra_vars=None, more_inventory=None, core=None, files=()):
        """Run a playbook (a path or a collection playbook's name); return (exit code, its output).

        ``core``: an ansible-core version of tests/ansible-core-matrix.sh (``"2.16"``, ``"2.20"``) to run it with
        (and this checkout as the collection) instead of the user's controller; ``files``: the directories its
        paths lie in (2.20 runs in a chroot that sees only those and the machines' state).
        """
        command = ["ansible-playbook", "-i", str(self.inventory)]
        if more_inventory:
            command += ["-i", str(more_inventory)]
        for key, value in (extra_vars or {}).items():
            command += ["-e", json.dumps({key: value})]
        command += [str(playbook), *args]
        if core is None:
            command[0] = str(USER_VENV / "bin" / "ansible-playbook")
        else:
            binds = [str(path) for path in (self.state, *files)]
            command = [str(CORE_MATRIX_SH), "--controller", core,
                       *(word for path in binds for word in ("--bind", path)), "--", *command]
        completed = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=1800, check=False)
        return completed.returncode, completed.stdout + completed.stderr

    def controller_version(self, core):
        """``ansible-playbook --version``'s first line and Python line from the controller ``core`` names."""
        command = [str(CORE_MATRIX_SH), "--controller", core, "--", "ansible-playbook", "--version"]
        completed = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=900, check=True)
        lines = completed.stdout.splitlines()
        return " / ".join([lines[0], *(line.strip() for line in lines if line.strip().startswith("python version"))])

    def prepare(self, *args, **kwargs):
        return self.playbook("kvm.live_migration.prepare_hosts", *args, **kwargs)

    def module(self, name, module, args, tmp_path, check=False, core=None):
        """Run kvm.live_migration.MODULE once on machine ``name``; return its registered result."""
        playbook, result_file = tmp_path / f"{module}.yml", tmp_path / f"{module}.json"
        playbook.write_text(textwrap.dedent(f"""\
            - hosts: {name}
              gather_facts: false
              tasks:
                - kvm.live_migration.{module}: {json.dumps(args)}
                  register: module_result
                  ignore_errors: true
                - ansible.builtin.copy:
                    content: "{{{{ module_result | combine({{'controller_core': ansible_version.full}}) | to_json }}}}"
                    dest: {result_file}
                    mode: "0644"
                  delegate_to: localhost
                  check_mode: false
            """))
        code, output = self.playbook(playbook, *(["--check"] if check else []), core=core, files=[tmp_path])
        assert code == 0 and result_file.exists(), output
        return json.loads(result_file.read_text())


@pytest.fixture(scope="session")
def user_collections(tmp_path_factory):
    """The collection, installed from its tarball by the user's controller (tests/machines/user-controller.sh)."""
    completed = subprocess.run([str(USER_CONTROLLER_SH), str(tmp_path_factory.mktemp("user-controller"))],
                               capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return Path(completed.stdout.strip())


@pytest.fixture(scope="session")
def bare_machines(user_collections):
    """Three fresh machines (deb11, deb12, deb13), as a new install leaves them (a test may add deb13b); torn down
    at the end."""
    machines("up", timeout=1200)
    try:
        yield Machines(user_collections)
    finally:
        # KVMLM_MACHINES_KEEP=1 leaves them up to look at after a failure (machines.sh down later).
        if os.environ.get("KVMLM_MACHINES_KEEP") != "1":
            machines("down", timeout=300)
            leftovers = machines("check-clean", check=False)
            assert leftovers.returncode == 0, f"the machines' teardown left things behind:\n{leftovers.stdout}"
