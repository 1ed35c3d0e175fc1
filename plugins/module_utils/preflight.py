# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pairwise preflight: will this guest's live migration from this source to this destination work?

Each ``check_*`` function is pure: it takes what was read from the two hosts and returns
findings ``{check, status: ok|warn|fail, message, fix}``. ``Preflight`` reads the hosts (two
libvirt connections, name resolution and one TCP probe from the host running the module) and
runs every check; it changes nothing on either host.
"""

from __future__ import annotations

import errno
import functools
import posixpath
import re
import socket
import time
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import (
    Hypervisor,
    binding_names,
    dotted_version,
    is_local_uri,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError, libvirt_errors
from ansible_collections.kvm.live_migration.plugins.module_utils.hostfacts import (
    DEFAULT_MIGRATION_PORTS,
    QEMU_TLS_CLIENT_FILES,
    filesystem_of,
    read_migration_config,
    read_mounts,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.libvirtxml import (
    SHARED_FILESYSTEMS,
    VENDOR_NEUTRAL_MODELS,
    cpu_model_vendors,
    net_device_interface,
    parse_guest,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.migration import TRANSPORTS, measure_dirty_rate
from ansible_collections.kvm.live_migration.plugins.module_utils.policy import detect_features, predict

MIB = 1024 * 1024
STATUSES = ("ok", "warn", "fail")
CHECKS = ("host_identity", "transport", "ports", "versions", "architecture", "machine_type", "cpu", "memory",
          "storage", "network", "devices", "guest_state", "migration_job", "destination_name", "convergence")
PORT_PROBE_TIMEOUT_S = 3.0
_MISSING_FEATURES = re.compile(r"(?:required features|missing features)\s*:\s*(?P<names>[\w.,\s-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    message: str
    fix: str | None = None

    def as_dict(self):
        return {"check": self.check, "status": self.status, "message": self.message, "fix": self.fix}


def ok(check, message):
    return Finding(check, "ok", message)


def warn(check, message, fix):
    return Finding(check, "warn", message, fix)


def fail(check, message, fix):
    return Finding(check, "fail", message, fix)


def mib(value):
    return f"{value / MIB:,.0f} MiB"


# -- host identity, transport, versions ----------------------------------------------------------

@dataclass(frozen=True)
class HostIdentity:
    hostname: str
    uuid: str
    addresses: tuple = ()  # what the host name resolves to, seen from the host running the module


def check_host_identity(source, destination, migrate_uri=None):
    """The destination is another host, with a unique host UUID, whose name the source can resolve."""
    if source.uuid == destination.uuid:
        return fail("host_identity",
                    f"{source.hostname} and {destination.hostname} report the same host UUID {source.uuid}: they are "
                    "the same host, or host_uuid is duplicated; libvirt refuses with 'Attempt to migrate guest to "
                    "the same host'",
                    "give each hypervisor a unique host_uuid in /etc/libvirt/libvirtd.conf (or fix duplicated "
                    "SMBIOS/machine-id UUIDs) and restart libvirtd")
    if destination.hostname.split(".")[0] in ("localhost", "localhost6") and migrate_uri is None:
        return fail("host_identity", f"the destination calls itself {destination.hostname!r}: libvirt would send the "
                                     "guest's memory to the source itself",
                    "give the destination a real host name (hostnamectl) or pass migrate_uri with its address")
    if destination.hostname == source.hostname and migrate_uri is None:
        return fail("host_identity", f"both hosts call themselves {source.hostname!r}: libvirt sends the guest's "
                                     "memory to the destination's host name, which is the source's",
                    "give the hypervisors distinct host names, or pass migrate_uri with the destination's address")
    if not destination.addresses and migrate_uri is None:
        return fail("host_identity", f"the destination's host name {destination.hostname!r} does not resolve here; "
                                     "libvirt sends the guest's memory to that name",
                    "add the name to DNS or /etc/hosts on the source, or pass migrate_uri with an address")
    where = f"resolves to {', '.join(destination.addresses)}" if destination.addresses else f"reached by {migrate_uri}"
    return ok("host_identity", f"source {source.hostname} (host UUID {source.uuid}) and destination "
                               f"{destination.hostname} (host UUID {destination.uuid}) are distinct hosts; "
                               f"{destination.hostname} {where}")


def check_transport(transport, dest_uri, connect_error=None, tls=None, module_on_source=True, allow_insecure=True):
    """The destination's libvirt answers over dest_uri; for tls, the source holds QEMU's client certificates."""
    if transport == "tcp" and not allow_insecure:
        return fail("transport", "transport=tcp sends the guest's memory across the network unencrypted, and migrate "
                                 "refuses it without allow_insecure",
                    "use transport: tls or ssh, or set allow_insecure: true on a trusted, isolated migration network")
    if connect_error is not None:
        return fail("transport", f"connecting to {dest_uri} failed: {connect_error.message}",
                    connect_error.fix or "check that libvirtd runs on the destination and the URI is right")
    if transport == "tls" and tls is not None and not tls.get("can_send"):
        missing = [name for name in tls["missing"] if name in QEMU_TLS_CLIENT_FILES]
        return fail("transport", f"transport=tls, but the source lacks QEMU's TLS client files "
                                 f"{', '.join(missing)} in {tls['cert_dir']}",
                    "install the CA certificate, client certificate and key there (the hypervisor role can), or "
                    "use transport: ssh")
    message = f"the destination's libvirt answers at {dest_uri}"
    if transport == "tls":
        message += "; the source has QEMU's TLS client certificates" if tls else \
            "; QEMU's TLS certificates were not read (the source is remote): host_info on each host reports them"
    if not module_on_source:
        return warn("transport", message + ", but from the host running this module, not from the source: the "
                                           "source's libvirtd opens its own connection",
                    "run preflight on the source hypervisor (source_uri: qemu:///system) to test its trust")
    return ok("transport", message)


@dataclass(frozen=True)
class PortProbe:
    host: str
    port: int
    outcome: str  # refused | open | timeout | unreachable | unresolved
    detail: str = ""


def check_ports(transport, probe):
    """QEMU's migration stream can reach the destination (tunnelled migration needs no port)."""
    if transport == "ssh":
        return ok("ports", "transport=ssh tunnels the guest's memory through the libvirt connection: no migration "
                           "port is needed")
    target = f"{probe.host}:{probe.port}"
    if probe.outcome == "refused":
        return ok("ports", f"{target} answered (connection refused: nothing listens there until a migration "
                           "starts), so no firewall drops the migration ports")
    if probe.outcome == "open":
        return ok("ports", f"{target} accepted a connection: the port is in use and QEMU takes the next free one "
                           "in the migration port range")
    if probe.outcome == "timeout":
        return fail("ports", f"{target} did not answer within {PORT_PROBE_TIMEOUT_S:g} s: a firewall drops the "
                             "migration traffic",
                    f"open TCP {DEFAULT_MIGRATION_PORTS[0]}-{DEFAULT_MIGRATION_PORTS[1]} (qemu.conf "
                    "migration_port_min/max) on the destination for the source, or use transport: ssh")
    return fail("ports", f"{target} is not reachable: {probe.outcome} {probe.detail}".rstrip(),
                "check the route from the source to the destination's migration address (or pass migrate_uri)")


