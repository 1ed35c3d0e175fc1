"""Readers of libvirt XML: guest definitions, host capabilities, domain capabilities."""

from __future__ import annotations

import pytest

from ansible_collections.kvm.live_migration.plugins.module_utils.libvirtxml import (
    cpu_model_vendors,
    memory_bytes,
    parse_capabilities,
    parse_guest,
)

GUEST = """
<domain type='kvm'>
  <name>db01</name>
  <uuid>4b1f1bb6-5ad8-4c3f-9a49-6cdbd3c6a0e1</uuid>
  <memory unit='GiB'>4</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><kernel>/srv/boot/vmlinuz</kernel>
      <initrd>/srv/boot/initrd.gz</initrd></os>
  <cpu mode='custom' match='exact'><model fallback='forbid'>Skylake-Client</model>
    <feature policy='require' name='avx512f'/><feature name='aes'/><feature policy='disable' name='hle'/></cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/db01.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/db01-data'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='bridge'><mac address='52:54:00:aa:bb:01'/><source bridge='br-prod'/><model type='virtio'/>
    </interface>
    <interface type='network'><mac address='52:54:00:aa:bb:02'/><source network='backup'/></interface>
    <interface type='direct'><source dev='eno2' mode='bridge'/></interface>
    <hostdev mode='subsystem' type='pci'><source><address domain='0' bus='3' slot='0' function='0'/></source>
    </hostdev>
    <filesystem type='mount'><driver type='virtiofs'/><source dir='/srv/share'/><target dir='share'/></filesystem>
  </devices>
</domain>
"""


def test_a_guest_definition_is_read_into_plain_values():
    guest = parse_guest(GUEST)
    assert (guest.name, guest.domain_type, guest.arch, guest.machine) == ("db01", "kvm", "x86_64", "pc-q35-7.2")
    assert guest.memory_bytes == 4 * 1024**3
    assert guest.vcpus == 2
    assert guest.emulator == "/usr/bin/qemu-system-x86_64"
    assert (guest.cpu.mode, guest.cpu.model, guest.cpu.required, guest.cpu.disabled) == (
        "custom", "Skylake-Client", ("avx512f", "aes"), ("hle",))
    assert "avx512f" in guest.cpu.xml
    assert guest.boot_files == ("/srv/boot/vmlinuz", "/srv/boot/initrd.gz")


def test_disks_say_where_their_data_lives():
    disks = {disk.target: disk for disk in parse_guest(GUEST).disks}
    assert (disks["vda"].kind, disks["vda"].path, disks["vda"].format, disks["vda"].cache) == (
        "file", "/var/lib/libvirt/images/db01.qcow2", "qcow2", "none")
    assert (disks["vdb"].kind, disks["vdb"].path, disks["vdb"].source) == ("network", None, "rbd:pool/db01-data")
    assert (disks["sda"].device, disks["sda"].path, disks["sda"].readonly) == ("cdrom", None, True)


def test_interfaces_name_their_network_bridge_or_device():
    interfaces = [(i.kind, i.network, i.bridge, i.device, i.mac) for i in parse_guest(GUEST).interfaces]
    assert interfaces == [("bridge", None, "br-prod", None, "52:54:00:aa:bb:01"),
                          ("network", "backup", None, None, "52:54:00:aa:bb:02"),
                          ("direct", None, None, "eno2", None)]


def test_host_devices_and_virtiofs_block_migration():
    devices = [blocker.device for blocker in parse_guest(GUEST).blockers]
    assert devices == ["hostdev (pci)", "filesystem (virtiofs)"]


@pytest.mark.parametrize(("cpu", "blocked"), [
    ("<cpu mode='host-passthrough' migratable='off'/>", True),
    ("<cpu mode='host-passthrough' migratable='on'/>", False),
    ("<cpu mode='host-passthrough'/>", False),
    ("<cpu mode='host-model'/>", False),
])
def test_a_host_passthrough_cpu_that_is_not_migratable_blocks(cpu, blocked):
    xml = f"<domain type='kvm'><name>g</name><uuid>u</uuid><memory>1024</memory>{cpu}<devices/></domain>"
    assert bool(parse_guest(xml).blockers) is blocked


