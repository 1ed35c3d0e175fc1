# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pure readers of libvirt's XML: a guest's definition, host capabilities, domain capabilities.

They return plain dataclasses and dicts (no libvirt, no I/O), so the preflight checks and
host_info's facts can be tested on XML text alone.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

KIB = 1024
_MEMORY_UNITS = {
    "b": 1, "bytes": 1, "kb": 1000, "k": KIB, "kib": KIB, "mb": 1000**2, "m": KIB**2, "mib": KIB**2,
    "gb": 1000**3, "g": KIB**3, "gib": KIB**3, "tb": 1000**4, "t": KIB**4, "tib": KIB**4,
}
# Network file systems and cluster file systems: a path on one is normally seen by other hosts too.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "glusterfs", "fuse.glusterfs", "ceph", "fuse.ceph", "cephfs", "gfs2", "ocfs2",
    "lustre", "gpfs", "beegfs", "fuse.sshfs", "9p", "virtiofs", "fuse.cephfs", "fuse.moosefs", "moosefs",
})
# Storage pool types whose volumes every host attached to the same backend sees.
SHARED_POOL_TYPES = frozenset({"netfs", "rbd", "gluster", "iscsi", "iscsi-direct", "sheepdog", "mpath", "vstorage"})
# x86 CPU models QEMU defines without a vendor: they run on Intel and AMD hosts alike.
VENDOR_NEUTRAL_MODELS = frozenset({
    "qemu64", "qemu32", "kvm64", "kvm32", "max", "base", "486", "pentium", "pentium2", "pentium3",
    "x86-64-v1", "x86-64-v2", "x86-64-v3", "x86-64-v4",
})
_VENDOR_NAMES = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "HygonGenuine": "Hygon", "CentaurHauls": "VIA"}


@dataclass(frozen=True)
class Disk:
    target: str
    device: str  # disk, cdrom, floppy, lun
    kind: str  # file, block, network, volume, dir, nvme
    path: str | None  # the file or block device; None for network disks and empty drives
    source: str | None  # what the disk comes from, as a person reads it (path, protocol/name, pool/volume)
    format: str | None
    readonly: bool
    shareable: bool
    cache: str | None

    def as_dict(self):
        return {"target": self.target, "device": self.device, "type": self.kind, "path": self.path,
                "source": self.source, "format": self.format, "readonly": self.readonly,
                "shareable": self.shareable, "cache": self.cache}


@dataclass(frozen=True)
class Interface:
    kind: str  # network, bridge, direct, user, hostdev, vhostuser, ethernet, ...
    network: str | None
    bridge: str | None
    device: str | None  # host device of a direct (macvtap) interface
    mac: str | None
    model: str | None

    def as_dict(self):
        return {"type": self.kind, "network": self.network, "bridge": self.bridge, "device": self.device,
                "mac": self.mac, "model": self.model}


@dataclass(frozen=True)
class GuestCpu:
    mode: str  # custom, host-model, host-passthrough, maximum; "default" when the XML names none
    model: str | None
    vendor: str | None
    required: tuple = ()  # features the guest requires (policy require or force)
    disabled: tuple = ()
    migratable: bool | None = None  # host-passthrough/maximum: migratable='on|off'
    xml: str | None = None  # the <cpu> element, for compareHypervisorCPU

    def as_dict(self):
        return {"mode": self.mode, "model": self.model, "vendor": self.vendor, "features": list(self.required),
                "disabled_features": list(self.disabled), "migratable": self.migratable}


@dataclass(frozen=True)
class Blocker:
    device: str
    reason: str

    def as_dict(self):
        return {"device": self.device, "reason": self.reason}


@dataclass(frozen=True)
class GuestDefinition:
    name: str
    uuid: str
    domain_type: str  # kvm, qemu
    arch: str | None
    machine: str | None
    memory_bytes: int
    vcpus: int
    cpu: GuestCpu
    emulator: str | None
    disks: tuple = ()
    interfaces: tuple = ()
    boot_files: tuple = ()  # kernel, initrd, dtb: files QEMU opens at the same path on the destination
    blockers: tuple = ()


def memory_bytes(value, unit="KiB"):
    """libvirt memory elements: a number with a unit attribute, KiB when there is none."""
    factor = _MEMORY_UNITS.get((unit or "KiB").lower())
    if factor is None:
        raise ValueError(f"unknown memory unit {unit!r}")
    return int(value) * factor


