"""Preflight and host_info against the fake hypervisors: what they read, and the findings end to end."""

from __future__ import annotations

import os
import re

import jmespath
import pytest
from conftest import DEST_URI, SOURCE_URI
from fake_libvirt import GIB, GuestArchCaps
from pki import NOW, Authority, qemu_directory

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.features import host_features
from ansible_collections.kvm.live_migration.plugins.module_utils.findings import CHECKS
from ansible_collections.kvm.live_migration.plugins.module_utils.hostinfo import HostInfo
from ansible_collections.kvm.live_migration.plugins.module_utils.preflight import Preflight, Surroundings
from ansible_collections.kvm.live_migration.plugins.module_utils.probes import PortProbe
from ansible_collections.kvm.live_migration.plugins.module_utils.request import (
    PreflightRequest,
    validate_preflight_request,
)
from ansible_collections.kvm.live_migration.plugins.modules import host_info as host_info_module
from ansible_collections.kvm.live_migration.plugins.modules import preflight as preflight_module

AES_GUEST_CPU = "<cpu mode='custom' match='exact'><model>qemu64</model><feature policy='require' name='aes'/></cpu>"
BRIDGED = "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-prod'/></interface>"
DISK = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/images/db01.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk>")


def run_preflight(lv, clock, probe="refused", root="/nonexistent", qemu_ids=None, wall_clock=None, **options):
    request = PreflightRequest(name="db01", dest_uri=options.pop("dest_uri", DEST_URI),
                               transport=options.pop("transport", "ssh"), **options)
    with Hypervisor(SOURCE_URI, libvirt_module=lv) as source:
        surroundings = Surroundings(resolve=lambda name: ("10.0.0.12",),
                                    probe_port=lambda host, port: PortProbe(host, port, probe), clock=clock,
                                    wait=clock.wait, root=root, qemu_ids=qemu_ids,
                                    wall_clock=wall_clock or NOW.timestamp)
        preflight = Preflight(source, request, surroundings)
        return preflight.run().as_dict()


def failed(result):
    return {f["check"]: f for f in result["findings"] if f["status"] == "fail"}


@pytest.fixture
def db01(cloud, hv1):
    return cloud.add_guest(hv1, "db01")


def test_a_clean_pair_passes_every_check(lv, clock, db01):
    result = run_preflight(lv, clock)
    assert result["ok"] is True, result
    assert result["failed_checks"] == []
    assert (result["source"], result["destination"], result["already_migrated"]) == ("hv1", "hv2", False)
    assert [f["check"] for f in result["findings"]] == [c for c in CHECKS if c not in ("convergence", "tls")]
    assert {f["status"] for f in result["findings"]} == {"ok"}
    assert all(f["fix"] is None for f in result["findings"])


def bridge_missing(cloud, hv1, hv2, guest):
    guest.devices = BRIDGED
    hv1.interfaces["br-prod"] = True


def other_guest_of_that_name(cloud, hv1, hv2, guest):
    cloud.add_guest(hv2, "db01").uuid = "other-uuid"


def same_guest_on_both(cloud, hv1, hv2, guest):
    cloud.add_guest(hv2, "db01")


def same_host_uuid(cloud, hv1, hv2, guest):
    hv2.uuid = hv1.uuid


def cpu_feature_missing(cloud, hv1, hv2, guest):
    guest.cpu = AES_GUEST_CPU
    hv2.hypervisor_cpu_lacks = ("aes",)


def too_little_memory(cloud, hv1, hv2, guest):
    guest.memory_kib = 20 * GIB // 1024


def only_32_bit(cloud, hv1, hv2, guest):
    hv2.arch = "i686"
    hv2.guest_arches = [GuestArchCaps("i686", 32)]


def machine_type_unknown(cloud, hv1, hv2, guest):
    hv2.guest_arches = [GuestArchCaps(machines=("pc",))]


def intel_model_to_amd(cloud, hv1, hv2, guest):
    guest.cpu = "<cpu mode='custom'><model>Skylake-Client</model></cpu>"
    hv2.cpu_vendor = "AMD"


def older_qemu(cloud, hv1, hv2, guest):
    hv2.qemu_version = 6_002_000