def test_a_guest_without_cpu_element_uses_the_default_model():
    guest = parse_guest("<domain type='qemu'><name>g</name><uuid>u</uuid><memory unit='MiB'>512</memory></domain>")
    assert (guest.cpu.mode, guest.cpu.model, guest.cpu.xml) == ("default", None, None)
    assert guest.memory_bytes == 512 * 1024**2
    assert guest.disks == guest.interfaces == guest.blockers == ()


@pytest.mark.parametrize(("value", "unit", "expected"), [
    ("1024", None, 1024 * 1024), ("2", "GiB", 2 * 1024**3), ("512", "M", 512 * 1024**2), ("1", "GB", 10**9),
    ("10", "bytes", 10),
])
def test_memory_units(value, unit, expected):
    assert memory_bytes(value, unit) == expected


def test_an_unknown_memory_unit_is_named():
    with pytest.raises(ValueError, match="'furlongs'"):
        memory_bytes("1", "furlongs")


CAPABILITIES = """
<capabilities>
  <host><uuid>1b2c3d4e-0000-4000-8000-000000000001</uuid>
    <cpu><arch>x86_64</arch><model>EPYC-Rome</model><vendor>AMD</vendor>
      <topology sockets='2' dies='1' cores='16' threads='2'/><feature name='svm'/><feature name='x2apic'/></cpu>
    <migration_features><live/><uri_transports><uri_transport>tcp</uri_transport>
      <uri_transport>rdma</uri_transport></uri_transports></migration_features>
  </host>
  <guest><os_type>hvm</os_type><arch name='i686'><wordsize>32</wordsize><machine>pc</machine>
    <domain type='qemu'/></arch></guest>
  <guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine><machine>pc-q35-7.2</machine>
    <domain type='qemu'/><domain type='kvm'/></arch></guest>
  <guest><os_type>exe</os_type><arch name='x86_64'><domain type='lxc'/></arch></guest>
</capabilities>
"""


def test_host_capabilities_give_cpu_uuid_and_what_guests_run():
    caps = parse_capabilities(CAPABILITIES)
    assert (caps.uuid, caps.arch, caps.cpu_vendor, caps.cpu_model) == (
        "1b2c3d4e-0000-4000-8000-000000000001", "x86_64", "AMD", "EPYC-Rome")
    assert caps.cpu_features == ("svm", "x2apic")
    assert caps.topology == {"sockets": 2, "dies": 1, "cores": 16, "threads": 2}
    assert caps.migration_transports == ("tcp", "rdma")
    x86 = caps.guest_arch("x86_64", "kvm")
    assert x86.wordsize == 64
    assert {"pc", "pc-i440fx-7.2", "pc-q35-7.2"} <= set(x86.machines)
    assert caps.guest_arch("i686", "kvm") is None
    assert caps.guest_arch("i686").domain_types == ("qemu",)
    assert caps.guest_arch("aarch64") is None


def test_cpu_vendor_ids_become_names():
    caps = parse_capabilities(CAPABILITIES.replace("<vendor>AMD</vendor>", "<vendor>GenuineIntel</vendor>"))
    assert caps.cpu_vendor == "Intel"


def test_domain_capabilities_give_each_models_vendor():
    domcaps = """<domainCapabilities><cpu><mode name='host-model' supported='yes'><model>EPYC</model></mode>
      <mode name='custom' supported='yes'><model usable='yes' vendor='unknown'>qemu64</model>
      <model usable='no' vendor='Intel'>Skylake-Client</model><model usable='yes' vendor='AMD'>EPYC</model>
      <model usable='yes'>486</model></mode></cpu></domainCapabilities>"""
    assert cpu_model_vendors(domcaps) == {"qemu64": None, "Skylake-Client": "Intel", "EPYC": "AMD", "486": None}
