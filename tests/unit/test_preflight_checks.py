"""Each preflight check's logic on hand-made inputs: the status, and what the message and fix name."""

from __future__ import annotations

import pytest

from ansible_collections.kvm.live_migration.plugins.module_utils.checks_guest import (
    NetworkPresence,
    StoragePath,
    Volume,
    check_convergence,
    check_destination_name,
    check_devices,
    check_guest_state,
    check_memory,
    check_migration_job,
    check_networks,
    check_storage,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.checks_pair import (
    CpuComparison,
    HostIdentity,
    check_architecture,
    check_cpu,
    check_host_identity,
    check_machine_type,
    check_ports,
    check_transport,
    check_versions,
    missing_cpu_features,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.connection import GuestState
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.libvirtxml import (
    Blocker,
    GuestArch,
    GuestCpu,
    GuestDefinition,
    HostCapabilities,
    Interface,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.probes import PortProbe

MIB = 1024 * 1024
GIB = 1024 * MIB
X86_64 = GuestArch("x86_64", 64, ("qemu", "kvm"), ("pc", "pc-i440fx-7.2", "pc-q35-7.2"), "/usr/bin/qemu-system-x86_64")
I686 = GuestArch("i686", 32, ("qemu", "kvm"), ("pc", "pc-i440fx-7.2"), "/usr/bin/qemu-system-i386")
UUID = "4b1f1bb6-5ad8-4c3f-9a49-6cdbd3c6a0e1"


def host(arch="x86_64", vendor="Intel", model="Skylake-Client-IBRS", features=("avx2", "aes"), guests=(X86_64, I686),
         uuid="host-1"):
    return HostCapabilities(uuid=uuid, arch=arch, cpu_vendor=vendor, cpu_model=model, cpu_features=tuple(features),
                            topology={}, guests=tuple(guests))


def guest(cpu=None, arch="x86_64", machine="pc-i440fx-7.2", domain_type="kvm", memory=4 * GIB, blockers=()):
    return GuestDefinition(name="db01", uuid=UUID, domain_type=domain_type, arch=arch, machine=machine,
                           memory_bytes=memory, vcpus=2, cpu=cpu or GuestCpu("default", None, None),
                           emulator="/usr/bin/qemu-system-x86_64", blockers=tuple(blockers))


def custom(model, *required):
    return GuestCpu("custom", model, None, tuple(required), xml=f"<cpu mode='custom'><model>{model}</model></cpu>")


# -- architecture and machine type ---------------------------------------------------------------

@pytest.mark.parametrize(("the_guest", "destination", "status", "words"), [
    pytest.param(guest(), host(), "ok", "runs x86_64 (64-bit) guests of type kvm", id="same architecture"),
    pytest.param(guest(), host(arch="i686", guests=(I686,)), "fail", "the guest is x86_64 (64-bit); hv2 (i686) "
                 "runs only i686 (32-bit) guests", id="64-bit guest to a 32-bit-only host"),
    pytest.param(guest(arch="i686"), host(), "ok", "i686 (32-bit)", id="32-bit guest to a 64-bit host"),
    pytest.param(guest(), host(guests=(GuestArch("x86_64", 64, ("qemu",), ("pc",), None),)), "fail",
                 "only as qemu, not as kvm", id="kvm guest to a host without KVM"),
    pytest.param(guest(arch="aarch64"), host(), "fail", "runs only x86_64 (64-bit), i686 (32-bit) guests",
                 id="another architecture"),
])
def test_architecture(the_guest, destination, status, words):
    finding = check_architecture(the_guest, host(), destination, "hv2")
    assert finding.status == status
    assert words in finding.message
    assert (finding.fix is None) is (status == "ok")


@pytest.mark.parametrize(("machine", "status"), [("pc-i440fx-7.2", "ok"), ("pc-q35-8.2", "fail")])
def test_machine_type(machine, status):
    finding = check_machine_type(guest(machine=machine), host(), "hv2")
    assert finding.status == status
    assert machine in finding.message
    if status == "fail":
        assert "upgrade QEMU on hv2" in finding.fix


# -- CPU -----------------------------------------------------------------------------------------

VENDORS = {"qemu64": None, "x86-64-v2": None, "Skylake-Client": "Intel", "EPYC-Rome": "AMD"}
INTEL_HOST = host(vendor="Intel", model="Skylake-Client-IBRS", features=("avx2", "aes", "vmx"))
AMD_HOST = host(vendor="AMD", model="EPYC-Rome", features=("avx2", "aes", "svm"), uuid="host-2")


@pytest.mark.parametrize(("cpu", "source", "destination", "comparison", "status", "words"), [
    pytest.param(custom("Skylake-Client"), INTEL_HOST, INTEL_HOST, CpuComparison("identical"), "ok",
                 "identical", id="same CPU"),
    pytest.param(custom("Skylake-Client", "avx512f", "avx512dq"), INTEL_HOST, INTEL_HOST,
                 CpuComparison("incompatible", ("avx512f", "avx512dq")), "fail", "requires: avx512f, avx512dq",
                 id="destination lacks named features"),
    pytest.param(custom("qemu64", "aes"), INTEL_HOST, AMD_HOST, CpuComparison("superset"), "ok",
                 "qemu64 is vendor-neutral, so it runs on Intel and AMD", id="Intel to AMD with a portable model"),
    pytest.param(custom("x86-64-v2"), AMD_HOST, INTEL_HOST, CpuComparison("superset"), "ok",
                 "runs on AMD and Intel", id="AMD to Intel with x86-64-v2"),
    pytest.param(custom("Skylake-Client"), INTEL_HOST, AMD_HOST, CpuComparison("incompatible"), "fail",
                 "Skylake-Client is an Intel model (Intel source); hv2 has an AMD CPU", id="Intel model to AMD"),
    pytest.param(custom("EPYC-Rome"), AMD_HOST, INTEL_HOST, CpuComparison("incompatible"), "fail",
                 "EPYC-Rome is an AMD model", id="AMD model to Intel"),
    pytest.param(GuestCpu("host-passthrough", None, None), INTEL_HOST, INTEL_HOST, CpuComparison("skipped"), "ok",
                 "is the same", id="host-passthrough between identical hosts"),
    pytest.param(GuestCpu("host-passthrough", None, None), INTEL_HOST,
                 host(vendor="Intel", model="Cascadelake-Server", features=("avx2", "vmx")), CpuComparison("skipped"),
                 "fail", "model Skylake-Client-IBRS vs Cascadelake-Server; hv2 lacks aes",
                 id="host-passthrough across different CPUs"),
    pytest.param(GuestCpu("host-passthrough", None, None), INTEL_HOST, AMD_HOST, CpuComparison("skipped"), "fail",
                 "vendor Intel vs AMD", id="host-passthrough Intel to AMD"),
    pytest.param(GuestCpu("host-passthrough", None, None), INTEL_HOST,
                 host(features=("avx2", "aes", "vmx", "avx512f")), CpuComparison("skipped"), "warn",
                 "has more features (avx512f)", id="host-passthrough to a bigger CPU"),
    pytest.param(GuestCpu("default", None, None), INTEL_HOST, AMD_HOST, CpuComparison("skipped"), "ok",
                 "default CPU model", id="no CPU element"),
    pytest.param(custom("Skylake-Client"), INTEL_HOST, INTEL_HOST, CpuComparison("error", message="no QEMU"), "warn",
                 "could not compare the guest's CPU: no QEMU", id="comparison failed"),
])
def test_cpu(cpu, source, destination, comparison, status, words):
    finding = check_cpu(guest(cpu=cpu), source, destination, comparison, VENDORS, "hv2")
    assert finding.status == status, finding
    assert words in finding.message


def test_intel_model_to_amd_names_portable_models_in_the_fix():
    finding = check_cpu(guest(cpu=custom("Skylake-Client")), INTEL_HOST, AMD_HOST, CpuComparison("incompatible"),
                        VENDORS, "hv2")
    assert "vendor-neutral model (qemu64, kvm64, x86-64-v2/-v3)" in finding.fix


def test_missing_features_fix_names_them():
    finding = check_cpu(guest(cpu=custom("Skylake-Client", "avx512f")), INTEL_HOST, INTEL_HOST,
                        CpuComparison("incompatible", ("avx512f",)), VENDORS, "hv2")
    assert "whose CPU has avx512f" in finding.fix


@pytest.mark.parametrize(("message", "names"), [
    ("the CPU is incompatible with host CPU: Host CPU does not provide required features: avx512f, avx512dq",
     ("avx512f", "avx512dq")),
    ("guest CPU doesn't match specification: missing features: aes", ("aes",)),
    ("the CPU is incompatible with host CPU", ()),
])
def test_missing_cpu_features_from_libvirts_message(message, names):
    assert missing_cpu_features(message) == names


# -- memory --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("available", "status", "words"), [
    (8 * GIB, "ok", "hv2 has 8,192 MiB available; the guest needs 4,096 MiB plus a 512 MiB margin"),
    (4 * GIB + 512 * MIB, "ok", "4,608 MiB available"),
    (4 * GIB + 100 * MIB, "fail", "(412 MiB short)"),
    (2 * GIB, "fail", "hv2 has 2,048 MiB available"),
])
def test_memory(available, status, words):
    finding = check_memory(4 * GIB, {"available_bytes": available}, 512 * MIB, "hv2")
    assert finding.status == status
    assert words in finding.message


# -- storage -------------------------------------------------------------------------------------

def disk(path="/images/db01.qcow2", kind="file", **options):
    return StoragePath(options.pop("what", "disk vda"), kind, path, options.pop("source", path),
                       options.pop("readonly", False), options.pop("copied", False), **options)


@pytest.mark.parametrize(("item", "status", "words"), [
    pytest.param(disk(on_source=Volume("images", GIB), on_destination=Volume("images", GIB)), "ok",
                 "hv2 sees disk vda /images/db01.qcow2 in storage pool images", id="shared, in a pool on both"),
    pytest.param(disk(on_source=Volume("images", GIB), on_destination=Volume("images", 2 * GIB)), "fail",
                 "differs from the source's", id="same path, different file"),
    pytest.param(disk(), "fail", "is not visible on hv2", id="not on the destination"),
    pytest.param(disk(source_filesystem="nfs4"), "warn", "is on nfs4 on the source", id="nfs, no pool on hv2"),
    pytest.param(disk(kind="network", path=None, source="rbd:pool/db01"), "ok", "network disk (rbd:pool/db01)",
                 id="network disk"),
    pytest.param(disk(copied=True, dest_pool_free_bytes=10 * GIB, size_bytes=GIB), "ok", "will be copied",
                 id="copied, room on hv2"),
    pytest.param(disk(copied=True, dest_pool_free_bytes=GIB // 2, size_bytes=GIB), "fail", "needs 1,024 MiB",
                 id="copied, no room"),
    pytest.param(disk(copied=True), "fail", "no storage pool there has /images as its directory",
                 id="copied, no pool to create it in"),
    pytest.param(disk(copied=True, on_destination=Volume("images", GIB)), "warn", "already exists on hv2",
                 id="copied onto an existing file"),
    pytest.param(disk(what="boot file", path="/boot/vmlinuz", readonly=True), "fail", "boot file /boot/vmlinuz is not",
                 id="boot file missing"),
])
def test_storage(item, status, words):
    [finding] = check_storage([item], "hv2")
    assert finding.status == status, finding
    assert words in finding.message


def test_storage_fix_offers_shared_storage_or_copy():
    [finding] = check_storage([disk()], "hv2")
    assert "copy_storage: all" in finding.fix


def test_storage_without_disks_is_ok():
    assert [f.status for f in check_storage([disk(path=None, kind="file")], "hv2")] == ["ok"]
    assert [f.status for f in check_storage([], "hv2")] == ["ok"]


# -- networks ------------------------------------------------------------------------------------

BRIDGED = Interface("bridge", None, "br-prod", None, "52:54:00:aa:bb:01", "virtio")
NETWORKED = Interface("network", "backup", None, None, "52:54:00:aa:bb:02", "virtio")


@pytest.mark.parametrize(("interface", "presence", "status", "message_words", "fix_words"), [
    (BRIDGED, NetworkPresence("bridge", "br-prod", "active"), "ok", "bridge br-prod is active on hv2", None),
    (BRIDGED, NetworkPresence("bridge", "br-prod", "missing"), "fail", "hv2 has no bridge br-prod",
     "create bridge br-prod"),
    (BRIDGED, NetworkPresence("bridge", "br-prod", "inactive"), "fail", "exists on hv2 but is not active",
     "ip link set br-prod up"),
    (NETWORKED, NetworkPresence("network", "backup", "missing"), "fail", "hv2 has no network backup",
     "define and start libvirt network backup"),
    (NETWORKED, NetworkPresence("network", "backup", "inactive"), "fail", "not active",
     "virsh net-start backup && virsh net-autostart backup"),
    (BRIDGED, NetworkPresence("bridge", "br-prod", "unknown", "no interface driver"), "warn",
     "could not check bridge br-prod on hv2: no interface driver", "ip link show br-prod"),
])
def test_networks(interface, presence, status, message_words, fix_words):
    [finding] = check_networks([interface], [presence], "hv2")
    assert finding.status == status
    assert message_words in finding.message
    assert interface.mac in finding.message
    if fix_words:
        assert fix_words in finding.fix


# -- identity, transport, ports, versions --------------------------------------------------------

SOURCE = HostIdentity("hv1", "uuid-1", ("10.0.0.11",))


@pytest.mark.parametrize(("destination", "migrate_uri", "status", "words"), [
    (HostIdentity("hv2", "uuid-2", ("10.0.0.12",)), None, "ok", "hv2 resolves to 10.0.0.12"),
    (HostIdentity("hv2", "uuid-1", ("10.0.0.12",)), None, "fail", "report the same host UUID uuid-1"),
    (HostIdentity("hv2", "uuid-2", ()), None, "fail", "does not resolve here"),
    (HostIdentity("hv2", "uuid-2", ()), "tcp://10.0.0.12", "ok", "reached by tcp://10.0.0.12"),
    (HostIdentity("hv1", "uuid-2", ("10.0.0.11",)), None, "fail", "both hosts call themselves 'hv1'"),
    (HostIdentity("localhost.localdomain", "uuid-2", ("127.0.0.1",)), None, "fail", "calls itself"),
])
def test_host_identity(destination, migrate_uri, status, words):
    finding = check_host_identity(SOURCE, destination, migrate_uri)
    assert finding.status == status
    assert words in finding.message


def test_same_host_uuid_fix_says_where_to_set_it():
    finding = check_host_identity(SOURCE, HostIdentity("hv2", "uuid-1", ("10.0.0.12",)))
    assert "host_uuid in /etc/libvirt/libvirtd.conf" in finding.fix


@pytest.mark.parametrize(("transport", "options", "status", "words"), [
    ("ssh", {}, "ok", "answers at qemu+ssh://hv2/system"),
    ("ssh", {"connect_error": MigrationError("connecting failed: Host key verification failed", fix="trust it")},
     "fail", "Host key verification failed"),
    ("tls", {}, "ok", "answers at qemu+ssh://hv2/system"),
    ("ssh", {"module_on_source": False}, "warn", "not from the source"),
])
def test_transport(transport, options, status, words):
    finding = check_transport(transport, "qemu+ssh://hv2/system", **options)
    assert finding.status == status
    assert words in finding.message


@pytest.mark.parametrize(("transport", "outcome", "status", "words"), [
    ("tcp", "refused", "ok", "no firewall drops"),
    ("tls", "open", "ok", "in use"),
    ("tcp", "timeout", "fail", "a firewall drops the migration traffic"),
    ("tcp", "unreachable", "fail", "not reachable"),
    ("ssh", "timeout", "ok", "no migration port is needed"),
])
def test_ports(transport, outcome, status, words):
    finding = check_ports(transport, PortProbe("hv2", 49152, outcome))
    assert finding.status == status
    assert words in finding.message


@pytest.mark.parametrize(("destination", "status", "words"), [
    ({"libvirt": 9_000_000, "hypervisor": 7_002_000}, "ok", "not older"),
    ({"libvirt": 10_000_000, "hypervisor": 8_002_000}, "ok", "not older"),
    ({"libvirt": 8_000_000, "hypervisor": 7_002_000}, "fail", "libvirt 8.0.0 < 9.0.0"),
    ({"libvirt": 9_000_000, "hypervisor": 6_002_000}, "fail", "QEMU 6.2.0 < 7.2.0"),
])
def test_versions(destination, status, words):
    finding = check_versions({"libvirt": 9_000_000, "hypervisor": 7_002_000}, destination, "hv1", "hv2")
    assert finding.status == status
    assert words in finding.message


# -- the guest and the destination's guests ------------------------------------------------------

def test_devices():
    assert check_devices(()).status == "ok"
    finding = check_devices((Blocker("hostdev (pci)", "a host device is passed through"),))
    assert finding.status == "fail"
    assert "hostdev (pci): a host device is passed through" in finding.message
    assert "virsh detach-device --live" in finding.fix


@pytest.mark.parametrize(("state", "status"), [("running", "ok"), ("paused", "warn"), ("shutoff", "fail")])
def test_guest_state(state, status):
    assert check_guest_state("db01", state, "hv1").status == status


@pytest.mark.parametrize(("job_type", "status"), [(0, "ok"), (None, "ok"), (2, "fail")])
def test_migration_job(job_type, status):
    finding = check_migration_job("db01", job_type, "hv1")
    assert finding.status == status
    if status == "fail":
        assert "virsh domjobabort db01" in finding.fix


def state(name="db01", uuid=UUID, current="running"):
    return GuestState(name, uuid, current, True)


@pytest.mark.parametrize(("by_name", "by_uuid", "status", "words"), [
    (None, None, "ok", "no guest named db01"),
    (state(current="shutoff"), state(current="shutoff"), "ok", "inactive definition"),
    (state(), state(), "fail", "already running on hv2"),
    (state(uuid="other-uuid"), None, "fail", "a different guest named db01 (UUID other-uuid) is running"),
    (state(uuid="other-uuid", current="shutoff"), None, "fail", "is shutoff on hv2"),
    (None, state(name="db01-old", current="shutoff"), "fail", "under another name, db01-old"),
])
def test_destination_name(by_name, by_uuid, status, words):
    finding = check_destination_name(guest(), by_name, by_uuid, "hv2")
    assert finding.status == status
    assert words in finding.message


# -- convergence ---------------------------------------------------------------------------------

def prediction(ratio, converges, strategy="precopy"):
    return {"dirty_rate_bps": int(ratio * 64 * MIB), "bandwidth_bps": 64 * MIB, "ratio": ratio,
            "converges": converges, "precopy_s": 12.0, "strategy": strategy, "why": "because"}


@pytest.mark.parametrize(("predicted", "permits", "status", "words"), [
    (prediction(0.3, True), True, "ok", "pre-copy converges in about 12.0 s"),
    (prediction(0.95, False, "auto_converge"), True, "warn", "will start with auto_converge"),
    (prediction(1.4, False), False, "warn", "expect an abort"),
    ({"dirty_rate_bps": None, "ratio": None, "why": "no bandwidth cap"}, True, "warn", "no prediction"),
])
def test_convergence(predicted, permits, status, words):
    finding = check_convergence(predicted, permits)
    assert finding.status == status
    assert words in finding.message