def job_in_progress(cloud, hv1, hv2, guest):
    guest.job_type = 2


def disk_only_on_source(cloud, hv1, hv2, guest):
    guest.devices = DISK
    hv1.volumes["/images/db01.qcow2"] = ("images", GIB)


def host_device(cloud, hv1, hv2, guest):
    guest.devices = "<hostdev mode='subsystem' type='pci'/>"


def paused(cloud, hv1, hv2, guest):
    guest.state = 3


def shut_off(cloud, hv1, hv2, guest):
    guest.state = 5


@pytest.mark.parametrize(("setup", "check", "message", "fix"), [
    (bridge_missing, "network", "hv2 has no bridge br-prod", "create bridge br-prod"),
    (other_guest_of_that_name, "destination_name", "a different guest named db01 (UUID other-uuid) is running on hv2",
     "rename or remove that guest on hv2"),
    (same_guest_on_both, "destination_name", "db01 is already running on hv2 while it runs on the source",
     "destroy the other"),
    (same_host_uuid, "host_identity", "report the same host UUID", "unique host_uuid"),
    (cpu_feature_missing, "cpu", "hv2's CPU lacks features the guest's CPU (custom qemu64 + aes) requires: aes",
     "whose CPU has aes"),
    (too_little_memory, "memory", "hv2 has 13,312 MiB available; the guest needs 20,480 MiB",
     "choose a destination with at least"),
    (only_32_bit, "architecture", "the guest is x86_64 (64-bit); hv2 (i686) runs only i686 (32-bit) guests",
     "runs x86_64 guests"),
    (machine_type_unknown, "machine_type", "does not provide the guest's machine type pc-i440fx-7.2", "upgrade QEMU"),
    (intel_model_to_amd, "cpu", "Skylake-Client is an Intel model (Intel source); hv2 has an AMD CPU",
     "vendor-neutral"),
    (older_qemu, "versions", "QEMU 6.2.0 < 8.2.1", "upgrade hv2"),
    (job_in_progress, "migration_job", "already has a job in progress", "virsh domjobabort db01"),
    (disk_only_on_source, "storage", "disk vda /images/db01.qcow2 is not visible on hv2", "copy_storage: all"),
    (host_device, "devices", "hostdev (pci)", "detach-device"),
    (shut_off, "guest_state", "db01 is shutoff on hv1: a live migration needs a running guest", "start the guest"),
    (paused, "guest_state", None, None),  # a warning, not a failure
], ids=lambda value: value.__name__ if callable(value) else None)
def test_each_problem_fails_its_check_with_the_fix(cloud, lv, clock, hv1, hv2, db01, setup, check, message, fix):
    setup(cloud, hv1, hv2, db01)
    result = run_preflight(lv, clock)
    if message is None:
        assert result["ok"] is True
        assert any(f["check"] == check and f["status"] == "warn" for f in result["findings"])
        return
    assert result["ok"] is False
    assert list(failed(result)) == [check], failed(result)
    assert message in failed(result)[check]["message"]
    assert fix in failed(result)[check]["fix"]


@pytest.mark.parametrize(("interface_driver", "node_device_driver"), [(True, True), (False, True)],
                         ids=["interface driver", "node device driver only"])
@pytest.mark.parametrize("bridge_on_destination", [True, False], ids=["bridge there", "bridge missing"])
def test_a_bridge_is_found_through_either_driver(cloud, lv, clock, hv1, hv2, db01, interface_driver,
                                                 node_device_driver, bridge_on_destination):
    db01.devices = BRIDGED
    hv1.interfaces["br-prod"] = True
    if bridge_on_destination:
        hv2.interfaces["br-prod"] = False  # a bridge without ports: operstate unknown, still usable
    hv2.interface_driver, hv2.node_device_driver = interface_driver, node_device_driver
    result = run_preflight(lv, clock)
    [network] = [f for f in result["findings"] if f["check"] == "network"]
    if bridge_on_destination:
        assert (network["status"], result["ok"]) == ("ok", True), network
        assert "bridge br-prod is active on hv2" in network["message"]
    else:
        assert (network["status"], result["ok"]) == ("fail", False), network
        assert "hv2 has no bridge br-prod" in network["message"]