def vendor_name(vendor_id):
    """Intel, AMD, ... from a CPUID vendor string or libvirt's vendor element."""
    if not vendor_id:
        return None
    return _VENDOR_NAMES.get(vendor_id, vendor_id)


def parse_guest(xml_text):
    """A GuestDefinition from a domain's XML (``XMLDesc``)."""
    root = ET.fromstring(xml_text)
    memory = root.find("memory")
    os_type = root.find("os/type")
    vcpu = root.find("vcpu")
    return GuestDefinition(
        name=root.findtext("name"),
        uuid=root.findtext("uuid"),
        domain_type=root.get("type"),
        arch=None if os_type is None else os_type.get("arch"),
        machine=None if os_type is None else os_type.get("machine"),
        memory_bytes=0 if memory is None else memory_bytes(memory.text, memory.get("unit")),
        vcpus=int(vcpu.text) if vcpu is not None and vcpu.text else 1,
        cpu=parse_guest_cpu(root.find("cpu")),
        emulator=root.findtext("devices/emulator"),
        disks=tuple(_disk(element) for element in root.findall("devices/disk")),
        interfaces=tuple(_interface(element) for element in root.findall("devices/interface")),
        boot_files=tuple(path for path in (root.findtext(f"os/{tag}") for tag in ("kernel", "initrd", "dtb")) if path),
        blockers=tuple(migration_blockers(root)),
    )


def parse_guest_cpu(element):
    if element is None:
        return GuestCpu(mode="default", model=None, vendor=None)
    migratable = element.get("migratable")
    features = element.findall("feature")
    return GuestCpu(
        mode=element.get("mode", "custom"),
        model=element.findtext("model"),
        vendor=element.findtext("vendor"),
        required=tuple(f.get("name") for f in features if f.get("policy", "require") in ("require", "force")),
        disabled=tuple(f.get("name") for f in features if f.get("policy") in ("disable", "forbid")),
        migratable=None if migratable is None else migratable == "on",
        xml=ET.tostring(element, encoding="unicode"),
    )


def _disk(element):
    source = element.find("source")
    kind = element.get("type", "file")
    target = element.find("target")
    driver = element.find("driver")
    path = None
    described = None
    if source is not None:
        if kind in ("file", "block", "dir"):
            path = source.get({"file": "file", "block": "dev", "dir": "dir"}[kind])
            described = path
        elif kind == "network":
            described = f"{source.get('protocol')}:{source.get('name')}"
        elif kind == "volume":
            described = f"{source.get('pool')}/{source.get('volume')}"
        elif kind == "nvme":
            address = source.find("address")
            described = "nvme" if address is None else "nvme:" + ":".join(
                address.get(key, "") for key in ("domain", "bus", "slot", "function"))
    return Disk(
        target=None if target is None else target.get("dev"),
        device=element.get("device", "disk"),
        kind=kind,
        path=path,
        source=described,
        format=None if driver is None else driver.get("type"),
        readonly=element.find("readonly") is not None,
        shareable=element.find("shareable") is not None,
        cache=None if driver is None else driver.get("cache"),
    )


def _interface(element):
    source = element.find("source")
    model = element.find("model")
    mac = element.find("mac")

    def source_attribute(name):
        return None if source is None else source.get(name)

    return Interface(
        kind=element.get("type"),
        network=source_attribute("network"),
        bridge=source_attribute("bridge"),
        device=source_attribute("dev") if element.get("type") == "direct" else None,
        mac=None if mac is None else mac.get("address"),
        model=None if model is None else model.get("type"),
    )


def migration_blockers(root):
    """Devices and settings of a guest that QEMU or libvirt cannot live-migrate."""
    devices = root.find("devices")
    if devices is not None:
        yield from _device_blockers(devices)
    cpu = root.find("cpu")
    if cpu is not None and cpu.get("mode") in ("host-passthrough", "maximum") and cpu.get("migratable") == "off":
        yield Blocker("cpu", "the CPU is host-passthrough with migratable='off' (invariant TSC and other "
                             "host-only features exposed)")


