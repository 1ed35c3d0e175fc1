"""The lab for integration tests: two real hypervisors (tests/lab/lab.sh) and Ansible against them."""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_SH = REPO / "tests" / "lab" / "lab.sh"
# The lab's own reader of the guest's console lines (tests/lab/guest_intact.py, also behind lab.sh guest-intact).
sys.path.insert(0, str(LAB_SH.parent))
serial_lines = importlib.import_module("guest_intact").serial_lines
VENV = Path(os.environ.get("KVMLM_VENV", "/opt/kvmlm/venv"))
STAMP_TAG = b"LMVK"  # tests/lab/guest/dirtier.c's STAMP_TAG, little-endian, as the stamp's bytes 4..7
WRITE_LOSS = ("lab limitation: QEMU 7.2 under TCG loses guest writes during pre-copy (DEVELOPERS.md; none lost by "
              "QEMU 10.0 on this lab)")


def pytest_configure(config):
    config.addinivalue_line("markers", "stock: also run on Debian 12's stock QEMU 7.2 / libvirt 9.0 (CI's stock stage)")


def qemu_version():
    """(major, minor) of the QEMU both lab hypervisors run (they share this machine's packages)."""
    text = subprocess.run(["qemu-system-x86_64", "--version"], check=True, capture_output=True, text=True).stdout
    major, minor = re.search(r"version (\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


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
    """A guest's counter lines on one host: tick numbers, and the sweeps of its memory check at each."""

    boot: str
    ticks: list
    sweeps: list

    @property
    def first(self):
        return self.ticks[0]

    @property
    def last(self):
        return self.ticks[-1]


def cannot_resume_post_copy(host):
    """Whether HOST runs libvirt 11.3, whose daemon dies on every post-copy resume (the backports stack has it): the
    module then records post_copy_recovery_unavailable whenever post-copy is permitted."""
    return " 11.3." in lab("exec", host, "libvirtd", "--version").stdout


class GuestDamaged(AssertionError):
    """The guest crashed, restarted, or found its memory changed behind its back."""


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

        Raises GuestDamaged when the guest crashed, restarted (its counter went back, or another boot id
        appeared), or its memory check found a page whose stamp disagrees with what it wrote last.
        """
        text = self.serial_log(host, name)
        lines, damage = serial_lines(text)
        bad = max((line.bad for line in lines), default=0)
        if damage or bad:
            raise GuestDamaged(f"{name} on {host} crashed or found {bad} page(s) changed behind its back:\n"
                               f"{text[max(0, damage.start() - 200):damage.start() + 800] if damage else lines[-1]}")
        if not lines:
            return None
        boots = {line.boot for line in lines}
        if len(boots) != 1:
            raise GuestDamaged(f"{name} on {host} booted more than once: {sorted(boots)}")
        ticks = [line.tick for line in lines]
        if any(later <= earlier for earlier, later in itertools.pairwise(ticks)):
            raise GuestDamaged(f"{name}'s counter on {host} went back: it restarted ({ticks[:3]}...{ticks[-3:]})")
        return Ticks(boot=lines[0].boot, ticks=ticks, sweeps=[line.swept for line in lines])

    def serial_log(self, host, name):
        path = self.state / host / "log" / "qemu" / f"{name}-serial.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_tick_after(self, host, name, tick, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ticks = self.console(host, name)
            if ticks and ticks.last > tick:
                return ticks
            time.sleep(0.5)
        raise AssertionError(f"{name} on {host} printed no tick after {tick} within {timeout} s")

    def assert_intact(self, host, name, before, timeout=40):
        """The guest runs on ``host`` as the same boot it was ``before``, and verified its memory there.

        Waits until the guest has swept all of its memory twice on ``host`` since ``before`` was read
        (a sweep in progress at the switch-over may have begun on the other host) and has kept
        counting: no crash, no restart, no page whose stamp disagrees with the guest's own record.
        Returns the ticks seen on ``host``.
        """
        deadline = time.monotonic() + timeout
        while True:
            ticks = self.console(host, name)
            if ticks and ticks.boot == before.boot and ticks.sweeps[-1] >= before.sweeps[-1] + 2 \
                    and ticks.last > before.last:
                return ticks
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} on {host} did not verify its memory twice within {timeout} s "
                                     f"(before: tick {before.last}, sweep {before.sweeps[-1]}; now: "
                                     f"{None if ticks is None else (ticks.boot, ticks.last, ticks.sweeps[-1])})")
            time.sleep(0.5)

    def corrupt_guest_page(self, name, memory_mib):
        """Change one stamped page of guest ``name`` from outside, through its QEMU process's memory, as a
        migration that lost a write would leave it; return the page's index in the guest's working set."""
        pids = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 -name guest={name},"], capture_output=True,
                              text=True, check=False).stdout.split()
        assert len(pids) == 1, f"one QEMU process for {name} expected, found {pids}"
        with open(f"/proc/{pids[0]}/maps") as maps:  # guest RAM: the one writable mapping of its size or more
            start, end = next(bounds for bounds in (tuple(int(part, 16) for part in line.split()[0].split("-"))
                                                    for line in maps if line.split()[1].startswith("rw"))
                              if bounds[1] - bounds[0] >= memory_mib * 1024 * 1024)
        with open(f"/proc/{pids[0]}/mem", "r+b", buffering=0) as memory:
            for base in range(start, end, 32 * 1024 * 1024):
                memory.seek(base)
                chunk = memory.read(min(32 * 1024 * 1024, end - base))
                for offset in range(0, len(chunk), 4096):
                    if chunk[offset + 4:offset + 8] == STAMP_TAG:  # the high half of a page's stamp
                        generation = int.from_bytes(chunk[offset + 8:offset + 16], "little")
                        memory.seek(base + offset + 8)
                        memory.write((generation + 7).to_bytes(8, "little"))
                        return int.from_bytes(chunk[offset:offset + 4], "little")
        raise AssertionError(f"no stamped page found in {name}'s memory")

    @contextlib.contextmanager
    def excusing_write_loss(self, migration, dirtying):
        """Turn a damaged guest into an expected failure only where the lab's QEMU is known to lose writes:
        QEMU 7.x, a guest that dirtied memory, moved by pre-copy. Post-copy and idle guests never qualify,
        and on QEMU 10 nothing does. Use it once everything the module claims has been asserted."""
        try:
            yield
        except GuestDamaged as damage:
            if qemu_version()[0] < 8 and dirtying and migration.get("strategy") != "post_copy":
                pytest.xfail(f"{WRITE_LOSS}: {damage}")
            raise

    def playbook(self, playbook, extra_vars=None, check=False, more_inventory=None):
        """Run a playbook (``more_inventory``: another inventory source on top of the lab's); return (exit code, its
        output)."""
        command = [str(VENV / "bin" / "ansible-playbook"), "-i", str(self.inventory), str(playbook)]
        if more_inventory:
            command[3:3] = ["-i", str(more_inventory)]
        for key, value in (extra_vars or {}).items():
            command += ["-e", json.dumps({key: value})]
        if check:
            command.append("--check")
        completed = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=900, check=False)
        return completed.returncode, completed.stdout + completed.stderr

    def start_module(self, host, args, tmp_path, label="background"):
        """Start kvm.live_migration.migrate on ``host`` in a playbook of its own, without waiting; returns a
        function that waits for it and returns (exit code, output, the registered result or None)."""
        playbook, result_file = tmp_path / f"{label}.yml", tmp_path / f"{label}.json"
        playbook.write_text(self._module_playbook(host, args, "migrate", result_file))
        command = [str(VENV / "bin" / "ansible-playbook"), "-i", str(self.inventory), str(playbook)]
        process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)

        def finish(timeout=600):
            output = process.communicate(timeout=timeout)[0]
            result = json.loads(result_file.read_text()) if result_file.exists() else None
            return process.returncode, output, result

        finish.process = process
        return finish

    def wait_for_job(self, host, name, timeout=60, passes=1):
        """Wait until guest ``name``'s migration job on ``host`` has begun pass ``passes``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = lab("exec", host, "virsh", "-q", "-c", "qemu:///system", "domjobinfo", name, check=False).stdout
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            if fields.get("Job type", "").strip() == "Unbounded" and \
                    int(fields.get("Iteration", "0").strip() or 0) >= passes:
                return fields
            time.sleep(0.3)
        raise AssertionError(f"no migration job of {name} on {host} reached pass {passes} within {timeout} s")

    def state_reason(self, host, name):
        return lab("exec", host, "virsh", "-q", "-c", "qemu:///system", "domstate", "--reason", name,
                   check=False).stdout.strip()

    @staticmethod
    def _module_playbook(host, args, module, result_file):
        return textwrap.dedent(f"""\
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
            """)

    def module(self, host, args, tmp_path, check=False, module="migrate"):
        """Run kvm.live_migration.MODULE once on ``host``; return its registered result."""
        playbook, result_file = tmp_path / "migrate.yml", tmp_path / "result.json"
        playbook.write_text(self._module_playbook(host, args, module, result_file))
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
