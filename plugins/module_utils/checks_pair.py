# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Preflight checks of the two hypervisors (pure): identity, transport, ports, versions, architecture,
machine type and CPU. Each takes what was read from the hosts and returns findings."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from ansible_collections.kvm.live_migration.plugins.module_utils.features import dotted_version
from ansible_collections.kvm.live_migration.plugins.module_utils.findings import fail, ok, warn
from ansible_collections.kvm.live_migration.plugins.module_utils.hostfacts import DEFAULT_MIGRATION_PORTS
from ansible_collections.kvm.live_migration.plugins.module_utils.libvirtxml import VENDOR_NEUTRAL_MODELS
from ansible_collections.kvm.live_migration.plugins.module_utils.probes import PORT_PROBE_TIMEOUT_S
from ansible_collections.kvm.live_migration.plugins.module_utils.tlsfiles import (
    CA_CERT,
    CLIENT_FILES,
    SERVER_FILES,
    key_readable_by_qemu,
    names_match,
)

_MISSING_FEATURES = re.compile(r"(?:required features|missing features)\s*:\s*(?P<names>[\w.,\s-]+)", re.IGNORECASE)


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


def check_transport(transport, dest_uri, connect_error=None, module_on_source=True, allow_insecure=True):
    """The destination's libvirt answers over dest_uri (TLS's certificates are check_tls's)."""
    if transport == "tcp" and not allow_insecure:
        return fail("transport", "transport=tcp sends the guest's memory across the network unencrypted, and migrate "
                                 "refuses it without allow_insecure",
                    "use transport: tls or ssh, or set allow_insecure: true on a trusted, isolated migration network")
    if connect_error is not None:
        return fail("transport", f"connecting to {dest_uri} failed: {connect_error.message}",
                    connect_error.fix or "check that libvirtd runs on the destination and the URI is right")
    message = f"the destination's libvirt answers at {dest_uri}"
    if not module_on_source:
        return warn("transport", message + ", but from the host running this module, not from the source: the "
                                           "source's libvirtd opens its own connection",
                    "run preflight on the source hypervisor (source_uri: qemu:///system) to test its trust")
    return ok("transport", message)


TLS_FIX = ("run the kvm.live_migration.hypervisor role (playbook kvm.live_migration.prepare_hosts) on both hosts: it "
           "issues the CA, server and client certificates QEMU reads")
TLS_EXPIRY_WARNING_DAYS = 30
_DAY_S = 86400


@dataclass(frozen=True)
class TlsPair:
    """What check_tls judges: both TLS directories (None: not read), the name QEMU verifies the destination's
    certificate against, the wall-clock time, and QEMU's (uid, gid) on the source."""

    source: object
    destination: object
    dest_name: str
    now: float
    qemu_ids: tuple = (None, None)


def check_tls(pair):
    """QEMU's TLS on both hosts: the source's client files, the destination's server files, one CA that signed both
    certificates, their validity, the name the source connects to, and keys QEMU can read."""
    problems, notes = [], []
    for directory, names, purpose in ((pair.source, CLIENT_FILES, "send"), (pair.destination, SERVER_FILES, "receive")):
        problems += _tls_files_problems(directory, names, purpose, notes)
    if not problems:
        problems += _tls_certificate_problems(pair, notes)
    if problems:
        return fail("tls", "transport=tls: " + "; ".join(problems), TLS_FIX)
    if notes:
        return warn("tls", "transport=tls: " + "; ".join(notes), TLS_FIX)
    return ok("tls", f"transport=tls: {pair.source.host} can send ({pair.source.path}) and {pair.destination.host} can "
                     f"receive ({pair.destination.path}) with certificates of one CA, valid for "
                     f"{_days_left(pair):.0f} more days; {pair.destination.host}'s is valid for {pair.dest_name}")


def _days_left(pair):
    certificates = [*pair.source.certificates.values(), *pair.destination.certificates.values()]
    return min((cert.not_after - pair.now) / _DAY_S for cert in certificates if cert is not None)