def check_versions(source, destination, source_name, dest_name):
    """The destination's libvirt and QEMU are not older than the source's ({"libvirt", "hypervisor"} ints)."""
    older = [f"{label} {dotted_version(destination[key])} < {dotted_version(source[key])}"
             for key, label in (("libvirt", "libvirt"), ("hypervisor", "QEMU")) if destination[key] < source[key]]
    if older:
        return fail("versions", f"{dest_name} runs older software than {source_name}: {'; '.join(older)}; an older "
                                "QEMU may not load the guest's device state",
                    f"upgrade {dest_name} to at least the source's versions, or choose a destination that is not older")
    return ok("versions", f"{dest_name} runs libvirt {dotted_version(destination['libvirt'])} and QEMU "
                          f"{dotted_version(destination['hypervisor'])}, not older than {source_name}'s libvirt "
                          f"{dotted_version(source['libvirt'])} and QEMU {dotted_version(source['hypervisor'])}")


# -- what the destination can run ----------------------------------------------------------------

def _arch_label(arch, capabilities):
    wordsize = next((guest.wordsize for guest in capabilities.guests if guest.arch == arch and guest.wordsize), None)
    return f"{arch} ({wordsize}-bit)" if wordsize else arch


def check_architecture(guest, source_caps, dest_caps, dest_name):
    """The destination runs guests of this architecture with this domain type (kvm or qemu)."""
    label = _arch_label(guest.arch, source_caps)
    if dest_caps.guest_arch(guest.arch, guest.domain_type) is not None:
        return ok("architecture", f"{dest_name} runs {label} guests of type {guest.domain_type}")
    other = dest_caps.guest_arch(guest.arch)
    if other is not None:
        return fail("architecture", f"{dest_name} runs {label} guests only as {', '.join(other.domain_types)}, "
                                    f"not as {guest.domain_type}",
                    "enable KVM on the destination (host_info reports why it is missing) or choose another host")
    arches = ", ".join(_arch_label(entry.arch, dest_caps) for entry in dest_caps.guests) or "no"
    return fail("architecture", f"the guest is {label}; {dest_name} ({dest_caps.arch}) runs only {arches} guests",
                f"migrate the guest to a host that runs {guest.arch} guests")


def check_machine_type(guest, dest_caps, dest_name):
    """The destination's QEMU knows the guest's machine type (e.g. pc-q35-7.2); None when it runs no such guests."""
    arch = dest_caps.guest_arch(guest.arch, guest.domain_type) or dest_caps.guest_arch(guest.arch)
    if arch is None:
        return None  # the architecture check fails already
    if guest.machine in arch.machines:
        return ok("machine_type", f"{dest_name}'s QEMU provides machine type {guest.machine}")
    return fail("machine_type", f"{dest_name}'s QEMU does not provide the guest's machine type {guest.machine}",
                f"upgrade QEMU on {dest_name}, or choose a destination whose QEMU is at least as new as the source's")