def test_a_bridge_neither_driver_can_see_is_a_warning(cloud, lv, clock, hv1, hv2, db01):
    db01.devices = BRIDGED
    hv2.interface_driver = hv2.node_device_driver = False
    result = run_preflight(lv, clock)
    [network] = [f for f in result["findings"] if f["check"] == "network"]
    assert network["status"] == "warn"
    assert "virInterfaceLookupByName" in network["message"] and "virConnectListAllNodeDevices" in network["message"]
    assert network["fix"] == "check by hand on hv2: ip link show br-prod"


def test_intel_to_amd_with_a_portable_model_passes(lv, clock, hv2, db01):
    db01.cpu = AES_GUEST_CPU
    hv2.cpu_vendor = "AMD"
    result = run_preflight(lv, clock)
    assert result["ok"] is True
    cpu = next(f for f in result["findings"] if f["check"] == "cpu")
    assert "qemu64 is vendor-neutral, so it runs on Intel and AMD" in cpu["message"]


def test_shared_disk_seen_in_a_pool_on_both_hosts_passes(lv, clock, hv1, hv2, db01):
    db01.devices = DISK
    for host in (hv1, hv2):
        host.volumes["/images/db01.qcow2"] = ("images", 10 * GIB)
    result = run_preflight(lv, clock)
    assert result["ok"] is True
    assert any("hv2 sees disk vda /images/db01.qcow2 in storage pool images" in f["message"]
               for f in result["findings"])


def test_copied_disk_needs_room_in_a_destination_pool(lv, clock, hv2, db01):
    db01.devices = DISK
    db01.block_sizes["vda"] = 10 * GIB
    hv2.pools_free["/images"] = 4 * GIB
    result = run_preflight(lv, clock, copy_storage="all")
    assert "has 4,096 MiB free for /images/db01.qcow2; copying disk vda needs 10,240 MiB" in \
        failed(result)["storage"]["message"]
    hv2.pools_free["/images"] = 40 * GIB
    assert run_preflight(lv, clock, copy_storage="all")["ok"] is True


def test_an_unreachable_destination_is_the_transport_finding(lv, clock, db01):
    result = run_preflight(lv, clock, dest_uri="qemu+ssh://hv9/system")
    assert result["ok"] is False
    assert result["destination"] is None
    [finding] = result["findings"]
    assert (finding["check"], finding["status"]) == ("transport", "fail")
    assert "connecting to qemu+ssh://hv9/system failed" in finding["message"]


def test_a_firewalled_migration_port_fails(lv, clock, db01):
    result = run_preflight(lv, clock, transport="tcp", allow_insecure=True, probe="timeout")
    assert "a firewall drops the migration traffic" in failed(result)["ports"]["message"]