def _tls_files_problems(directory, names, purpose, notes):
    if directory is None:
        notes.append("the source's files were not read (the module does not run on the source)")
        return []
    if directory.unread:
        notes.append(f"{directory.host}: {directory.unread}")
        return []
    if directory.missing_directory:
        return [f"{directory.host} has no {directory.path}, where QEMU reads the certificates to {purpose} a migration"]
    missing = directory.missing(names)
    if missing:
        return [f"{directory.host} lacks {', '.join(missing)} in {directory.path} (needed to {purpose} a migration)"]
    if directory.contents_unread:
        notes.append(f"{directory.host}'s certificates were not verified: {directory.contents_unread}")
    return []


def _tls_certificate_problems(pair, notes):
    source, destination = pair.source, pair.destination
    if source is None or source.contents_unread or destination.contents_unread or destination.unread:
        return []
    client, source_ca = source.certificates["client-cert.pem"], source.certificates[CA_CERT]
    server, dest_ca = destination.certificates["server-cert.pem"], destination.certificates[CA_CERT]
    problems = []
    for host, name, cert in ((source.host, "client-cert.pem", client), (source.host, CA_CERT, source_ca),
                             (destination.host, "server-cert.pem", server), (destination.host, CA_CERT, dest_ca)):
        problems += _validity_problems(f"{host}'s {name}", cert, pair.now, notes)
    if problems:
        return problems
    for host, ca in ((source.host, source_ca), (destination.host, dest_ca)):
        if not ca.is_ca:
            problems.append(f"{host}'s {CA_CERT} ({ca.subject}) is not a CA certificate")
    if server.signed_by(source_ca) is False:
        problems.append(f"{destination.host}'s server certificate (issuer {server.issuer}) is not signed by the CA "
                        f"{source.host} trusts ({source_ca.subject}): the hosts use different CAs")
    if client.signed_by(dest_ca) is False:
        problems.append(f"{source.host}'s client certificate (issuer {client.issuer}) is not signed by the CA "
                        f"{destination.host} trusts ({dest_ca.subject})")
    if server.purposes is not None and "serverAuth" not in server.purposes:
        problems.append(f"{destination.host}'s server certificate is not for TLS servers "
                        f"({', '.join(server.purposes)})")
    if client.purposes is not None and "clientAuth" not in client.purposes:
        problems.append(f"{source.host}'s client certificate is not for TLS clients ({', '.join(client.purposes)})")
    server_names = server.names or tuple(part[3:] for part in server.subject.split(",") if part.startswith("CN="))
    if not names_match(server_names, pair.dest_name):
        problems.append(f"{destination.host}'s server certificate names {', '.join(server_names) or 'nothing'}, but "
                        f"QEMU on {source.host} verifies it against {pair.dest_name!r} (the destination's host name, "
                        "or migrate_uri's host)")
    if client.key_matches is False:
        problems.append(f"{source.host}'s client-key.pem does not belong to its client-cert.pem")
    problems += _key_permission_problems(pair, notes)
    return problems


def _validity_problems(what, cert, now, notes):
    if cert is None:
        return []
    if cert.error:
        return [f"{what} cannot be read: {cert.error}"]
    if now < cert.not_before:
        return [f"{what} is not valid yet (from {_utc(cert.not_before)}); check the hosts' clocks"]
    if now >= cert.not_after:
        return [f"{what} expired on {_utc(cert.not_after)}"]
    if cert.not_after - now < TLS_EXPIRY_WARNING_DAYS * _DAY_S:
        notes.append(f"{what} expires on {_utc(cert.not_after)}")
    return []


def _utc(timestamp):
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _key_permission_problems(pair, notes):
    problems = []
    uid, gid = pair.qemu_ids
    for directory, name in ((pair.source, "client-key.pem"), (pair.destination, "server-key.pem")):
        key = directory.files[name]
        # The destination's numbers are read through its libvirt; QEMU's ids there are taken to be the source's.
        if key_readable_by_qemu(key, uid, gid) is False and not (key.mode or 0) & 0o044:
            problems.append(f"QEMU's user cannot read {directory.host}'s {name} (mode {key.mode:04o}, owner {key.uid}, "
                            f"group {key.gid})")
        elif key.mode is not None and key.mode & 0o004:
            notes.append(f"{directory.host}'s {name} is readable by every user (mode {key.mode:04o})")
    return problems


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