@dataclass(frozen=True)
class CpuComparison:
    result: str  # identical | superset | incompatible | error | skipped
    missing: tuple = ()
    message: str = ""


def missing_cpu_features(message):
    """The feature names in libvirt's 'Host CPU does not provide required features: a, b' message."""
    match = _MISSING_FEATURES.search(message or "")
    if match is None:
        return ()
    return tuple(name.strip() for name in match.group("names").split(",") if name.strip())


def check_cpu(guest, source_caps, dest_caps, comparison, model_vendors, dest_name):
    """The destination's CPU (as its hypervisor offers it) provides the guest's CPU."""
    cpu = guest.cpu
    if cpu.mode in ("host-passthrough", "maximum"):
        return _check_passthrough(cpu, source_caps, dest_caps, dest_name)
    vendor_finding = _check_vendor(cpu, source_caps, dest_caps, model_vendors, dest_name)
    if vendor_finding is not None:
        return vendor_finding
    if comparison.result == "incompatible":
        missing = ", ".join(comparison.missing) or "(libvirt did not name them)"
        return fail("cpu", f"{dest_name}'s CPU lacks features the guest's CPU ({_cpu_label(cpu)}) requires: {missing}",
                    f"choose a destination whose CPU has {missing}, or give the guest a CPU model both hosts provide "
                    "(a named model with only common features, e.g. from 'virsh hypervisor-cpu-baseline')")
    if comparison.result == "error":
        return warn("cpu", f"libvirt on {dest_name} could not compare the guest's CPU: {comparison.message}",
                    "compare by hand: virsh hypervisor-cpu-compare on the destination with the guest's <cpu>")
    if cpu.mode == "default":
        return ok("cpu", f"the guest uses the hypervisor's default CPU model, which {dest_name} provides")
    portable = _portability(cpu, source_caps, dest_caps)
    return ok("cpu", f"{dest_name} provides the guest's CPU ({_cpu_label(cpu)}): {comparison.result}{portable}")


def _cpu_label(cpu):
    features = f" + {', '.join(cpu.required)}" if cpu.required else ""
    return f"{cpu.mode} {cpu.model or ''}{features}".replace("  ", " ").strip()


def _portability(cpu, source_caps, dest_caps):
    if source_caps.cpu_vendor and dest_caps.cpu_vendor and source_caps.cpu_vendor != dest_caps.cpu_vendor:
        return f"; {cpu.model} is vendor-neutral, so it runs on {source_caps.cpu_vendor} and {dest_caps.cpu_vendor}"
    return ""


def _check_vendor(cpu, source_caps, dest_caps, model_vendors, dest_name):
    """Intel to AMD (or back) works only with a vendor-neutral model: a fail finding, or None."""
    if not cpu.model or not dest_caps.cpu_vendor:
        return None
    model_vendor = None if cpu.model in VENDOR_NEUTRAL_MODELS else model_vendors.get(cpu.model)
    if model_vendor is None or model_vendor == dest_caps.cpu_vendor:
        return None
    origin = f" ({source_caps.cpu_vendor} source)" if source_caps.cpu_vendor else ""
    return fail("cpu", f"the guest's CPU model {cpu.model} is {_article(model_vendor)} {model_vendor} model{origin}; "
                       f"{dest_name} has {_article(dest_caps.cpu_vendor)} {dest_caps.cpu_vendor} CPU",
                "give the guest a vendor-neutral model (qemu64, kvm64, x86-64-v2/-v3) to move between Intel and AMD, "
                f"or choose a {model_vendor} destination")


def _article(word):
    return "an" if word[:1].upper() in "AEIOU" else "a"


def _check_passthrough(cpu, source_caps, dest_caps, dest_name):
    """host-passthrough shows the source's own CPU to the guest: the destination's must be the same."""
    source_features, dest_features = set(source_caps.cpu_features), set(dest_caps.cpu_features)
    missing = sorted(source_features - dest_features)
    if source_caps.cpu_vendor != dest_caps.cpu_vendor or source_caps.cpu_model != dest_caps.cpu_model or missing:
        differences = []
        if source_caps.cpu_vendor != dest_caps.cpu_vendor:
            differences.append(f"vendor {source_caps.cpu_vendor} vs {dest_caps.cpu_vendor}")
        if source_caps.cpu_model != dest_caps.cpu_model:
            differences.append(f"model {source_caps.cpu_model} vs {dest_caps.cpu_model}")
        if missing:
            differences.append(f"{dest_name} lacks {', '.join(missing)}")
        return fail("cpu", f"the guest's CPU is {cpu.mode}: it sees the source's exact CPU, and {dest_name}'s differs "
                           f"({'; '.join(differences)})",
                    "migrate host-passthrough guests only between identical hosts, or give the guest host-model or a "
                    "named CPU model both hosts provide")
    extra = sorted(dest_features - source_features)
    if extra:
        return warn("cpu", f"the guest's CPU is {cpu.mode} and {dest_name}'s CPU has more features "
                           f"({', '.join(extra)}): the guest may see its CPU change",
                    "prefer host-model or a named CPU model for guests that move between hosts")
    return ok("cpu", f"the guest's CPU is {cpu.mode} and {dest_name}'s CPU is the same "
                     f"({source_caps.cpu_vendor} {source_caps.cpu_model})")


