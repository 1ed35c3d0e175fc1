# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Facts about one hypervisor for host_info: the host, its virtualization, its guests.

Shaped for ``json_query`` and ``selectattr``: lists of dicts, numbers as integers, and the same
keys in every entry of a list.
"""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from ansible_collections.kvm.live_migration.plugins.module_utils.checks_pair import TlsPair, check_tls
from ansible_collections.kvm.live_migration.plugins.module_utils.connection import binding_names
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError, libvirt_errors
from ansible_collections.kvm.live_migration.plugins.module_utils.features import dotted_version, host_features
from ansible_collections.kvm.live_migration.plugins.module_utils.hostfacts import (
    LocalFilesystems,
    probe_kvm,
    qemu_process_ids,
    read_kernel_view,
    read_migration_config,
    virtualization_status,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.libvirtxml import (
    SHARED_FILESYSTEMS,
    SHARED_POOL_TYPES,
    parse_guest,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.tlsfiles import read_local_directory


def remote_view_reason(uri):
    return (f"not read: {uri} is a remote connection and these facts come from the kernel of the host running the "
            "module; run host_info on that hypervisor with its local URI")


class HostInfo:
    """Gathers host_info's facts through one open Hypervisor."""

    def __init__(self, hypervisor, local, probe=True, root="/", wall_clock=time.time):
        """``local``: the hypervisor is the host running the module, so its kernel and files can be read."""
        self.hypervisor = hypervisor
        self.conn = hypervisor.conn
        self.lv = hypervisor.lv
        self.local = local
        self.probe = probe
        self.root = Path(root)
        self.wall_clock = wall_clock
        self.filesystems = LocalFilesystems(self.root, local)

    def gather(self, domain_names=None):
        capabilities = self.hypervisor.capabilities()
        versions = self.hypervisor.version_numbers()
        config = read_migration_config(self.root, versions) if self.local else None
        host = self._host(capabilities, versions, config)
        return {
            "host": host,
            "virtualization": self._virtualization(capabilities),
            "migration_features": host_features(binding_names(self.lv), versions,
                                                None if config is None else config["post_copy"]),
            "domains": self._domains(domain_names),
        }

    def _host(self, capabilities, versions, config):
        with libvirt_errors(self.lv, f"reading the node information of {self.hypervisor.uri}"):
            info = self.conn.getInfo()
        host_arch = capabilities.guest_arch(capabilities.arch)
        host = {
            "hostname": self.hypervisor.hostname(),
            "uuid": capabilities.uuid,
            "arch": capabilities.arch,
            "cpu": capabilities.cpu_dict(),
            "cpus": int(info[2]),
            "libvirt_version": dotted_version(versions["libvirt"]),
            "qemu_version": dotted_version(versions["hypervisor"]),
            "memory": self.hypervisor.memory(),
            "domain_types": [] if host_arch is None else list(host_arch.domain_types),
            "guest_arches": sorted({guest.arch for guest in capabilities.guests}),
            "migration_transports": list(capabilities.migration_transports),
            "local": self.local,
        }
        if config is None:
            reason = remote_view_reason(self.hypervisor.uri)
            config = {"migration_ports": None, "post_copy": {"possible": None, "via": None, "reason": reason},
                      "tls": {"configured": None, "cert_dir": None, "can_send": None, "can_receive": None,
                              "missing": [], "problems": [], "reason": reason}}
        else:
            config["tls"] = {**config["tls"], **self._tls_self_check(config["tls"]["cert_dir"], host["hostname"])}
        host.update(config)
        return host

    def _tls_self_check(self, cert_dir, hostname):
        """The host's TLS files judged as if it migrated to itself: present, one CA, valid now, valid for its host
        name, keys its QEMU can read. ``configured`` is true when nothing fails."""
        directory = read_local_directory(hostname, cert_dir, self.root)
        finding = check_tls(TlsPair(directory, directory, hostname, self.wall_clock(),
                                    qemu_process_ids(self.root)))
        return {"configured": finding.status != "fail",
                "problems": [] if finding.status == "ok" else [finding.message.removeprefix("transport=tls: ")]}

    def _virtualization(self, capabilities):
        host_arch = capabilities.guest_arch(capabilities.arch)
        libvirt_types = [] if host_arch is None else list(host_arch.domain_types)
        if not self.local:
            reason = remote_view_reason(self.hypervisor.uri)
            return {"vendor": capabilities.cpu_vendor, "hw_flag": None, "hw_name": None, "kvm_usable": None,
                    "accelerator": None, "reason": reason, "kvm_modules": [], "dev_kvm": None, "nested": None,
                    "firmware_disabled": None, "probe": None, "under_hypervisor": None,
                    "libvirt_domain_types": libvirt_types}
        view = read_kernel_view(self.root, probe=probe_kvm() if self.probe else None)
        status = virtualization_status(view)
        status["libvirt_domain_types"] = libvirt_types
        if status["kvm_usable"] and "kvm" not in libvirt_types:
            status.update(kvm_usable=False, accelerator="tcg",
                          reason="the kernel offers KVM but libvirt does not: restart libvirtd so it probes QEMU "
                                 "again, and check that QEMU's user may open /dev/kvm")
        return status

    def _domains(self, names):
        with libvirt_errors(self.lv, f"listing the guests of {self.hypervisor.uri}"):
            domains = self.conn.listAllDomains(0)
        wanted = None if names is None else set(names)
        if wanted:
            known = {key for domain in domains for key in (domain.name(), domain.UUIDString())}
            unknown = sorted(wanted - known)
            if unknown:
                raise MigrationError(
                    f"domains: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not defined on "
                    f"{self.hypervisor.uri}",
                    fix="name guests this host has ('virsh list --all'), by name or UUID, or omit domains for all")
        facts = []
        for domain in domains:
            if wanted is not None and domain.name() not in wanted and domain.UUIDString() not in wanted:
                continue
            described = self.domain_facts(domain)
            if described is not None:
                facts.append(described)
        return sorted(facts, key=lambda entry: entry["name"])

    def domain_facts(self, domain):
        """One guest's facts, or None when it vanished while being read."""
        state = self.hypervisor.describe(domain)
        if state is None:
            return None
        with libvirt_errors(self.lv, f"reading the definition of {state.name!r} on {self.hypervisor.uri}"):
            guest = parse_guest(domain.XMLDesc(0))
        return {
            **state.as_dict(),
            "memory_bytes": guest.memory_bytes,
            "vcpus": guest.vcpus,
            "domain_type": guest.domain_type,
            "arch": guest.arch,
            "machine": guest.machine,
            "cpu": guest.cpu.as_dict(),
            "disks": [self._disk_facts(disk) for disk in guest.disks],
            "boot_files": list(guest.boot_files),
            "interfaces": [self._interface_facts(interface) for interface in guest.interfaces],
            "blockers": [blocker.as_dict() for blocker in guest.blockers],
            "migratable": not guest.blockers,
        }

    def _disk_facts(self, disk):
        facts = disk.as_dict()
        pool = self._pool_of(disk.path) if disk.path else None
        filesystem = self.filesystems.type_of(disk.path) if disk.path and disk.kind == "file" else None
        shared, why = storage_sharing(disk, pool, filesystem)
        facts.update(pool=None if pool is None else pool[0], pool_type=None if pool is None else pool[1],
                     filesystem=filesystem, shared=shared, shared_reason=why)
        return facts

    def _interface_facts(self, interface):
        facts = interface.as_dict()
        if interface.kind == "network" and interface.network and facts["bridge"] is None:
            with contextlib.suppress(self.lv.libvirtError):
                facts["bridge"] = self.conn.networkLookupByName(interface.network).bridgeName()
        return facts

    def _pool_of(self, path):
        """(pool name, pool type) of the storage pool holding ``path`` on this host, or None."""
        try:
            pool = self.conn.storageVolLookupByPath(path).storagePoolLookupByVolume()
            return pool.name(), pool_type(pool.XMLDesc(0))
        except self.lv.libvirtError:
            return None


def pool_type(pool_xml):
    return ET.fromstring(pool_xml).get("type")


def storage_sharing(disk, pool, filesystem):
    """(shared, why): True when other hosts see this disk too, False when they do not, None when unknown."""
    if disk.kind == "network":
        return True, f"network disk ({disk.source})"
    if disk.path is None:
        return None, "no medium"
    return _path_sharing(pool, filesystem)


def _path_sharing(pool, filesystem):
    if pool is not None and pool[1] in SHARED_POOL_TYPES:
        return True, f"in {pool[1]} storage pool {pool[0]}"
    if filesystem in SHARED_FILESYSTEMS:
        return True, f"on a {filesystem} file system"
    if filesystem is not None:
        return False, f"on a local {filesystem} file system"
    if pool is not None:
        return None, f"in {pool[1]} storage pool {pool[0]}; whether other hosts see it is not known"
    return None, "not in a storage pool and the file system could not be read"
