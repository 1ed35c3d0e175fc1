"""The lab itself, and the hypervisor role on it: from two bare hosts to a ready pair that migrates over tls, ssh
and tcp; the teardown leaves nothing behind. (Second runs and check mode: tests/machines, on real hosts.)"""

from __future__ import annotations

import re
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import Lab, lab, qemu_version

USERFAULTFD_SYSCTL = Path("/proc/sys/vm/unprivileged_userfaultfd")
PREPARE_HOSTS = "kvm.live_migration.prepare_hosts"
GUEST = "lifecycle"


def host_uuids(hosts):
    return [ET.fromstring(hosts.virsh(host, "capabilities")).findtext("host/uuid") for host in ("hv1", "hv2")]


def changes(output):
    """{host: changed count} from a play recap."""
    return {host: int(count) for host, count in re.findall(r"^(hv\d)\s*: ok=\d+\s+changed=(\d+)", output, re.M)}


def peer_answers(source, destination):
    return lab("exec", source, "virsh", "-r", "-c", f"qemu+ssh://{destination}/system?no_tty=1", "hostname",
               check=False)


def assert_bare(hosts):
    uuids = host_uuids(hosts)
    assert uuids[0] == uuids[1], uuids  # as cloned hosts share one
    for host in ("hv1", "hv2"):
        assert lab("exec", host, "ls", "-A", "/etc/pki").stdout.strip() == ""
        assert lab("exec", host, "ls", "-A", "/root/.ssh").stdout.strip() == ""
    refused = peer_answers("hv1", "hv2")
    assert refused.returncode != 0 and "Host key verification failed" in refused.stderr, refused.stderr
    assert USERFAULTFD_SYSCTL.read_text().strip() == "0"


def assert_prepared(hosts, output):
    uuids = host_uuids(hosts)
    assert uuids[0] != uuids[1], uuids
    assert uuids[1] == str(uuid.uuid5(uuid.UUID("361E6D51-FAEC-444A-9079-341386DA8E2E"), "hv2"))  # to_uuid("hv2")
    for source, destination in (("hv1", "hv2"), ("hv2", "hv1")):
        assert peer_answers(source, destination).stdout.strip() == destination
        line = re.search(rf"^ *\"msg\": \"({source}: .*)\"$", output, re.M).group(1)
        assert "KVM not usable (the CPU flags show neither vmx (Intel VT-x) nor svm (AMD-V)" in line
        assert f"post-copy possible; TLS ready; peers trusted: {destination}" in line, line
        files = set(lab("exec", source, "ls", "/etc/pki/qemu").stdout.split())
        assert files == {"ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"}
        key_mode = lab("exec", source, "stat", "-c", "%a %U %G", "/etc/pki/qemu/server-key.pem").stdout.split()
        assert key_mode == ["640", "root", "libvirt-qemu"]
        known = lab("exec", source, "cat", "/root/.ssh/known_hosts").stdout
        host_key = (hosts.state / destination / "etc-ssh" / "ssh_host_ed25519_key.pub").read_text().split()[1]
        assert host_key in known
    # Each host's own certificate (they differ): the two hosts' /etc/pki are their own.
    certs = {lab("exec", host, "cat", "/etc/pki/qemu/server-cert.pem").stdout for host in ("hv1", "hv2")}
    assert len(certs) == 2
    # Post-copy: the sysctl only where QEMU has no /dev/userfaultfd (QEMU 7.2 / libvirt 9.0: the stock stack).
    sysctl = lab("exec", "hv1", "cat", "/etc/sysctl.d/90-kvm-live-migration.conf", check=False)
    if qemu_version() >= (8, 1):
        assert USERFAULTFD_SYSCTL.read_text().strip() == "0" and sysctl.returncode != 0
    else:
        assert USERFAULTFD_SYSCTL.read_text().strip() == "1"
        assert "vm.unprivileged_userfaultfd=1" in sysctl.stdout


def migrate_and_verify(hosts, tmp_path, source, destination, transport):
    before = hosts.console(source, GUEST)
    args = {"name": GUEST, "dest_host": destination, "transport": transport, "bandwidth": 64}
    if transport == "tcp":
        args["allow_insecure"] = True
    result = hosts.module(source, args, tmp_path)
    migration = result["migration"]
    assert (migration["status"], migration["owner"], migration["transport"]) == ("completed", destination, transport), \
        result
    assert hosts.running_guests(destination) == {GUEST} and hosts.running_guests(source) == set()
    with hosts.excusing_write_loss(migration, dirtying=True):
        hosts.assert_intact(destination, GUEST, hosts.console(source, GUEST))
    assert hosts.console(destination, GUEST).boot == before.boot


@pytest.mark.stock
def test_prepare_hosts_makes_a_bare_pair_ready_and_it_migrates_over_every_transport(tmp_path):
    lab("up", timeout=600, env={"KVMLM_LAB_BARE": "1"})
    try:
        hosts = Lab()
        assert lab("exec", "hv1", "hostname").stdout.strip() == "hv1"
        assert lab("exec", "hv2", "hostname").stdout.strip() == "hv2"
        assert_bare(hosts)

        code, output = hosts.playbook(PREPARE_HOSTS)
        assert code == 0, output
        assert min(changes(output).values()) > 0, output
        assert_prepared(hosts, output)

        # A second run and --check change nothing: the real-hosts tier proves it on three generations
        # (tests/machines), with two ansible-cores.

        hosts.start_guest("hv1", GUEST, memory_mib=256, dirty_mib=64, pages_per_s=2000)
        for source, destination, transport in (("hv1", "hv2", "tls"), ("hv2", "hv1", "ssh"), ("hv1", "hv2", "tcp")):
            migrate_and_verify(hosts, tmp_path, source, destination, transport)
    finally:
        lab("down", timeout=300)
    assert lab("check-clean", check=False).stdout.strip() == "clean"
    qemu = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 -name guest={GUEST}"], capture_output=True, check=False)
    assert qemu.returncode == 1, "a guest's QEMU survived the teardown"