def check_memory(guest_memory_bytes, dest_memory, margin_bytes, dest_name):
    """The destination has the guest's memory available, plus a margin for QEMU and the host."""
    available = dest_memory["available_bytes"]
    needed = guest_memory_bytes + margin_bytes
    if available >= needed:
        return ok("memory", f"{dest_name} has {mib(available)} available; the guest needs {mib(guest_memory_bytes)} "
                            f"plus a {mib(margin_bytes)} margin")
    return fail("memory", f"{dest_name} has {mib(available)} available; the guest needs {mib(guest_memory_bytes)} "
                          f"plus a {mib(margin_bytes)} margin ({mib(needed - available)} short)",
                f"free memory on {dest_name} (move other guests away) or choose a destination with at least "
                f"{mib(needed)} available")


# -- storage and networks ------------------------------------------------------------------------

@dataclass(frozen=True)
class Volume:
    pool: str
    capacity_bytes: int


@dataclass(frozen=True)
class StoragePath:
    """One file the guest needs at the same path on the destination: a disk or a boot file."""

    what: str  # "disk vda", "kernel"
    kind: str  # file, block, network, ...
    path: str | None
    source: str | None
    readonly: bool
    copied: bool  # the migration copies it (copy_storage)
    on_source: Volume | None = None
    on_destination: Volume | None = None
    dest_pool_free_bytes: int | None = None  # free space of the destination pool that holds its directory
    size_bytes: int | None = None
    source_filesystem: str | None = None


def check_storage(paths, dest_name):
    """Every disk and boot file is visible at the same path on the destination, or is copied there."""
    findings = [_check_storage_path(path, dest_name) for path in paths]
    findings = [finding for finding in findings if finding is not None]
    return findings or [ok("storage", "the guest has no disks or boot files to find on the destination")]


def _check_storage_path(item, dest_name):
    if item.kind == "network":
        return ok("storage", f"{item.what} is a network disk ({item.source}), reached by both hosts")
    if item.path is None:
        return None
    if item.copied:
        return _check_copied(item, dest_name)
    return _check_shared(item, dest_name)


def _check_shared(item, dest_name):
    found = item.on_destination
    if found is not None:
        if item.on_source is not None and item.on_source.capacity_bytes != found.capacity_bytes:
            return fail("storage", f"{item.what} {item.path} exists on {dest_name} ({mib(found.capacity_bytes)}) "
                                   f"but differs from the source's ({mib(item.on_source.capacity_bytes)}): it is not "
                                   "shared storage",
                        "keep the guest's disks on storage both hosts share, or set copy_storage: all")
        return ok("storage", f"{dest_name} sees {item.what} {item.path} in storage pool {found.pool}")
    if item.source_filesystem in SHARED_FILESYSTEMS:
        return warn("storage", f"{item.what} {item.path} is on {item.source_filesystem} on the source, but no storage "
                               f"pool on {dest_name} contains it, so it cannot be confirmed there",
                    f"define a storage pool for that directory on {dest_name} (then preflight can confirm it)")
    return fail("storage", f"{item.what} {item.path} is not visible on {dest_name}: no storage pool there contains "
                           "that path",
                "put it on storage both hosts share and define it as a libvirt storage pool on both, or set "
                "copy_storage: all (disks only) to copy it")


def _check_copied(item, dest_name):
    if item.on_destination is not None:
        return warn("storage", f"{item.what} {item.path} already exists on {dest_name}; copy_storage copies into it",
                    "if that is the same file on shared storage, drop copy_storage; otherwise nothing to do")
    if item.dest_pool_free_bytes is None:
        return fail("storage", f"copy_storage needs {item.path} created on {dest_name}, but no storage pool there has "
                               f"{posixpath.dirname(item.path)} as its directory, so libvirt cannot create it",
                    f"define a dir storage pool for {posixpath.dirname(item.path)} on {dest_name}, or pre-create the "
                    "image there with the same size")
    size = item.size_bytes or 0
    if item.dest_pool_free_bytes < size:
        return fail("storage", f"{dest_name} has {mib(item.dest_pool_free_bytes)} free for {item.path}; copying "
                               f"{item.what} needs {mib(size)}",
                    f"free space in that storage pool on {dest_name}, or choose another destination")
    return ok("storage", f"{item.what} {item.path} will be copied; {dest_name} has {mib(item.dest_pool_free_bytes)} "
                         f"free for its {mib(size)}")


@dataclass(frozen=True)
class NetworkPresence:
    """How the destination has what one interface attaches to."""

    kind: str  # network | bridge | direct
    name: str
    state: str  # active | inactive | missing | unknown
    detail: str = ""


