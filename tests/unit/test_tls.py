"""QEMU's TLS files on both hosts: read locally and through libvirt, and judged by check_tls."""

from __future__ import annotations

import os

import pytest
from fake_libvirt import FakeCloud
from pki import NOW, Authority, qemu_directory

from ansible_collections.kvm.live_migration.plugins.module_utils.checks_pair import TLS_FIX, TlsPair, check_tls
from ansible_collections.kvm.live_migration.plugins.module_utils.connection import Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.hostinfo import HostInfo
from ansible_collections.kvm.live_migration.plugins.module_utils.tlsfiles import (
    names_match,
    read_local_directory,
    read_remote_directory,
)

CERT_DIR = "/etc/pki/qemu"
KEY_MODE, CERT_MODE = 0o640, 0o644
QEMU_IDS = (None, os.getgid())  # QEMU's group owns the keys in these tests


@pytest.fixture(scope="module")
def ca():
    return Authority()


def write_directory(root, files, modes=None):
    directory = root / CERT_DIR.lstrip("/")
    directory.mkdir(parents=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
        os.chmod(directory / name, (modes or {}).get(name, KEY_MODE if "key" in name else CERT_MODE))
    return root


def remote_host(cloud, host, files, modes=None):
    """A fake hypervisor whose QEMU TLS directory holds ``files`` (None: no directory)."""
    if files is None:
        cloud.add_host(host)
        return
    entries = {name: (content, (modes or {}).get(name, KEY_MODE if "key" in name else CERT_MODE), 0, os.getgid())
               for name, content in files.items()}
    cloud.add_host(host, files={CERT_DIR: entries})


def judge(tmp_path, source_files, dest_files, dest_name="hv2", source_modes=None, dest_modes=None):
    cloud = FakeCloud()
    remote_host(cloud, "hv2", dest_files, dest_modes)
    source = read_local_directory("hv1", CERT_DIR, str(write_directory(tmp_path, source_files, source_modes)))
    with Hypervisor("qemu+ssh://hv2/system", libvirt_module=cloud.libvirt) as destination:
        remote = read_remote_directory(destination, CERT_DIR)
    assert cloud.hosts["qemu+ssh://hv2/system"].transient_pools == []  # the probe pool is gone
    return check_tls(TlsPair(source, remote, dest_name, NOW.timestamp(), QEMU_IDS))


def other_ca_server(ca):
    return Authority("another CA").issue("hv2")[0]


@pytest.mark.parametrize(("source", "dest", "options", "status", "message"), [
    ({}, {}, {}, "ok", "hv1 can send (/etc/pki/qemu) and hv2 can receive (/etc/pki/qemu) with certificates of one CA"),
    ({}, None, {}, "fail", "hv2 has no /etc/pki/qemu, where QEMU reads the certificates to receive a migration"),
    ({"client_key": None}, {}, {}, "fail", "hv1 lacks client-key.pem in /etc/pki/qemu (needed to send a migration)"),
    ({}, {"server_cert": None, "server_key": None}, {}, "fail", "hv2 lacks server-cert.pem, server-key.pem"),
    ({}, {"server_cert": other_ca_server}, {}, "fail", "is not signed by the CA hv1 trusts (CN=test CA): the hosts use "
                                                       "different CAs"),
    ({}, {"server_cert": lambda ca: ca.issue("hv2", days=10, start_days=-20)[0]}, {}, "fail",
     "hv2's server-cert.pem expired on 2026-11-21"),
    ({}, {"server_cert": lambda ca: ca.issue("hv2", start_days=2)[0]}, {}, "fail",
     "hv2's server-cert.pem is not valid yet (from 2026-12-03 00:00 UTC); check the hosts' clocks"),
    ({}, {"server_cert": lambda ca: ca.issue("hv2", days=10)[0]}, {}, "warn",
     "hv2's server-cert.pem expires on 2026-12-10"),
    ({}, {"server_cert": lambda ca: ca.issue("hv2", names=["hv2.old", "10.0.0.2"])[0]}, {}, "fail",
     "hv2's server certificate names hv2.old, 10.0.0.2, but QEMU on hv1 verifies it against 'hv2'"),
    ({}, {"server_cert": lambda ca: ca.issue("hv2", names=["hv2", "10.0.0.2"])[0]}, {"dest_name": "10.0.0.2"}, "ok",
     "hv2's is valid for 10.0.0.2"),
    ({"client_cert": lambda ca: ca.issue("hv1", purpose="server")[0]}, {}, {}, "fail",
     "hv1's client certificate is not for TLS clients (serverAuth)"),
    ({"client_key": lambda ca: ca.issue("hv1")[1]}, {}, {}, "fail", "hv1's client-key.pem does not belong to its "
                                                                    "client-cert.pem"),
    ({}, {}, {"dest_modes": {"server-key.pem": 0o600}}, "fail",
     "QEMU's user cannot read hv2's server-key.pem (mode 0600"),
    ({}, {}, {"source_modes": {"client-key.pem": 0o644}}, "warn", "hv1's client-key.pem is readable by every user"),
], ids=["clean", "no-directory", "no-client-key", "no-server-files", "two-cas", "expired", "not-yet-valid",
        "expiring", "wrong-names", "address-name", "client-purpose", "key-mismatch", "key-unreadable", "key-world"])
def test_check_tls(tmp_path, ca, source, dest, options, status, message):
    def files(host, overrides):
        if overrides is None:
            return None
        return qemu_directory(ca, host, names=[host, "10.251.77.12"] if host == "hv2" else None,
                              **{name: value(ca) if callable(value) else value for name, value in overrides.items()})

    finding = judge(tmp_path, files("hv1", source), files("hv2", dest), **options)
    assert (finding.check, finding.status) == ("tls", status), finding
    assert message in finding.message
    assert finding.fix == (None if status == "ok" else TLS_FIX)


def test_a_destination_without_a_storage_driver_is_not_judged_but_said(tmp_path, ca):
    cloud = FakeCloud()
    cloud.add_host("hv2", storage_driver=False)
    source = read_local_directory("hv1", CERT_DIR, str(write_directory(tmp_path, qemu_directory(ca, "hv1"))))
    with Hypervisor("qemu+ssh://hv2/system", libvirt_module=cloud.libvirt) as destination:
        finding = check_tls(TlsPair(source, read_remote_directory(destination, CERT_DIR), "hv2", NOW.timestamp(),
                                    QEMU_IDS))
    assert finding.status == "warn"
    assert "hv2: /etc/pki/qemu could not be read through libvirt (this function is not supported" in finding.message


@pytest.mark.parametrize(("names", "name", "matches"), [
    (("hv2",), "HV2", True), (("*.lab",), "hv2.lab", True), (("*.lab",), "a.hv2.lab", False),
    (("10.0.0.2",), "10.0.0.2", True), (("hv2",), "10.0.0.2", False), (("::1",), "0:0::1", True),
])
def test_names_match(names, name, matches):
    assert names_match(names, name) is matches


@pytest.mark.parametrize(("overrides", "configured", "problem"), [
    ({}, True, None),
    ({"server_cert": lambda ca: ca.issue("hv1", days=5)[0]}, True, "hv1's server-cert.pem expires on 2026-12-05"),
    ({"client_cert": lambda ca: Authority("another CA").issue("hv1", purpose="client")[0]}, False,
     "hv1's client certificate (issuer CN=another CA) is not signed by the CA hv1 trusts"),
    ({"server_key": None}, False, "hv1 lacks server-key.pem in /etc/pki/qemu (needed to receive a migration)"),
], ids=["ready", "expiring", "foreign-client-cert", "no-server-key"])
def test_host_info_judges_the_host_tls_files_as_if_it_migrated_to_itself(
        tmp_path, ca, overrides, configured, problem):
    changed = {name: value(ca) if callable(value) else value for name, value in overrides.items()}
    files = qemu_directory(ca, "hv1", **changed)
    root = write_directory(tmp_path, files)
    (root / "etc/libvirt").mkdir(parents=True)
    (root / "etc/libvirt/qemu.conf").write_text(f'user = "{os.getuid()}"\ngroup = "{os.getgid()}"\n')
    cloud = FakeCloud()
    cloud.add_host("hv1", "qemu:///system")
    with Hypervisor("qemu:///system", libvirt_module=cloud.libvirt) as hypervisor:
        tls = HostInfo(hypervisor, local=True, probe=False, root=str(root), wall_clock=NOW.timestamp).gather()[
            "host"]["tls"]
    assert tls["configured"] is configured, tls
    if problem is None:
        assert tls["problems"] == []
    else:
        [message] = tls["problems"]
        assert problem in message