def tls_source_root(tmp_path, files):
    directory = tmp_path / "etc/pki/qemu"
    directory.mkdir(parents=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
        os.chmod(directory / name, 0o640 if "key" in name else 0o644)
    return str(tmp_path)


def tls_files_on(host, files):
    host.files["/etc/pki/qemu"] = {name: (content, 0o640 if "key" in name else 0o644, 0, os.getgid())
                                   for name, content in files.items()}


def run_tls_preflight(lv, clock, root):
    return run_preflight(lv, clock, transport="tls", root=root, qemu_ids=(None, os.getgid()),
                         wall_clock=NOW.timestamp)


def test_tls_is_checked_on_both_hosts_through_libvirt(lv, clock, db01, hv2, tmp_path):
    authority = Authority()
    tls_files_on(hv2, qemu_directory(authority, "hv2"))
    result = run_tls_preflight(lv, clock, tls_source_root(tmp_path, qemu_directory(authority, "hv1")))
    tls = next(f for f in result["findings"] if f["check"] == "tls")
    assert (tls["status"], result["ok"]) == ("ok", True), result["findings"]
    assert "hv1 can send (/etc/pki/qemu) and hv2 can receive (/etc/pki/qemu)" in tls["message"]
    assert hv2.transient_pools == []


def test_tls_missing_on_the_destination_fails_with_the_role_as_fix(lv, clock, db01, tmp_path):
    result = run_tls_preflight(lv, clock, tls_source_root(tmp_path, qemu_directory(Authority(), "hv1")))
    assert list(failed(result)) == ["tls"]
    assert "hv2 has no /etc/pki/qemu, where QEMU reads the certificates to receive a migration" in \
        failed(result)["tls"]["message"]
    assert "kvm.live_migration.hypervisor" in failed(result)["tls"]["fix"]


def test_tls_without_client_certificates_fails_on_the_source(lv, clock, db01, hv2, tmp_path):
    tls_files_on(hv2, qemu_directory(Authority(), "hv2"))
    result = run_tls_preflight(lv, clock, str(tmp_path))
    assert "hv1 has no /etc/pki/qemu, where QEMU reads the certificates to send a migration" in \
        failed(result)["tls"]["message"]


def test_a_guest_already_on_the_destination_has_nothing_to_check(cloud, lv, clock, hv2):
    cloud.add_guest(hv2, "db01")
    result = run_preflight(lv, clock)
    assert (result["ok"], result["already_migrated"]) == (True, True)
    assert result["findings"][0]["message"] == "db01 already runs on hv2: nothing to migrate"


def test_an_unknown_guest_fails_its_state(lv, clock):
    result = run_preflight(lv, clock)
    assert "db01 is not defined on hv1 or hv2" in failed(result)["guest_state"]["message"]


def test_convergence_is_predicted_from_a_measured_dirty_rate(lv, clock, db01):
    db01.migration.dirty_rate_mib = 8
    result = run_preflight(lv, clock, measure_dirty_rate=True, bandwidth_mib=64)
    convergence = next(f for f in result["findings"] if f["check"] == "convergence")
    assert convergence["status"] == "ok"
    assert "dirty rate 8 MiB/s against 64 MiB/s (ratio 0.12)" in convergence["message"]
    assert db01.migration.dirty_rate_calcs == [(1, 0)]


def test_cleartext_transport_without_allow_insecure_fails_the_transport_check(lv, clock, db01):
    result = run_preflight(lv, clock, transport="tcp")
    assert "transport=tcp sends the guest's memory across the network unencrypted" in \
        failed(result)["transport"]["message"]
    assert "allow_insecure: true" in failed(result)["transport"]["fix"]


@pytest.mark.parametrize(("options", "words"), [
    ({"memory_margin_mib": -1}, "memory_margin_mib=-1 is negative"),
    ({"bandwidth_mib": -5}, "bandwidth=-5 must be 0"),
    ({"transport": "rdma"}, "transport='rdma' is not one of tls, ssh, tcp"),
])
def test_bad_options_are_refused_with_the_value_and_the_fix(lv, clock, db01, options, words):
    with pytest.raises(MigrationError, match=re.escape(words)) as caught:
        run_preflight(lv, clock, **options)
    assert caught.value.fix


@pytest.mark.parametrize(("options", "words"), [
    ({"convergence_threshold": 1.5}, "convergence_threshold=1.5 is outside 0-1"),
    ({"max_downtime_ms": 0}, "max_downtime_ms=0 is outside 1-2000000"),
    # What migrate refuses, preflight refuses too (they share one validation).
    ({"transport": "ssh", "dest_uri": "qemu+tls://hv2/system"}, "transport=ssh tunnels through the libvirt connection"),
    ({"migrate_disks": ("vda",)}, "migrate_disks=vda needs copy_storage"),
    ({"parallel_connections": 0}, "parallel_connections=0 is outside 1-255"),
])
def test_bad_values_are_refused_as_migrate_refuses_them(options, words):
    request = PreflightRequest(name="db01", dest_uri=options.pop("dest_uri", DEST_URI), **options)
    with pytest.raises(MigrationError, match=re.escape(words)):
        validate_preflight_request(request)


# -- the modules -----------------------------------------------------------------------------------

def test_preflight_module_fails_the_task_with_every_fix(module_runner, cloud, hv2, db01):
    hv2.uuid = cloud.hosts[SOURCE_URI].uuid
    run = module_runner(preflight_module)
    outcome, result = run({"name": "db01", "dest_uri": DEST_URI, "transport": "ssh"})
    assert outcome == "fail"
    assert result["msg"].startswith("preflight of db01 from hv1 to hv2 failed 1 check: host_identity: ")
    assert "(fix: give each hypervisor a unique host_uuid" in result["msg"]
    assert result["failed_checks"] == ["host_identity"]
    outcome, result = run({"name": "db01", "dest_uri": DEST_URI, "transport": "ssh", "fail_on_error": False})
    assert (outcome, result["ok"], result["changed"]) == ("exit", False, False)


def test_host_info_module_describes_host_features_and_guests(module_runner, cloud, hv1, db01):
    db01.devices = DISK + BRIDGED
    db01.cpu = AES_GUEST_CPU
    hv1.volumes["/images/db01.qcow2"] = ("images", 10 * GIB)
    outcome, result = module_runner(host_info_module)({"probe_kvm": False})
    assert outcome == "exit" and result["changed"] is False
    host = result["host"]
    assert (host["hostname"], host["uuid"], host["arch"], host["local"]) == ("hv1", hv1.uuid, "x86_64", True)
    assert (host["libvirt_version"], host["qemu_version"]) == ("9.0.0", "8.2.1")
    assert host["memory"] == {"total_bytes": 16 * GIB, "free_bytes": 12 * GIB, "available_bytes": 13 * GIB}
    assert host["cpu"]["vendor"] == "Intel"
    assert {"kvm_usable", "hw_flag", "vendor", "reason", "accelerator"} <= set(result["virtualization"])
    [domain] = result["domains"]
    assert (domain["name"], domain["state"], domain["memory_bytes"], domain["migratable"]) == (
        "db01", "running", GIB, True)
    assert domain["cpu"]["features"] == ["aes"]
    assert domain["disks"][0]["pool"] == "images"
    assert domain["interfaces"][0]["bridge"] == "br-prod"
    # The documented json_query expressions (host_info EXAMPLES) work on the result.
    assert jmespath.search("[?state=='running' && migratable].name", result["domains"]) == ["db01"]
    assert "auto_converge" in jmespath.search("[?supported].name", result["migration_features"])


def test_host_info_of_a_remote_uri_does_not_read_the_local_kernel(cloud, lv):
    with Hypervisor(DEST_URI, libvirt_module=lv) as hypervisor:
        facts = HostInfo(hypervisor, local=False).gather()
    assert facts["virtualization"]["kvm_usable"] is None
    assert "is a remote connection" in facts["virtualization"]["reason"]
    assert facts["host"]["post_copy"]["possible"] is None
    assert facts["domains"] == []


def test_host_info_refuses_domains_the_host_does_not_have(module_runner, cloud, db01):
    run = module_runner(host_info_module)
    outcome, returned = run({"domains": ["db01", "ghost"], "probe_kvm": False})
    assert outcome == "fail"
    assert returned["msg"].startswith("domains: ghost is not defined on qemu:///system")
    outcome, returned = run({"domains": ["db01", db01.uuid], "probe_kvm": False})
    assert (outcome, [domain["name"] for domain in returned["domains"]]) == ("exit", ["db01"])


@pytest.mark.parametrize(("versions", "post_copy", "name", "supported", "reason"), [
    ({"libvirt": 9_000_000, "hypervisor": 7_002_000}, None, "zero_copy", True, "support it"),
    ({"libvirt": 9_000_000, "hypervisor": 7_002_000}, None, "compression.zstd", False, "needs libvirt 9.4.0"),
    ({"libvirt": 8_000_000, "hypervisor": 7_002_000}, None, "zero_copy", False, "needs libvirt 8.5.0"),
    ({"libvirt": 10_000_000, "hypervisor": 9_001_000}, None, "compression.mt", False, "removed in QEMU 9.1.0"),
    ({"libvirt": 9_000_000, "hypervisor": 7_002_000}, {"possible": False, "reason": "set the sysctl"}, "post_copy",
     False, "set the sysctl"),
])
def test_migration_features(lv, versions, post_copy, name, supported, reason):
    names = set(dir(lv)) | {"migrateStartPostCopy", "startDirtyRateCalc", "VIR_MIGRATE_ZEROCOPY"}
    feature = next(f for f in host_features(names, versions, post_copy) if f["name"] == name)
    assert feature["supported"] is supported
    assert reason in feature["reason"]
