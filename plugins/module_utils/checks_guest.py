# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Preflight checks of the guest against the destination (pure): memory, storage, networks, devices,
the guest's state and jobs, a guest of the same name, and the convergence prediction."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from ansible_collections.kvm.live_migration.plugins.module_utils.findings import fail, mib, ok, warn
from ansible_collections.kvm.live_migration.plugins.module_utils.libvirtxml import SHARED_FILESYSTEMS


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
    interfaces, presences = list(interfaces), list(presences)
    if len(interfaces) != len(presences):  # zip(strict=True)'s check, which Python 3.9 lacks
        raise ValueError(f"check_networks: {len(interfaces)} interfaces but {len(presences)} presences")
    findings = []
    for interface, presence in zip(interfaces, presences):
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