def check_networks(interfaces, presences, dest_name):
    """Every libvirt network, bridge and host device the guest's interfaces use is active on the destination."""
    findings = []
    for interface, presence in zip(interfaces, presences, strict=True):
        label = f"interface {interface.mac or ''} ({presence.kind} {presence.name})".replace("  ", " ")
        if presence.state == "active":
            findings.append(ok("network", f"{label}: {presence.kind} {presence.name} is active on {dest_name}"))
        elif presence.state == "inactive":
            start = f"virsh net-start {presence.name} && virsh net-autostart {presence.name}" if \
                presence.kind == "network" else f"ip link set {presence.name} up"
            findings.append(fail("network", f"{label}: {presence.kind} {presence.name} exists on {dest_name} but is "
                                            "not active", f"activate it on {dest_name}: {start}"))
        elif presence.state == "missing":
            create = f"define and start libvirt network {presence.name}" if presence.kind == "network" else \
                f"create {presence.kind} {presence.name} (with the same uplink as on the source)"
            findings.append(fail("network", f"{label}: {dest_name} has no {presence.kind} {presence.name}; QEMU could "
                                            "not attach the guest's interface there",
                                 f"{create} on {dest_name}, or choose a destination on the same networks"))
        else:
            findings.append(warn("network", f"{label}: could not check {presence.kind} {presence.name} on {dest_name}: "
                                            f"{presence.detail}",
                                 f"check by hand on {dest_name}: ip link show {presence.name}"))
    return findings or [ok("network", "the guest has no network interfaces to find on the destination")]


# -- the guest -----------------------------------------------------------------------------------

def check_devices(blockers):
    if not blockers:
        return ok("devices", "no host devices or other non-migratable devices")
    listed = "; ".join(f"{blocker.device}: {blocker.reason}" for blocker in blockers)
    return fail("devices", f"the guest has devices that cannot be live-migrated: {listed}",
                "hot-unplug them before migrating (virsh detach-device --live) and attach them again afterwards")


def check_guest_state(name, state, source_name):
    if state in ("running", "blocked"):
        return ok("guest_state", f"{name} runs on {source_name}")
    if state == "paused":
        return warn("guest_state", f"{name} is paused on {source_name}: it migrates paused and stays paused",
                    "resume it first (virsh resume) if it should run on the destination")
    return fail("guest_state", f"{name} is {state} on {source_name}: a live migration needs a running guest",
                "start the guest, or migrate its definition offline instead")


def check_migration_job(name, job_type, source_name):
    """No other job (another migration, a save, a dump) holds the guest."""
    if job_type in (None, 0):
        return ok("migration_job", f"no job runs on {name}")
    return fail("migration_job", f"{name} already has a job in progress on {source_name} (job type {job_type})",
                f"wait for it to finish, or cancel it with 'virsh domjobabort {name}' on {source_name}")


def check_destination_name(guest, by_name, by_uuid, dest_name):
    """No other guest with this name or UUID is defined or running on the destination.

    ``by_name``/``by_uuid``: GuestState of the destination's guest with the guest's name/UUID, or None.
    """
    if by_name is not None and by_name.uuid != guest.uuid:
        return fail("destination_name", f"a different guest named {guest.name} (UUID {by_name.uuid}) is "
                                        f"{by_name.state} on {dest_name}; libvirt refuses to migrate over it",
                    f"rename or remove that guest on {dest_name} (virsh undefine), or choose another destination")
    if by_uuid is not None and by_uuid.name != guest.name:
        return fail("destination_name", f"{dest_name} has a guest with this guest's UUID {guest.uuid} under another "
                                        f"name, {by_uuid.name} ({by_uuid.state})",
                    f"remove that stale definition on {dest_name} (virsh undefine {by_uuid.name})")
    existing = by_name or by_uuid
    if existing is None:
        return ok("destination_name", f"no guest named {guest.name} or with its UUID exists on {dest_name}")
    if existing.running or existing.paused:
        return fail("destination_name", f"{guest.name} is already {existing.state} on {dest_name} while it runs on "
                                        "the source: two copies must never run",
                    f"find out which copy is current, then destroy the other (virsh destroy {guest.name})")
    return ok("destination_name", f"{dest_name} holds an inactive definition of this guest ({existing.state}); the "
                                  "migration replaces it")


def check_convergence(prediction, policy_permits):
    """The measured dirty rate against the bandwidth: does pre-copy finish within the downtime budget?"""
    if prediction is None:
        return None
    if prediction.get("dirty_rate_bps") is None or prediction.get("ratio") is None:
        return warn("convergence", f"no prediction: {prediction['why']}",
                    "set bandwidth (MiB/s) and measure_dirty_rate: true for a prediction")
    rate = f"dirty rate {mib(prediction['dirty_rate_bps'])}/s against {mib(prediction['bandwidth_bps'])}/s " \
           f"(ratio {prediction['ratio']:.2f})"
    if prediction["converges"]:
        return ok("convergence", f"{rate}: pre-copy converges in about {prediction['precopy_s']} s")
    if policy_permits:
        return warn("convergence", f"{rate}: pre-copy alone would not converge; the migration will start with "
                                   f"{prediction['strategy']} ({prediction['why']})",
                    "nothing to do: the policy permits a remedy; raise bandwidth for a shorter migration")
    return warn("convergence", f"{rate}: pre-copy alone would not converge and neither auto-converge nor post-copy is "
                               "permitted: expect an abort",
                "permit auto-converge or post-copy, raise bandwidth, or migrate when the guest is quieter")


