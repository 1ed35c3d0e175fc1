"""The lab for integration tests: two real hypervisors (tests/lab/lab.sh) and Ansible against them."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_SH = REPO / "tests" / "lab" / "lab.sh"
VENV = Path(os.environ.get("KVMLM_VENV", "/opt/kvmlm/venv"))
TICK = re.compile(r"KVMLM boot=(\w+) tick=(\d+)")
# A guest that crashed or rebooted prints one of these; its boot id alone does not tell, because
# under TCG a reboot can draw the same "random" boot id again.
CRASH = re.compile(r"Kernel panic|BUG: |Oops: |general protection fault|KVMLM error")


def pytest_collection_modifyitems(items):
    # test_lab brings its own lab up and tears it down: it runs before any test that shares the
    # session's lab (running_lab), or it would tear that one down under them.
    items.sort(key=lambda item: item.module.__name__ != "test_lab")
    if os.geteuid() != 0:
        for item in items:
            item.add_marker(pytest.mark.skip(reason="the lab needs root (namespaces, libvirtd)"))


def lab(*args, check=True, timeout=300, env=None):
    return subprocess.run([str(LAB_SH), *args], check=check, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


@dataclass
class Ticks:
    boot: str
    ticks: list

    @property
    def first(self):
        return self.ticks[0]

    @property
    def last(self):
        return self.ticks[-1]


class Lab:
    """Handles on a running lab: hypervisor commands, guest consoles and Ansible runs."""

    def __init__(self):
        self.state = Path(os.environ.get("KVMLM_LAB_STATE", "/var/tmp/kvmlm-lab"))
        self.inventory = self.state / "inventory.yml"
        collections = subprocess.run([str(REPO / "tests" / "lab" / "collection-path.sh")], check=True,
                                     capture_output=True, text=True).stdout.strip()
        self.env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
                    "ANSIBLE_COLLECTIONS_PATH": collections, "ANSIBLE_NOCOLOR": "1"}

    def virsh(self, host, *args):
        return lab("exec", host, "virsh", "-q", "-c", "qemu:///system", *args).stdout

    def running_guests(self, host):
        return set(self.virsh(host, "list", "--name").split())

    def defined_guests(self, host):
        return set(self.virsh(host, "list", "--all", "--name").split())

    def start_guest(self, host, name, memory_mib=512, dirty_mib=64, pages_per_s=0, cpu="", devices=""):
        """Define and start a lab guest; ``cpu`` is a <cpu> element and ``devices`` more devices, as XML."""
        lab("guest-start", host, name, str(memory_mib), str(dirty_mib), str(pages_per_s),
            env={"KVMLM_GUEST_CPU": cpu, "KVMLM_GUEST_DEVICES": devices})

    def remove_guest(self, name):
        for host in ("hv1", "hv2"):
            if name in self.running_guests(host):
                self.virsh(host, "destroy", name)
            if name in self.defined_guests(host):
                self.virsh(host, "undefine", name)

    def console(self, host, name):
        """The guest's counter lines as printed on its serial console on ``host``.

        Fails when the guest crashed, or restarted (its counter went back, or it printed "ready"
        again on a host it was migrated to): a migration must move the running guest intact.
        """
        crash = self.crash(host, name)
        assert crash is None, f"{name} crashed on {host}:\n{crash}"
        text = self.serial_log(host, name)
        matches = [match for match in map(TICK.search, text.splitlines()) if match]
        if not matches:
            return None
        boots = {match.group(1) for match in matches}
        assert len(boots) == 1, f"{name} on {host} booted more than once: {sorted(boots)}"
        ticks = [int(match.group(2)) for match in matches]
        assert all(later > earlier for earlier, later in itertools.pairwise(ticks)), (
            f"{name}'s counter on {host} went back: it restarted ({ticks[:3]}...{ticks[-3:]})")
        return Ticks(boot=matches[0].group(1), ticks=ticks)

    def serial_log(self, host, name):
        path = self.state / host / "log" / "qemu" / f"{name}-serial.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def crash(self, host, name):
        """The start of the crash report the guest printed on ``host``, or None."""
        text = self.serial_log(host, name)
        crash = CRASH.search(text)
        return None if crash is None else text[max(0, crash.start() - 200):crash.start() + 800]

    def xfail_if_crashed_after_migration(self, host, name):
        """Mark the test an expected failure when the migrated guest crashed on arrival.

        Call it once everything the module claims has been asserted. QEMU 7.2 under TCG loses guest
        writes made through TLB entries that outlive a dirty-bitmap sync, so a pre-copied guest
        sometimes arrives with a corrupted kernel stack; KVM tracks dirty pages in the kernel and
        is not affected (DEVELOPERS.md). Without a crash, the caller goes on to check the counter.
        """
        time.sleep(2)  # a guest whose memory arrived corrupted crashes within moments
        crash = self.crash(host, name)
        if crash:
            pytest.xfail(f"lab limitation: QEMU 7.2 TCG lost guest writes during pre-copy; {name} crashed on "
                         f"{host}:\n{crash}")

    def wait_for_tick_after(self, host, name, tick, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ticks = self.console(host, name)
            if ticks and ticks.last > tick:
                return ticks
            time.sleep(0.5)
        raise AssertionError(f"{name} on {host} printed no tick after {tick} within {timeout} s")

    def playbook(self, playbook, extra_vars=None, check=False):
        """Run a playbook; return (exit code, its output)."""
        command = [str(VENV / "bin" / "ansible-playbook"), "-i", str(self.inventory), str(playbook)]
        for key, value in (extra_vars or {}).items():
            command += ["-e", json.dumps({key: value})]
        if check:
            command.append("--check")
        completed = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=900, check=False)
        return completed.returncode, completed.stdout + completed.stderr

    def module(self, host, args, tmp_path, check=False, module="migrate"):
        """Run kvm.live_migration.MODULE once on ``host``; return its registered result."""
        playbook, result_file = tmp_path / "migrate.yml", tmp_path / "result.json"
        playbook.write_text(textwrap.dedent(f"""\
            - hosts: {host}
              gather_facts: false
              tasks:
                - kvm.live_migration.{module}: {json.dumps(args)}
                  register: migrate_result
                  ignore_errors: true
                - ansible.builtin.copy:
                    content: "{{{{ migrate_result | to_json }}}}"
                    dest: {result_file}
                    mode: "0644"
                  delegate_to: localhost
                  check_mode: false
            """))
        code, output = self.playbook(playbook, check=check)
        assert code == 0 and result_file.exists(), output
        return json.loads(result_file.read_text())


@pytest.fixture(scope="session")
def running_lab():
    lab("up", timeout=600)
    try:
        yield Lab()
    finally:
        lab("down", timeout=300)
        leftovers = lab("check-clean", check=False)
        assert leftovers.returncode == 0, f"lab teardown left things behind:\n{leftovers.stdout}"
