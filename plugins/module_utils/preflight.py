# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pairwise preflight: will this guest's live migration from this source to this destination work?

The checks are pure functions (``checks_pair``: the two hypervisors; ``checks_guest``: the guest
against the destination) that return findings ``{check, status: ok|warn|fail, message, fix}``.
``Preflight`` here reads the hosts (two libvirt connections, and name resolution and one TCP probe
from ``probes``) and runs every check; it changes nothing on either host.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from ansible_collections.kvm.live_migration.plugins.module_utils import checks_guest, checks_pair
from ansible_collections.kvm.live_migration.plugins.module_utils.checks_guest import (
    NetworkPresence,
    StoragePath,
    Volume,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.checks_pair import (
    CpuComparison,
    HostIdentity,
    TlsPair,
    missing_cpu_features,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.connection import (
    Hypervisor,
    binding_names,
    is_local_uri,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError, libvirt_errors
from ansible_collections.kvm.live_migration.plugins.module_utils.features import detect_features
from ansible_collections.kvm.live_migration.plugins.module_utils.findings import STATUSES, fail, ok, warn
from ansible_collections.kvm.live_migration.plugins.module_utils.hostfacts import (
    DEFAULT_MIGRATION_PORTS,
    QEMU_TLS_DIR,
    LocalFilesystems,
    qemu_process_ids,
    read_migration_config,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.jobs import measure_dirty_rate
from ansible_collections.kvm.live_migration.plugins.module_utils.libvirtxml import (
    cpu_model_vendors,
    net_device_interface,
    parse_guest,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.policy import predict
from ansible_collections.kvm.live_migration.plugins.module_utils.probes import probe_tcp_port, resolve_host
from ansible_collections.kvm.live_migration.plugins.module_utils.request import validate_preflight_request
from ansible_collections.kvm.live_migration.plugins.module_utils.tlsfiles import (
    read_local_directory,
    read_remote_directory,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.units import MIB


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
    wall_clock: object = time.time  # certificate validity
    wait: object = None  # (seconds, event) -> None
    root: str = "/"  # where this host's /proc and /etc are read
    qemu_ids: tuple | None = None  # (uid, gid) QEMU runs as on the source; None: from its qemu.conf


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
        self.wall_clock = around.wall_clock
        self.wait = around.wait or (lambda seconds, event: event.wait(seconds))
        self.root = around.root
        self.qemu_ids = around.qemu_ids
        self.filesystems = LocalFilesystems(self.root, self.module_on_source)

    def run(self):
        request = validate_preflight_request(self.request)
        result = PreflightResult(name=request.name, source=self.source.hostname(), destination=None)
        domain = self.source.find_domain(request.name)
        state = None if domain is None else self.source.describe(domain)
        destination = self.open_hypervisor(request.dest_uri, libvirt_module=self.lv)
        try:
            destination.open()
        except MigrationError as error:
            result.findings.append(checks_pair.check_transport(request.transport, request.dest_uri,
                                                               connect_error=error))
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
        presences = [self._network_presence(destination, interface) for interface in guest.interfaces]
        findings = [
            checks_pair.check_host_identity(
                HostIdentity(source_name, source_caps.uuid),
                HostIdentity(dest_name, dest_caps.uuid, self.resolve(dest_name)), request.migrate_uri),
            checks_pair.check_transport(request.transport, request.dest_uri, module_on_source=self.module_on_source,
                                        allow_insecure=request.allow_insecure),
            self._tls(destination, source_name, dest_name),
            checks_pair.check_ports(request.transport, self._probe_migration_port(dest_name)),
            checks_pair.check_versions(source_versions, dest_versions, source_name, dest_name),
            checks_pair.check_architecture(guest, source_caps, dest_caps, dest_name),
            checks_pair.check_machine_type(guest, dest_caps, dest_name),
            checks_pair.check_cpu(guest, source_caps, dest_caps, self._compare_cpu(destination, guest),
                                  self._model_vendors(destination, guest), dest_name),
            checks_guest.check_memory(guest.memory_bytes, destination.memory(), request.memory_margin_mib * MIB,
                                      dest_name),
            *checks_guest.check_storage(self._storage_paths(domain, guest, destination), dest_name),
            *checks_guest.check_networks(guest.interfaces, presences, dest_name),
            checks_guest.check_devices(guest.blockers),
            checks_guest.check_guest_state(request.name, state.state, source_name),
            checks_guest.check_migration_job(request.name, job_type, source_name),
            checks_guest.check_destination_name(guest, destination.guest_state(guest.name),
                                                destination.guest_state(guest.uuid), dest_name),
        ]
        if request.measure_dirty_rate and state.running:
            findings.append(self._convergence(domain, guest, source_versions, dest_versions))
        return [finding for finding in findings if finding is not None]

    # -- readers ---------------------------------------------------------------------------------

    def _tls(self, destination, source_name, dest_name):
        """check_tls's finding for transport=tls: the source's directory read locally (keys matched too) or through
        its libvirt, the destination's through its libvirt, in the directory the source's qemu.conf names."""
        if self.request.transport != "tls":
            return None
        if self.module_on_source:
            cert_dir = read_migration_config(self.root)["tls"]["cert_dir"]
            source_dir = read_local_directory(source_name, cert_dir, self.root)
            ids = self.qemu_ids or qemu_process_ids(self.root)
        else:
            cert_dir = QEMU_TLS_DIR
            source_dir = read_remote_directory(self.source, cert_dir)
            ids = (None, None)
        verified_name = self._migration_endpoint(dest_name)[0]  # QEMU checks the certificate against this name
        return checks_pair.check_tls(TlsPair(source_dir, read_remote_directory(destination, cert_dir), verified_name,
                                             self.wall_clock(), ids))

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
                       size_bytes=size, source_filesystem=self.filesystems.type_of(item.path))

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

    def _migration_endpoint(self, dest_name):
        """(host, port) the source's QEMU sends the memory to: migrate_uri's, else the destination's name."""
        host, port = dest_name, DEFAULT_MIGRATION_PORTS[0]
        if self.request.migrate_uri:
            parsed = urlsplit(self.request.migrate_uri if "://" in self.request.migrate_uri
                              else f"tcp://{self.request.migrate_uri}")
            host, port = parsed.hostname or dest_name, parsed.port or port
        return host, port

    def _probe_migration_port(self, dest_name):
        return self.probe_port(*self._migration_endpoint(dest_name))

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
        return checks_guest.check_convergence(prediction, permits)