def _device_blockers(devices):
    """Devices whose state QEMU cannot move to another host."""
    for hostdev in devices.findall("hostdev"):
        yield Blocker(f"hostdev ({hostdev.get('type', 'unknown')})",
                      "a host device is passed through: its state lives in the hardware; hot-unplug it first")
    for interface in devices.findall("interface"):
        if interface.get("type") == "hostdev":
            yield Blocker("interface (hostdev)", "an SR-IOV network device is passed through; hot-unplug it first")
    for shmem in devices.findall("shmem"):
        model = shmem.find("model")
        if model is None or model.get("type") != "ivshmem-plain" or shmem.find("server") is not None:
            yield Blocker(f"shmem {shmem.get('name')}", "shared memory with a server or doorbell cannot migrate")
    for filesystem in devices.findall("filesystem"):
        driver = filesystem.find("driver")
        if driver is not None and driver.get("type") == "virtiofs":
            yield Blocker("filesystem (virtiofs)", "virtiofs keeps state in virtiofsd on this host")
    for disk in devices.findall("disk"):
        if disk.get("type") == "nvme":
            yield Blocker(f"disk {_target(disk)} (nvme)", "an NVMe controller is passed through to QEMU")
    for smartcard in devices.findall("smartcard"):
        if smartcard.get("mode") in ("host", "host-certificates"):
            yield Blocker("smartcard", "a host smartcard reader is passed through")


def _target(disk):
    target = disk.find("target")
    return "?" if target is None else target.get("dev")


@dataclass(frozen=True)
class GuestArch:
    arch: str
    wordsize: int | None
    domain_types: tuple
    machines: tuple  # names and canonical names
    emulator: str | None


@dataclass(frozen=True)
class HostCapabilities:
    uuid: str | None
    arch: str | None
    cpu_vendor: str | None
    cpu_model: str | None
    cpu_features: tuple
    topology: dict
    guests: tuple = field(default_factory=tuple)  # GuestArch
    migration_transports: tuple = ()

    def guest_arch(self, arch, domain_type=None):
        """The GuestArch entry that runs ``arch`` guests (with ``domain_type``), or None."""
        for guest in self.guests:
            if guest.arch == arch and (domain_type is None or domain_type in guest.domain_types):
                return guest
        return None

    def cpu_dict(self):
        return {"arch": self.arch, "vendor": self.cpu_vendor, "model": self.cpu_model,
                "features": list(self.cpu_features), **self.topology}


def parse_capabilities(xml_text):
    """HostCapabilities from ``getCapabilities()``."""
    root = ET.fromstring(xml_text)
    host_cpu = root.find("host/cpu")
    topology = host_cpu.find("topology") if host_cpu is not None else None
    guests = []
    for guest in root.findall("guest"):
        arch = guest.find("arch")
        if arch is None or guest.findtext("os_type") != "hvm":
            continue
        machines = set()
        for machine in arch.findall("machine"):
            machines.add(machine.text)
            if machine.get("canonical"):
                machines.add(machine.get("canonical"))
        wordsize = arch.findtext("wordsize")
        guests.append(GuestArch(arch=arch.get("name"), wordsize=int(wordsize) if wordsize else None,
                                domain_types=tuple(d.get("type") for d in arch.findall("domain")),
                                machines=tuple(sorted(machines)), emulator=arch.findtext("emulator")))
    return HostCapabilities(
        uuid=root.findtext("host/uuid"),
        arch=None if host_cpu is None else host_cpu.findtext("arch"),
        cpu_vendor=None if host_cpu is None else vendor_name(host_cpu.findtext("vendor")),
        cpu_model=None if host_cpu is None else host_cpu.findtext("model"),
        cpu_features=() if host_cpu is None else tuple(sorted(f.get("name") for f in host_cpu.findall("feature"))),
        topology=_topology(topology),
        guests=tuple(guests),
        migration_transports=tuple(t.text for t in root.findall("host/migration_features/uri_transports/"
                                                                "uri_transport")),
    )


def _topology(element):
    if element is None:
        return {}
    return {key: int(element.get(key)) for key in ("sockets", "dies", "cores", "threads") if element.get(key)}


def cpu_model_vendors(domcaps_xml):
    """{model: vendor} of the custom CPU models in ``getDomainCapabilities()``; vendor None when neutral."""
    root = ET.fromstring(domcaps_xml)
    vendors = {}
    for mode in root.findall("cpu/mode"):
        if mode.get("name") != "custom":
            continue
        for model in mode.findall("model"):
            vendor = model.get("vendor")
            vendors[model.text] = None if vendor in (None, "", "unknown") else vendor_name(vendor)
    return vendors


def net_device_interface(nodedev_xml):
    """(interface name, link state) of a net node device's XML; (None, None) for another kind of device."""
    capability = ET.fromstring(nodedev_xml).find("capability[@type='net']")
    if capability is None:
        return None, None
    link = capability.find("link")
    return capability.findtext("interface"), None if link is None else link.get("state")