# -- reading both hosts --------------------------------------------------------------------------

@dataclass
class PreflightRequest:
    name: str
    dest_uri: str
    transport: str = "tls"
    allow_insecure: bool = False
    migrate_uri: str | None = None
    copy_storage: str | None = None
    migrate_disks: tuple = ()
    memory_margin_mib: int = 512
    measure_dirty_rate: bool = False
    bandwidth_mib: int = 0
    policy: object = None  # policy.Policy, for the convergence prediction


def validate_preflight_request(request):
    """Raise MigrationError naming the bad value and the fix; return the request unchanged."""
    if request.transport not in TRANSPORTS:
        raise MigrationError(f"transport={request.transport!r} is not one of {', '.join(TRANSPORTS)}",
                             fix="use transport: tls, ssh or tcp, as the migration will")
    if request.memory_margin_mib < 0:
        raise MigrationError(f"memory_margin_mib={request.memory_margin_mib} is negative",
                             fix="give the MiB the destination must keep beyond the guest's memory, e.g. 512")
    if request.bandwidth_mib < 0:
        raise MigrationError(f"bandwidth={request.bandwidth_mib} must be 0 (no cap) or a positive MiB/s",
                             fix="set bandwidth to the MiB/s the migration may use, or 0")
    policy = request.policy
    if policy is not None and not 0 < policy.threshold <= 1:
        raise MigrationError(f"convergence_threshold={policy.threshold} is outside 0-1",
                             fix="give the dirty/transfer ratio above which a pass does not converge, e.g. 0.8")
    if policy is not None and policy.max_downtime_ms <= 0:
        raise MigrationError(f"max_downtime_ms={policy.max_downtime_ms} must be positive",
                             fix="give the longest pause the guest may see, in milliseconds (e.g. 500)")
    return request


@dataclass
class PreflightResult:
    name: str
    source: str | None
    destination: str | None
    findings: list = field(default_factory=list)
    already_migrated: bool = False

    @property
    def ok(self):
        return all(finding.status != "fail" for finding in self.findings)

    def as_dict(self):
        counts = {status: sum(1 for finding in self.findings if finding.status == status) for status in STATUSES}
        return {"ok": self.ok, "name": self.name, "source": self.source, "destination": self.destination,
                "already_migrated": self.already_migrated, "counts": counts,
                "failed_checks": sorted({f.check for f in self.findings if f.status == "fail"}),
                "findings": [finding.as_dict() for finding in self.findings]}

    def summary(self):
        failed = [f for f in self.findings if f.status == "fail"]
        listed = "; ".join(f"{f.check}: {f.message} (fix: {f.fix})" for f in failed)
        return f"preflight of {self.name} from {self.source} to {self.destination} failed {len(failed)} " \
               f"check{'s' if len(failed) != 1 else ''}: {listed}"


@dataclass
class Surroundings:
    """How preflight reaches beyond libvirt from the host running the module (replaced in tests)."""

    resolve: object = None  # host name -> addresses
    probe_port: object = None  # (host, port) -> PortProbe
    module_on_source: bool | None = None  # None: the module runs on the source when source_uri is local
    clock: object = time.monotonic
    wait: object = None  # (seconds, event) -> None
    root: str = "/"  # where this host's /proc and /etc are read


class Preflight:
    """Reads the source and the destination and runs every check."""

    def __init__(self, source, request, surroundings=None, open_hypervisor=Hypervisor):
        """``source``: an open Hypervisor on the source. The destination is opened here, so that a failure to
        connect becomes the transport finding instead of an error."""
        around = surroundings or Surroundings()
        self.source = source
        self.lv = source.lv
        self.request = request
        self.open_hypervisor = open_hypervisor
        self.resolve = around.resolve or resolve_host
        self.probe_port = around.probe_port or probe_tcp_port
        self.module_on_source = is_local_uri(source.uri) if around.module_on_source is None else \
            around.module_on_source
        self.clock = around.clock
        self.wait = around.wait or (lambda seconds, event: event.wait(seconds))
        self.root = around.root

    def run(self):
        request = validate_preflight_request(self.request)
        result = PreflightResult(name=request.name, source=self.source.hostname(), destination=None)
        domain = self.source.find_domain(request.name)
        state = None if domain is None else self.source.describe(domain)
        destination = self.open_hypervisor(request.dest_uri, libvirt_module=self.lv)
        try:
            destination.open()
        except MigrationError as error:
            result.findings.append(check_transport(request.transport, request.dest_uri, connect_error=error))
            return result
        try:
            result.destination = destination.hostname()
            if state is None or not (state.running or state.paused):
                on_destination = destination.guest_state(request.name)
                if on_destination is not None and on_destination.running:
                    result.already_migrated = True
                    result.findings.append(ok("guest_state", f"{request.name} already runs on {result.destination}: "
                                                             "nothing to migrate"))
                    return result
            if state is None:
                result.findings.append(fail("guest_state", f"{request.name} is not defined on {result.source} or "
                                                           f"{result.destination}",
                                            "check the name or UUID with 'virsh list --all' on both hosts"))
                return result
            result.findings.extend(self._checks(domain, state, destination, result))
        finally:
            destination.close()
        return result

    def _checks(self, domain, state, destination, result):
        request, source_name, dest_name = self.request, result.source, result.destination
        with libvirt_errors(self.lv, f"reading {request.name}'s definition on {source_name}"):
            guest = parse_guest(domain.XMLDesc(self.lv.VIR_DOMAIN_XML_MIGRATABLE))
            job_type = domain.jobInfo()[0] if state.running or state.paused else None  # inactive: no jobs
        source_caps, dest_caps = self.source.capabilities(), destination.capabilities()
        source_versions, dest_versions = self.source.version_numbers(), destination.version_numbers()
        findings = [
            check_host_identity(HostIdentity(source_name, source_caps.uuid),
                                HostIdentity(dest_name, dest_caps.uuid, self.resolve(dest_name)), request.migrate_uri),
            check_transport(request.transport, request.dest_uri, tls=self._tls(),
                            module_on_source=self.module_on_source, allow_insecure=request.allow_insecure),
            check_ports(request.transport, self._probe_migration_port(dest_name)),
            check_versions(source_versions, dest_versions, source_name, dest_name),
            check_architecture(guest, source_caps, dest_caps, dest_name),
            check_machine_type(guest, dest_caps, dest_name),
            check_cpu(guest, source_caps, dest_caps, self._compare_cpu(destination, guest),
                      self._model_vendors(destination, guest), dest_name),
            check_memory(guest.memory_bytes, destination.memory(), request.memory_margin_mib * MIB, dest_name),
            *check_storage(self._storage_paths(domain, guest, destination), dest_name),
            *check_networks(guest.interfaces, [self._network_presence(destination, i) for i in guest.interfaces],
                            dest_name),
            check_devices(guest.blockers),
            check_guest_state(request.name, state.state, source_name),
            check_migration_job(request.name, job_type, source_name),
            check_destination_name(guest, destination.guest_state(guest.name), destination.guest_state(guest.uuid),
                                   dest_name),
        ]
        if request.measure_dirty_rate and state.running:
            findings.append(self._convergence(domain, guest, source_versions, dest_versions))
        return [finding for finding in findings if finding is not None]

    # -- readers ---------------------------------------------------------------------------------

    def _tls(self):
        if self.request.transport != "tls" or not self.module_on_source:
            return None
        return read_migration_config(self.root)["tls"]

    def _compare_cpu(self, destination, guest):
        cpu = guest.cpu
        if cpu.mode in ("host-passthrough", "maximum", "default") or not cpu.xml:
            return CpuComparison("skipped")
        lv = self.lv
        try:
            result = destination.conn.compareHypervisorCPU(guest.emulator, guest.arch, guest.machine,
                                                           guest.domain_type, cpu.xml,
                                                           lv.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
        except lv.libvirtError as error:
            message = error.get_error_message() or str(error)
            if error.get_error_code() == lv.VIR_ERR_CPU_INCOMPATIBLE:
                return CpuComparison("incompatible", missing_cpu_features(message), message)
            return CpuComparison("error", message=message)
        names = {lv.VIR_CPU_COMPARE_IDENTICAL: "identical", lv.VIR_CPU_COMPARE_SUPERSET: "superset"}
        return CpuComparison(names.get(result, "incompatible"))

    def _model_vendors(self, destination, guest):
        if not guest.cpu.model:
            return {}
        try:
            return cpu_model_vendors(destination.conn.getDomainCapabilities(None, guest.arch, None,
                                                                            guest.domain_type, 0))
        except self.lv.libvirtError:
            return {}

    def _storage_paths(self, domain, guest, destination):
        request = self.request
        items = []
        for disk in guest.disks:
            copied = bool(request.copy_storage) and not disk.readonly and (
                not request.migrate_disks or disk.target in request.migrate_disks)
            items.append(self._storage_path(StoragePath(f"disk {disk.target}", disk.kind, disk.path, disk.source,
                                                        disk.readonly, copied), destination, domain, disk.target))
        for path in guest.boot_files:
            items.append(self._storage_path(StoragePath("boot file", "file", path, path, True, False), destination))
        return items

    def _storage_path(self, item, destination, domain=None, target=None):
        """``item`` completed with what the source and the destination say about its path."""
        if item.kind == "network" or item.path is None:
            return item
        size = None
        if domain is not None and target:
            try:
                size = domain.blockInfo(target)[0]
            except self.lv.libvirtError:
                size = None
        free = self._pool_free(destination, posixpath.dirname(item.path)) if item.copied else None
        return replace(item, on_source=self._volume(self.source, item.path),
                       on_destination=self._volume(destination, item.path), dest_pool_free_bytes=free,
                       size_bytes=size, source_filesystem=self._filesystem(item.path))

    def _volume(self, hypervisor, path):
        try:
            volume = hypervisor.conn.storageVolLookupByPath(path)
            pool = volume.storagePoolLookupByVolume()
            return Volume(pool.name(), int(volume.info()[1]))
        except self.lv.libvirtError:
            return None

    def _pool_free(self, hypervisor, directory):
        try:
            return int(hypervisor.conn.storagePoolLookupByTargetPath(directory).info()[3])
        except self.lv.libvirtError:
            return None

    @functools.cached_property
    def _mounts(self):
        return read_mounts(self.root)

    def _filesystem(self, path):
        return filesystem_of(path, self._mounts)[1] if self.module_on_source else None

    def _network_presence(self, destination, interface):
        lv = self.lv
        if interface.kind == "network" and interface.network:
            try:
                network = destination.conn.networkLookupByName(interface.network)
                return NetworkPresence("network", interface.network, "active" if network.isActive() else "inactive")
            except lv.libvirtError as error:
                return self._absent("network", interface.network, error, "VIR_ERR_NO_NETWORK")
        name = interface.bridge if interface.kind == "bridge" else interface.device
        if interface.kind in ("bridge", "direct") and name:
            kind = "bridge" if interface.kind == "bridge" else "device"
            try:
                found = destination.conn.interfaceLookupByName(name)
            except lv.libvirtError as error:
                if error.get_error_code() == lv.VIR_ERR_NO_SUPPORT:
                    return self._node_device_presence(destination, kind, name, error)
                return self._absent(kind, name, error, "VIR_ERR_NO_INTERFACE")
            # A bridge without ports reports operstate "unknown", which libvirt calls inactive; QEMU's tap
            # attaches to it all the same. A NIC under a macvtap must be up.
            return NetworkPresence(kind, name, "active" if kind == "bridge" or found.isActive() else "inactive")
        return NetworkPresence(interface.kind or "interface", interface.network or interface.bridge or "-", "active",
                               "nothing on the host to check")

    def _node_device_presence(self, destination, kind, name, interface_error):
        """The host interface as the node device driver lists it: libvirt >= 10 packages the interface
        driver apart (Debian's libvirt-daemon-driver-interface, only recommended), so a host may lack it."""
        lv = self.lv
        try:
            devices = destination.conn.listAllDevices(lv.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET)
        except lv.libvirtError as error:
            return NetworkPresence(kind, name, "unknown", f"{interface_error.get_error_message()}; "
                                                          f"{error.get_error_message()}")
        for device in devices:
            interface, link = net_device_interface(device.XMLDesc(0))
            if interface == name:
                return NetworkPresence(kind, name, "active" if kind == "bridge" or link == "up" else "inactive")
        return NetworkPresence(kind, name, "missing")

    def _absent(self, kind, name, error, missing_code):
        if error.get_error_code() == getattr(self.lv, missing_code, None):
            return NetworkPresence(kind, name, "missing")
        return NetworkPresence(kind, name, "unknown", error.get_error_message() or str(error))

    def _probe_migration_port(self, dest_name):
        host, port = dest_name, DEFAULT_MIGRATION_PORTS[0]
        if self.request.migrate_uri:
            parsed = urlsplit(self.request.migrate_uri if "://" in self.request.migrate_uri
                              else f"tcp://{self.request.migrate_uri}")
            host, port = parsed.hostname or dest_name, parsed.port or port
        return self.probe_port(host, port)

    def _convergence(self, domain, guest, source_versions, dest_versions):
        request = self.request
        features = detect_features(binding_names(self.lv), source_versions, dest_versions, request.transport)
        if not features.dirty_rate:
            return warn("convergence", f"no prediction: {features.reasons['dirty_rate']}",
                        "upgrade libvirt/QEMU on the source for dirty-rate measurement")
        rate, failure = measure_dirty_rate(self.lv, self.source.conn, domain, self.clock, self.wait)
        if failure:
            return warn("convergence", f"no prediction: {failure}",
                        "try again, or predict by hand with 'virsh domdirtyrate-calc'")
        prediction = predict(rate, guest.memory_bytes, request.bandwidth_mib * MIB, request.policy, features)
        permits = bool(set(request.policy.usable(features)) & {"auto_converge", "post_copy"})
        return check_convergence(prediction, permits)


def resolve_host(name):
    """The addresses ``name`` resolves to from the host running the module; () when it does not."""
    try:
        return tuple(sorted({info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}))
    except (socket.gaierror, UnicodeError):
        return ()


def probe_tcp_port(host, port, timeout_s=PORT_PROBE_TIMEOUT_S):
    """Connect once to host:port and say how the destination answered (nothing is sent)."""
    try:
        addresses = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        return PortProbe(host, port, "unresolved", str(error))
    family, kind, proto, _name, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        probe.settimeout(timeout_s)
        try:
            probe.connect(address)
        except ConnectionRefusedError:
            return PortProbe(host, port, "refused")
        except TimeoutError:
            return PortProbe(host, port, "timeout")
        except OSError as error:
            outcome = "unreachable" if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else "error"
            return PortProbe(host, port, outcome, error.strerror or str(error))
    return PortProbe(host, port, "open")
