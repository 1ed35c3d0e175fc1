"""A fake ``libvirt`` binding: hypervisors, guests and scripted migrations, all in memory.

A ``FakeCloud`` holds hosts by URI; ``cloud.libvirt`` is a module object to pass wherever the
code takes the binding. Connections to the same URI share the host, so the source, monitor and
destination connections of one test see one world.

A guest's ``Migration`` is its script: ``jobStats()`` on the source returns the next sample,
and once the samples are used up the migration ends, with success (the guest moves to the
destination) or with the scripted ``failure``. ``migrateToURI3`` blocks until then, or until
``abortJob()`` ends it. The ``Migration`` records what the code asked for (flags, params,
downtime limit, abort calls) for the tests to check.
"""

from __future__ import annotations

import itertools
import threading
import time
import types
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace

MIB = 1024 * 1024
GIB = 1024 * MIB

CONSTANTS = {
    # Error codes (only those the code or tests name), then the three error levels that share the prefix.
    "VIR_ERR_OK": 0,
    "VIR_ERR_INTERNAL_ERROR": 1,
    "VIR_ERR_NO_MEMORY": 2,
    "VIR_ERR_NO_SUPPORT": 3,
    "VIR_ERR_NO_CONNECT": 5,
    "VIR_ERR_OPERATION_FAILED": 9,
    "VIR_ERR_OPERATION_DENIED": 29,
    "VIR_ERR_SYSTEM_ERROR": 38,
    "VIR_ERR_NO_DOMAIN": 42,
    "VIR_ERR_AUTH_FAILED": 45,
    "VIR_ERR_OPERATION_INVALID": 55,
    "VIR_ERR_CONFIG_UNSUPPORTED": 67,
    "VIR_ERR_OPERATION_TIMEOUT": 68,
    "VIR_ERR_ARGUMENT_UNSUPPORTED": 74,
    "VIR_ERR_OPERATION_ABORTED": 78,
    "VIR_ERR_MIGRATE_UNSAFE": 81,
    "VIR_ERR_OPERATION_UNSUPPORTED": 84,
    "VIR_ERR_CPU_INCOMPATIBLE": 91,
    "VIR_ERR_NO_NETWORK": 43,
    "VIR_ERR_NO_STORAGE_POOL": 49,
    "VIR_ERR_NO_STORAGE_VOL": 50,
    "VIR_ERR_NO_INTERFACE": 57,
    "VIR_ERR_NONE": 0,
    "VIR_ERR_WARNING": 1,
    "VIR_ERR_ERROR": 2,
    # Domain states.
    "VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET": 1 << 4,
    "VIR_DOMAIN_NOSTATE": 0,
    "VIR_DOMAIN_RUNNING": 1,
    "VIR_DOMAIN_BLOCKED": 2,
    "VIR_DOMAIN_PAUSED": 3,
    "VIR_DOMAIN_SHUTDOWN": 4,
    "VIR_DOMAIN_SHUTOFF": 5,
    "VIR_DOMAIN_CRASHED": 6,
    "VIR_DOMAIN_PMSUSPENDED": 7,
    "VIR_DOMAIN_RUNNING_MIGRATED": 2,
    "VIR_DOMAIN_RUNNING_MIGRATION_CANCELED": 6,
    "VIR_DOMAIN_PAUSED_MIGRATION": 2,
    "VIR_DOMAIN_PAUSED_USER": 1,
    "VIR_DOMAIN_PAUSED_POSTCOPY": 12,
    "VIR_DOMAIN_PAUSED_POSTCOPY_FAILED": 13,
    "VIR_DOMAIN_RUNNING_UNPAUSED": 5,
    "VIR_DOMAIN_RUNNING_BOOTED": 1,
    "VIR_DOMAIN_SHUTOFF_UNKNOWN": 0,
    "VIR_DOMAIN_SHUTOFF_SHUTDOWN": 1,
    "VIR_DOMAIN_SHUTOFF_DESTROYED": 2,
    "VIR_DOMAIN_RUNNING_POSTCOPY": 10,
    "VIR_DOMAIN_RUNNING_POSTCOPY_FAILED": 11,
    "VIR_DOMAIN_SHUTOFF_MIGRATED": 4,
    # Jobs.
    "VIR_DOMAIN_JOB_NONE": 0,
    "VIR_DOMAIN_JOB_UNBOUNDED": 2,
    "VIR_DOMAIN_JOB_COMPLETED": 3,
    "VIR_DOMAIN_JOB_STATS_COMPLETED": 1,
    # Migration flags and parameters.
    "VIR_MIGRATE_LIVE": 1,
    "VIR_MIGRATE_PEER2PEER": 2,
    "VIR_MIGRATE_TUNNELLED": 4,
    "VIR_MIGRATE_PERSIST_DEST": 8,
    "VIR_MIGRATE_UNDEFINE_SOURCE": 16,
    "VIR_MIGRATE_PAUSED": 32,
    "VIR_MIGRATE_NON_SHARED_DISK": 64,
    "VIR_MIGRATE_NON_SHARED_INC": 128,
    "VIR_MIGRATE_CHANGE_PROTECTION": 256,
    "VIR_MIGRATE_UNSAFE": 512,
    "VIR_MIGRATE_OFFLINE": 1024,
    "VIR_MIGRATE_COMPRESSED": 2048,
    "VIR_MIGRATE_ABORT_ON_ERROR": 4096,
    "VIR_MIGRATE_AUTO_CONVERGE": 8192,
    "VIR_MIGRATE_POSTCOPY": 32768,
    "VIR_MIGRATE_POSTCOPY_RESUME": 524288,
    "VIR_DOMAIN_ABORT_JOB_POSTCOPY": 1,
    "VIR_MIGRATE_TLS": 65536,
    "VIR_MIGRATE_PARALLEL": 131072,
    "VIR_MIGRATE_PARAM_BANDWIDTH": "bandwidth",
    "VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY": "bandwidth.postcopy",
    "VIR_MIGRATE_PARAM_URI": "migrate_uri",
    "VIR_MIGRATE_PARAM_LISTEN_ADDRESS": "listen_address",
    "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL": "auto_converge.initial",
    "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT": "auto_converge.increment",
    "VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS": "parallel.connections",
    "VIR_MIGRATE_PARAM_COMPRESSION": "compression",
    "VIR_MIGRATE_PARAM_MIGRATE_DISKS": "migrate_disks",
    "VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION": 20,
    "VIR_DOMAIN_EVENT_ID_JOB_COMPLETED": 21,
    # Host and guest descriptions.
    "VIR_NODE_MEMORY_STATS_ALL_CELLS": -1,
    "VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE": 1,
    "VIR_CPU_COMPARE_ERROR": -1,
    "VIR_CPU_COMPARE_INCOMPATIBLE": 0,
    "VIR_CPU_COMPARE_IDENTICAL": 1,
    "VIR_CPU_COMPARE_SUPERSET": 2,
    "VIR_DOMAIN_XML_MIGRATABLE": 8,
    "VIR_DOMAIN_XML_SECURE": 1,
    "VIR_DOMAIN_XML_INACTIVE": 2,
    "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM": 8,
    # Dirty-rate measurement.
    "VIR_DOMAIN_STATS_DIRTYRATE": 512,
    "VIR_DOMAIN_DIRTYRATE_UNSTARTED": 0,
    "VIR_DOMAIN_DIRTYRATE_MEASURING": 1,
    "VIR_DOMAIN_DIRTYRATE_MEASURED": 2,
}
C = types.SimpleNamespace(**CONSTANTS)

# A migrateToURI3 that nothing ends within this many real seconds fails, so a broken test cannot hang.
JOB_LIMIT_S = 10


class libvirtError(Exception):  # the binding's spelling
    def __init__(self, message, code=C.VIR_ERR_INTERNAL_ERROR, level=C.VIR_ERR_ERROR):
        super().__init__(message)
        self.message = message
        self.code = code
        self.level = level

    def get_error_code(self):
        return self.code

    def get_error_message(self):
        return self.message

    def get_error_level(self):
        return self.level


def no_domain(key):
    return libvirtError(f"Domain not found: no domain with matching name or uuid '{key}'", C.VIR_ERR_NO_DOMAIN)


def sample(iteration, *, remaining, processed, total=GIB, bps=64 * MIB, dirty_pages=0, downtime=300, throttle=0):
    """A jobStats() dict of a running pre-copy migration, with the keys libvirt/QEMU report."""
    return {
        "type": C.VIR_DOMAIN_JOB_UNBOUNDED,
        "memory_iteration": iteration,
        "memory_remaining": remaining,
        "memory_processed": processed,
        "memory_total": total,
        "memory_bps": bps,
        "memory_dirty_rate": dirty_pages,
        "memory_page_size": 4096,
        "downtime": downtime,
        "data_processed": processed,
        "data_total": total,
        "data_remaining": remaining,
        "auto_converge_throttle": throttle,
    }


def completed_stats(*, time_elapsed=1712, downtime=31, downtime_net=29, setup_time=2, processed=1_200_000_000,
                    total=GIB, iterations=4):
    """jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED) of a migration that succeeded."""
    return {
        "type": C.VIR_DOMAIN_JOB_COMPLETED,
        "time_elapsed": time_elapsed,
        "downtime": downtime,
        "downtime_net": downtime_net,
        "setup_time": setup_time,
        "data_processed": processed,
        "data_total": total,
        "memory_iteration": iterations,
    }


@dataclass
class Migration:
    """The script of one guest's migration, and what the code under test did to it."""

    samples: list = field(default_factory=list)
    completed: dict = field(default_factory=completed_stats)
    failure: libvirtError | None = None  # ends the migration instead of success when the samples run out
    abort_failures: int = 0  # abortJob raises this many times before it works
    abort_ignored: bool = False  # abortJob returns, but the job goes on
    source_paused_after: bool = False  # after a failure or abort, the source guest is left paused
    destination_copy_after: bool = False  # after a failure or abort, a copy runs on the destination
    dirty_rate_mib: int | None = 8  # what a dirty-rate measurement finds; None: it never finishes
    start_error: libvirtError | None = None  # migrateToURI3 fails at once with this (before any sample)
    post_copy_refusals: int = 0  # migrateStartPostCopy raises this many times before it works
    completes_at_downtime: int | None = None  # a downtime limit at least this high ends the migration
    states_after: dict | None = None  # {"source"|"destination": state} each host shows once the job ended
    drop_monitor_after: int | None = None  # the connection reading jobStats dies after this many samples
    destination_down_on_start: bool = False  # the destination's libvirtd dies as start_error is raised
    monitor_hangs_after: int | None = None  # after this many samples QEMU's monitor answers no more: jobStats and
    # abortJob block (the daemon still answers keepalive) until the test ends
    client_drops_after: int | None = None  # the connection that called migrateToURI3 dies after this many samples
    # (a blip, a keepalive false alarm): the call returns an error while libvirt goes on with the peer-to-peer job
    destination_down_after: bool = False  # the destination answers no more once the migration failed (pre-copy)
    cut_while_finishing: bool = False  # the link is cut while the destination finishes (libvirt's Finish3): the
    # destination already runs the guest, the source resumes its own copy (running, migration_canceled), and the
    # destination answers no more
    recoveries: list = field(default_factory=list)  # each POSTCOPY_RESUME call: True resumes and completes, False
    # (or none left) fails as when the link is still down
    qemu_still_migrating: bool = False  # after the failure QEMU still sends into the dead socket: every resume is
    # refused until abortJobFlags(VIR_DOMAIN_ABORT_JOB_POSTCOPY) paused the stream (measured after a cut link)
    destination_connections_drop: bool = False  # a post-copy failure also kills every connection to the destination
    completes_unattended_after: int | None = None  # while QEMU still migrates, its stream comes back and completes
    # after this many reads of the guest's state on the destination; libvirt then finishes the job on both hosts
    # Recorded:
    dconnuri: str | None = None
    params: dict | None = None
    flags: int | None = None
    max_downtime: list = field(default_factory=list)
    abort_calls: int = 0
    starts: list = field(default_factory=list)  # (flags, params) of every migrateToURI3 call
    post_copy_calls: int = 0
    resumes: int = 0  # migrateToURI3 calls with VIR_MIGRATE_POSTCOPY_RESUME
    post_copy_pauses: int = 0  # abortJobFlags(VIR_DOMAIN_ABORT_JOB_POSTCOPY) calls that paused the stream
    samples_served: int = 0
    post_copy_at: int | None = None  # samples left when post-copy started
    dirty_rate_calcs: list = field(default_factory=list)
    outcome: str | None = None  # completed, failed or aborted
    announced_pass: int = 0  # the last pass a MIGRATION_ITERATION event announced

    def __post_init__(self):
        self.samples = list(self.samples)
        self.started = threading.Event()
        self.ended = threading.Event()
        self.client_gone = threading.Event()
        self.monitor_back = threading.Event()  # set at the test's end: a hung monitor's calls return
        self.error = None

    @property
    def active(self):
        return self.started.is_set() and not self.ended.is_set()


@dataclass
class Guest:
    name: str
    uuid: str
    state: int = C.VIR_DOMAIN_RUNNING
    reason: int = 1
    persistent: bool = True
    memory_kib: int = GIB // 1024
    migration: Migration = field(default_factory=Migration)
    completed: dict | None = None  # what jobStats(COMPLETED) returns
    devices: str = ""  # XML inside <devices> besides the emulator
    cpu: str = ""  # the <cpu> element, "" for none (the hypervisor's default model)
    os: str = "<type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>"
    domain_type: str = "qemu"
    job_type: int = 0  # jobInfo()[0] outside a scripted migration (another job holds the guest)
    block_sizes: dict = field(default_factory=dict)  # target -> capacity in bytes
    refuses: tuple = ()  # "destroy", "resume": these calls fail, as on a daemon that lost its QEMU monitor

    def xml(self):
        return (f"<domain type='{self.domain_type}'><name>{self.name}</name><uuid>{self.uuid}</uuid>"
                f"<memory unit='KiB'>{self.memory_kib}</memory><vcpu>1</vcpu><os>{self.os}</os>{self.cpu}"
                f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{self.devices}</devices></domain>")


MACHINES_X86 = ("pc-i440fx-7.2", "pc", "pc-q35-7.2", "q35")
MODEL_VENDORS = {"qemu64": None, "kvm64": None, "Skylake-Client": "Intel", "Cascadelake-Server": "Intel",
                 "EPYC": "AMD", "EPYC-Rome": "AMD"}


@dataclass
class GuestArchCaps:
    arch: str = "x86_64"
    wordsize: int = 64
    domain_types: tuple = ("qemu", "kvm")
    machines: tuple = MACHINES_X86


@dataclass
class FakeHost:
    hostname: str
    uuid: str
    lib_version: int = 9_000_000
    qemu_version: int = 8_002_001
    guests: dict = field(default_factory=dict)  # name -> Guest
    down: bool = False  # every call on an open connection fails as if libvirtd went away
    close_error: bool = False
    arch: str = "x86_64"
    cpu_vendor: str = "Intel"
    cpu_model: str = "Skylake-Client-IBRS"
    cpu_features: tuple = ("vmx", "avx2", "aes", "pdpe1gb")
    guest_arches: list = field(default_factory=lambda: [GuestArchCaps(), GuestArchCaps("i686", 32)])
    hypervisor_cpu_lacks: tuple = ()  # features the hypervisor CPU does not provide (compareHypervisorCPU)
    memory_kib: dict = field(default_factory=lambda: {"total": 16 * GIB // 1024, "free": 12 * GIB // 1024,
                                                      "buffers": 0, "cached": GIB // 1024})
    networks: dict = field(default_factory=dict)  # libvirt network name -> active
    interfaces: dict = field(default_factory=dict)  # host interface (bridge, NIC) name -> active
    interface_driver: bool = True  # the daemon has an interface driver (libvirt 11 packages it apart)
    node_device_driver: bool = True  # the daemon has a node device driver; its net devices are ``interfaces``
    volumes: dict = field(default_factory=dict)  # path -> (pool name, capacity in bytes)
    pools_free: dict = field(default_factory=dict)  # pool target directory -> free bytes
    cpu_compare_error: str | None = None  # compareHypervisorCPU fails with this message
    files: dict = field(default_factory=dict)  # directory -> {name: (content bytes, mode, uid, gid)}: dir pools
    storage_driver: bool = True
    transient_pools: list = field(default_factory=list)  # names of the transient pools alive now
    refuses_define: str | None = None  # defineXML fails with this message
    refuses_undefine: bool = False  # the guests this host defines refuse undefine
    silent: bool = False  # its link drops packets: opening a connection waits until ``answering`` is set
    answering: threading.Event = field(default_factory=threading.Event)

    def by_uuid(self, value):
        value = value.lower().replace("-", "")
        return next((guest for guest in self.guests.values() if guest.uuid.replace("-", "") == value), None)


class FakeCloud:
    """All the hypervisors of one test, by URI."""

    def __init__(self):
        self.hosts = {}
        self.connections = []
        self.lock = threading.RLock()
        self.job_ended = threading.Event()  # any migration ended (its migrateToURI3 is returning)
        self.error_handler = None
        self.client_version = 9_000_000
        self.event_loop = False  # virEventRegisterDefaultImpl was called
        self.event_callbacks = {}  # callback id -> (connection, guest uuid, event id, callback)
        self.libvirt = make_libvirt(self)

    def add_host(self, hostname, *uris, host_uuid=None, **options):
        host = FakeHost(hostname, host_uuid or str(uuid.uuid5(uuid.NAMESPACE_DNS, hostname)), **options)
        for uri in uris or (f"qemu+ssh://{hostname}/system",):
            self.hosts[uri] = host
        return host

    def add_guest(self, host, name, **options):
        guest = Guest(name, str(uuid.uuid5(uuid.NAMESPACE_DNS, f"guest.{name}")), **options)
        host.guests[name] = guest
        return guest

    def open(self, uri):
        host = self.hosts.get(uri)
        if host is not None and host.silent:  # packets dropped: nothing answers until the kernel gives up
            host.answering.wait(JOB_LIMIT_S)
        if host is None or host.down:
            raise libvirtError(f"Cannot recv data: ssh: Could not resolve hostname {uri}: Name or service not known",
                               C.VIR_ERR_SYSTEM_ERROR)
        connection = FakeConnection(self, host)
        self.connections.append(connection)
        return connection

    def release_all(self):
        """End every migration still blocked (for test teardown)."""
        with self.lock:
            for host in self.hosts.values():
                host.answering.set()
                for guest in host.guests.values():
                    guest.migration.monitor_back.set()
                    if not guest.migration.ended.is_set():
                        guest.migration.error = libvirtError("fake: the test ended", C.VIR_ERR_OPERATION_ABORTED)
                        guest.migration.ended.set()


def make_libvirt(cloud):
    module = types.ModuleType("libvirt", "fake libvirt binding (tests/unit/fake_libvirt.py)")
    module.__dict__.update(CONSTANTS)
    module.virDomain = FakeDomain
    module.libvirtError = libvirtError
    module.open = cloud.open
    module.cloud = cloud

    def register_error_handler(handler, context):
        cloud.error_handler = (handler, context)

    module.registerErrorHandler = register_error_handler

    def register_event_loop():
        cloud.event_loop = True
        return 0

    def run_event_loop():
        time.sleep(1)  # the fake delivers events from the thread that ends the job
        return 0

    module.virEventRegisterDefaultImpl = register_event_loop
    module.virEventRunDefaultImpl = run_event_loop
    module.getVersion = lambda: cloud.client_version  # the client library's version, not a hypervisor's
    return module


_CALLBACK_IDS = itertools.count(1)


class FakeConnection:
    def __init__(self, cloud, host):
        self.cloud = cloud
        self.host = host
        self.closed = False
        self.keepalive = None  # (interval, count) once setKeepAlive was called
        self.dropped = False  # this connection died (keepalive gave up): every call fails

    def setKeepAlive(self, interval, count):
        if not self.cloud.event_loop:
            raise libvirtError("Invalid value for keepalive: no event loop is registered", C.VIR_ERR_INTERNAL_ERROR)
        self.keepalive = (interval, count)
        return 0

    def isAlive(self):
        return 0 if self.dropped or self.closed else 1

    def _host(self):
        if self.dropped:
            raise libvirtError("internal error: client socket is closed", C.VIR_ERR_INTERNAL_ERROR)
        if self.host.down:
            raise libvirtError("Cannot write data: Broken pipe", C.VIR_ERR_SYSTEM_ERROR)
        return self.host

    def getHostname(self):
        return self._host().hostname

    def getCapabilities(self):
        host = self._host()
        features = "".join(f"<feature name='{name}'/>" for name in host.cpu_features)
        guests = "".join(
            f"<guest><os_type>hvm</os_type><arch name='{arch.arch}'><wordsize>{arch.wordsize}</wordsize>"
            f"<emulator>/usr/bin/qemu-system-{arch.arch}</emulator>"
            + "".join(f"<machine>{machine}</machine>" for machine in arch.machines)
            + "".join(f"<domain type='{kind}'/>" for kind in arch.domain_types) + "</arch></guest>"
            for arch in host.guest_arches)
        vendor = {"Intel": "Intel", "AMD": "AMD"}.get(host.cpu_vendor, host.cpu_vendor)
        return (f"<capabilities><host><uuid>{host.uuid}</uuid><cpu><arch>{host.arch}</arch>"
                f"<model>{host.cpu_model}</model><vendor>{vendor}</vendor>"
                f"<topology sockets='1' dies='1' cores='2' threads='1'/>{features}</cpu>"
                "<migration_features><live/><uri_transports><uri_transport>tcp</uri_transport>"
                "<uri_transport>rdma</uri_transport></uri_transports></migration_features></host>"
                f"{guests}</capabilities>")

    def getDomainCapabilities(self, emulator, arch, machine, virttype, flags=0):
        models = "".join(f"<model usable='yes' vendor='{vendor or 'unknown'}'>{model}</model>"
                         for model, vendor in MODEL_VENDORS.items())
        return (f"<domainCapabilities><arch>{arch}</arch><domain>{virttype}</domain><cpu>"
                f"<mode name='custom' supported='yes'>{models}</mode></cpu></domainCapabilities>")

    def compareHypervisorCPU(self, emulator, arch, machine, virttype, xml_cpu, flags=0):
        host = self._host()
        if host.cpu_compare_error:
            raise libvirtError(host.cpu_compare_error, C.VIR_ERR_INTERNAL_ERROR)
        required = [feature.get("name") for feature in ET.fromstring(xml_cpu).findall("feature")
                    if feature.get("policy", "require") in ("require", "force")]
        missing = [name for name in required if name in host.hypervisor_cpu_lacks]
        if not missing:
            return C.VIR_CPU_COMPARE_SUPERSET if required else C.VIR_CPU_COMPARE_IDENTICAL
        if flags & C.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE:
            raise libvirtError("the CPU is incompatible with host CPU: Host CPU does not provide required features: "
                               + ", ".join(missing), C.VIR_ERR_CPU_INCOMPATIBLE)
        return C.VIR_CPU_COMPARE_INCOMPATIBLE

    def getInfo(self):
        host = self._host()
        return [host.arch, host.memory_kib["total"] // 1024, 2, 2400, 1, 1, 2, 1]

    def getMemoryStats(self, cell, flags=0):
        assert cell == C.VIR_NODE_MEMORY_STATS_ALL_CELLS
        return dict(self._host().memory_kib)

    def listAllDomains(self, flags=0):
        return [FakeDomain(self, guest) for guest in self._host().guests.values()]

    def networkLookupByName(self, name):
        networks = self._host().networks
        if name not in networks:
            raise libvirtError(f"Network not found: no network with matching name '{name}'", C.VIR_ERR_NO_NETWORK)
        return FakeActive(name, networks[name], bridge=f"virbr-{name}")

    def interfaceLookupByName(self, name):
        host = self._host()
        if not host.interface_driver:
            raise libvirtError("this function is not supported by the connection driver: virInterfaceLookupByName",
                               C.VIR_ERR_NO_SUPPORT)
        if name not in host.interfaces:
            raise libvirtError(f"Interface not found: couldn't find interface named '{name}'", C.VIR_ERR_NO_INTERFACE)
        return FakeActive(name, host.interfaces[name])

    def listAllDevices(self, flags=0):
        host = self._host()
        assert flags == C.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET
        if not host.node_device_driver:
            raise libvirtError("this function is not supported by the connection driver: virConnectListAllNodeDevices",
                               C.VIR_ERR_NO_SUPPORT)
        return [FakeNodeDevice(name, up) for name, up in host.interfaces.items()]

    def storageVolLookupByPath(self, path):
        volumes = self._host().volumes
        if path not in volumes:
            raise libvirtError(f"Storage volume not found: no storage vol with matching path '{path}'",
                               C.VIR_ERR_NO_STORAGE_VOL)
        pool, capacity = volumes[path]
        return FakeVolume(pool, capacity)

    def storagePoolCreateXML(self, xml, flags=0):
        host = self._host()
        if not host.storage_driver:
            raise libvirtError("this function is not supported by the connection driver: virStoragePoolCreateXML",
                               C.VIR_ERR_NO_SUPPORT)
        pool = ET.fromstring(xml)
        path = pool.findtext("target/path")
        if path not in host.files:
            raise libvirtError(f"cannot open directory '{path}': No such file or directory", C.VIR_ERR_SYSTEM_ERROR)
        host.transient_pools.append(pool.findtext("name"))
        return FakeDirPool(host, pool.findtext("name"), path)

    def newStream(self, flags=0):
        return FakeStream()

    def storagePoolLookupByTargetPath(self, path):
        pools = self._host().pools_free
        if path not in pools:
            raise libvirtError(f"Storage pool not found: no storage pool with matching target path '{path}'",
                               C.VIR_ERR_NO_STORAGE_POOL)
        return FakePool(path, pools[path])

    def getLibVersion(self):
        return self._host().lib_version

    def getVersion(self):
        return self._host().qemu_version

    def domainEventRegisterAny(self, domain, event_id, callback, opaque):
        assert event_id in (C.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, C.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION), \
            "the fake only sends JOB_COMPLETED and MIGRATION_ITERATION"
        assert self.cloud.event_loop, "libvirt sends no events before virEventRegisterDefaultImpl"
        callback_id = next(_CALLBACK_IDS)

        def deliver(value):
            callback(self, domain, value, opaque)

        self.cloud.event_callbacks[callback_id] = (self, domain._uuid, event_id, deliver)
        return callback_id

    def send_event(self, guest, event_id, value):
        """Deliver an event of ``guest`` to every connection to this host that watches it."""
        for connection, guest_uuid, watched_id, deliver in list(self.cloud.event_callbacks.values()):
            if connection.host is self.host and guest_uuid == guest.uuid and watched_id == event_id:
                deliver(value)

    def domainEventDeregisterAny(self, callback_id):
        if self.cloud.event_callbacks.pop(callback_id, None) is None:
            raise libvirtError(f"internal error: could not find event callback {callback_id}")
        return 0

    def domainListGetStats(self, domains, stats, flags=0):
        assert stats == C.VIR_DOMAIN_STATS_DIRTYRATE, "the fake only knows dirty-rate statistics"
        records = []
        for domain in domains:
            job = domain._guest().migration
            measured = bool(job.dirty_rate_calcs) and job.dirty_rate_mib is not None
            values = {"dirtyrate.calc_status": C.VIR_DOMAIN_DIRTYRATE_MEASURED if measured
                      else C.VIR_DOMAIN_DIRTYRATE_MEASURING}
            if measured:
                values["dirtyrate.megabytes_per_second"] = job.dirty_rate_mib
            records.append((domain, values))
        return records

    def defineXML(self, xml):
        """Define (or redefine) a guest from the XML another fake host's guest gave (``Guest.xml``)."""
        with self.cloud.lock:
            host = self._host()
            if host.refuses_define:
                raise libvirtError(f"operation failed: {host.refuses_define}", C.VIR_ERR_OPERATION_FAILED)
            root = ET.fromstring(xml)
            name, uuid_string = root.findtext("name"), root.findtext("uuid")
            existing = host.guests.get(name)
            if existing is not None and existing.state != C.VIR_DOMAIN_SHUTOFF:
                raise libvirtError(f"operation failed: domain '{name}' is already active", C.VIR_ERR_OPERATION_FAILED)
            host.guests[name] = Guest(name, uuid_string, state=C.VIR_DOMAIN_SHUTOFF, reason=0,
                                      memory_kib=int(root.findtext("memory")),
                                      refuses=("undefine",) if host.refuses_undefine else ())
            return FakeDomain(self, host.guests[name])

    def lookupByName(self, name):
        guest = self._host().guests.get(name)
        if guest is None:
            raise no_domain(name)
        return FakeDomain(self, guest)

    def lookupByUUIDString(self, uuid_string):
        guest = self._host().by_uuid(uuid_string)
        if guest is None:
            raise no_domain(uuid_string)
        return FakeDomain(self, guest)

    def close(self):
        self.closed = True
        if self.host.close_error:
            raise libvirtError("Cannot write data: Broken pipe", C.VIR_ERR_SYSTEM_ERROR)
        return 0


@dataclass
class FakeActive:
    """A libvirt network or host interface handle."""

    _name: str
    active: bool
    bridge: str | None = None

    def name(self):
        return self._name

    def isActive(self):
        return int(self.active)

    def bridgeName(self):
        return self.bridge


@dataclass
class FakeNodeDevice:
    """A net node device, as libvirt's nodedev driver lists one per /sys/class/net entry."""

    interface: str
    up: bool

    def name(self):
        return f"net_{self.interface}_52_54_00_00_00_01"

    def XMLDesc(self, flags=0):
        state = "up" if self.up else "down"
        return (f"<device><name>{self.name()}</name><capability type='net'><interface>{self.interface}</interface>"
                f"<address>52:54:00:00:00:01</address><link state='{state}'/></capability></device>")


@dataclass
class FakePool:
    _name: str
    free: int = 0
    kind: str = "dir"

    def name(self):
        return self._name

    def info(self):
        return [2, 100 * GIB, 100 * GIB - self.free, self.free]  # state, capacity, allocation, available

    def XMLDesc(self, flags=0):
        return f"<pool type='{self.kind}'><name>{self._name}</name></pool>"


@dataclass
class FakeDirPool:
    """A transient dir pool over one of the host's ``files`` directories."""

    host: FakeHost
    _name: str
    path: str

    def listAllVolumes(self, flags=0):
        return [FakeFile(self.path, name, entry) for name, entry in self.host.files[self.path].items()]

    def storageVolLookupByName(self, name):
        return FakeFile(self.path, name, self.host.files[self.path][name])

    def destroy(self):
        self.host.transient_pools.remove(self._name)


@dataclass
class FakeFile:
    directory: str
    _name: str
    entry: tuple  # (content, mode, uid, gid)

    def name(self):
        return self._name

    def XMLDesc(self, flags=0):
        _content, mode, uid, gid = self.entry
        return (f"<volume type='file'><name>{self._name}</name><target><path>{self.directory}/{self._name}</path>"
                f"<permissions><mode>{mode:04o}</mode><owner>{uid}</owner><group>{gid}</group></permissions>"
                "</target></volume>")

    def download(self, stream, offset, length, flags=0):
        content = self.entry[0]
        stream.pending = content[offset:offset + length] if length else content[offset:]


class FakeStream:
    def __init__(self):
        self.pending = b""
        self.finished = False

    def recv(self, nbytes):
        chunk, self.pending = self.pending[:nbytes], self.pending[nbytes:]
        return chunk

    def finish(self):
        self.finished = True


@dataclass
class FakeVolume:
    pool: str
    capacity: int

    def info(self):
        return [0, self.capacity, self.capacity]  # type, capacity, allocation

    def storagePoolLookupByVolume(self):
        return FakePool(self.pool)


class FakeDomain:
    """A handle: it names a guest; every call looks the guest up on its host again, like libvirt."""

    def __init__(self, conn, guest):
        self.conn = conn
        self._name = guest.name
        self._uuid = guest.uuid

    def _guest(self):
        guest = self.conn._host().by_uuid(self._uuid)
        if guest is None:
            raise no_domain(self._name)
        return guest

    def name(self):
        return self._name

    def UUIDString(self):
        return self._uuid

    def state(self):
        guest = self._guest()
        self._complete_unattended(guest)
        return [guest.state, guest.reason]

    def _complete_unattended(self, guest):
        """The destination's half of a broken post-copy whose QEMU stream came back (as measured after a cut link):
        after enough looks, libvirt finishes the migration; the source's half is gone."""
        job = guest.migration
        cloud = self.conn.cloud
        if job.completes_unattended_after is None or not job.qemu_still_migrating \
                or cloud.hosts.get(job.dconnuri) is not self.conn.host:
            return
        with cloud.lock:
            job.completes_unattended_after -= 1
            if job.completes_unattended_after > 0:
                return
            job.qemu_still_migrating = False
            for host in cloud.hosts.values():
                if host is not self.conn.host:
                    host.guests.pop(guest.name, None)
            guest.state, guest.reason, guest.persistent = C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_MIGRATED, True

    def isPersistent(self):
        return int(self._guest().persistent)

    def maxMemory(self):
        return self._guest().memory_kib

    def XMLDesc(self, flags=0):
        return self._guest().xml()

    def jobInfo(self):
        guest = self._guest()
        if guest.state not in (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_PAUSED):
            raise libvirtError("Requested operation is not valid: domain is not running", C.VIR_ERR_OPERATION_INVALID)
        job_type = C.VIR_DOMAIN_JOB_UNBOUNDED if guest.migration.active else guest.job_type
        return [job_type, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]

    def blockInfo(self, target, flags=0):
        size = self._guest().block_sizes.get(target)
        if size is None:
            raise libvirtError(f"invalid argument: invalid path {target} not assigned to domain",
                               C.VIR_ERR_INTERNAL_ERROR)
        return [size, size, size]

    def migrateSetMaxDowntime(self, downtime, flags=0):
        with self.conn.cloud.lock:
            job = self._guest().migration
            job.max_downtime.append((downtime, flags))
            if job.active and job.completes_at_downtime is not None and downtime >= job.completes_at_downtime:
                job.samples.clear()  # QEMU stops the guest for the last copy at once
            return 0

    @staticmethod
    def _refuse_if_asked(guest, call):
        if call in guest.refuses:
            raise libvirtError(f"internal error: cannot {call}: QEMU monitor is gone", C.VIR_ERR_INTERNAL_ERROR)

    def resume(self):
        with self.conn.cloud.lock:
            guest = self._guest()
            self._refuse_if_asked(guest, "resume")
            if guest.state != C.VIR_DOMAIN_PAUSED:
                raise libvirtError("Requested operation is not valid: domain is not paused",
                                   C.VIR_ERR_OPERATION_INVALID)
            guest.state, guest.reason = C.VIR_DOMAIN_RUNNING, 5  # RUNNING_UNPAUSED
            return 0

    def destroy(self):
        with self.conn.cloud.lock:
            guest = self._guest()
            self._refuse_if_asked(guest, "destroy")
            if guest.persistent:
                guest.state, guest.reason = C.VIR_DOMAIN_SHUTOFF, 2  # SHUTOFF_DESTROYED
            else:
                del self.conn.host.guests[guest.name]
            return 0

    def undefineFlags(self, flags=0):
        with self.conn.cloud.lock:
            guest = self._guest()
            self._refuse_if_asked(guest, "undefine")
            if guest.state == C.VIR_DOMAIN_SHUTOFF:
                del self.conn.host.guests[guest.name]
            else:
                guest.persistent = False
            return 0

    def suspend(self):
        with self.conn.cloud.lock:
            guest = self._guest()
            self._refuse_if_asked(guest, "suspend")
            if guest.state not in (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_PAUSED):
                raise libvirtError("Requested operation is not valid: domain is not running",
                                   C.VIR_ERR_OPERATION_INVALID)
            guest.state, guest.reason = C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_USER
            return 0

    def shutdown(self):
        """An ACPI shutdown request: the guest stops at once unless it ignores ACPI (``refuses`` "shutdown")."""
        with self.conn.cloud.lock:
            guest = self._guest()
            if guest.state not in (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_PAUSED):
                raise libvirtError("Requested operation is not valid: domain is not running",
                                   C.VIR_ERR_OPERATION_INVALID)
            if "shutdown" not in guest.refuses:
                guest.state, guest.reason = C.VIR_DOMAIN_SHUTOFF, 1  # SHUTOFF_SHUTDOWN
            return 0

    def jobStats(self, flags=0):
        cloud = self.conn.cloud
        guest = self._guest()
        if flags & C.VIR_DOMAIN_JOB_STATS_COMPLETED:
            return dict(guest.completed or {"type": C.VIR_DOMAIN_JOB_NONE})
        job = guest.migration
        if not job.ended.is_set():
            job.started.wait(1)  # the runner polls right after starting migrateToURI3 in its thread
        self._wait_for_a_hung_monitor(job)
        with cloud.lock:
            if not job.active:
                return {"type": C.VIR_DOMAIN_JOB_NONE}
            if job.drop_monitor_after is not None and job.samples_served >= job.drop_monitor_after:
                self.conn.dropped = True
                self.conn._host()  # raises, as every later call on this connection will
            if job.samples:
                job.samples_served += 1
                if job.samples_served == job.client_drops_after:
                    job.client_gone.set()
                sample = dict(job.samples.pop(0))
                self._announce_passes(guest, job, sample.get("memory_iteration", 0))
                return sample
            if job.failure is None:
                self._complete(guest, job)
            else:
                self._end(guest, job, "failed", job.failure)
        self._guest()  # gone from the source after a completed migration: NO_DOMAIN, like libvirt
        return {"type": C.VIR_DOMAIN_JOB_NONE}

    def startDirtyRateCalc(self, seconds, flags=0):
        self._guest().migration.dirty_rate_calcs.append((seconds, flags))
        return 0

    def migrateStartPostCopy(self, flags=0):
        with self.conn.cloud.lock:
            job = self._guest().migration
            job.post_copy_calls += 1
            if not job.active or not job.flags & C.VIR_MIGRATE_POSTCOPY:
                raise libvirtError("Requested operation is not valid: post-copy migration was not enabled",
                                   C.VIR_ERR_OPERATION_INVALID)
            if job.post_copy_refusals:
                job.post_copy_refusals -= 1
                raise libvirtError("Requested operation is not valid: migration not started yet",
                                   C.VIR_ERR_OPERATION_INVALID)
            if job.post_copy_at is None:
                job.post_copy_at = len(job.samples)
            return 0

    @staticmethod
    def _wait_for_a_hung_monitor(job):
        if job.monitor_hangs_after is not None and job.samples_served >= job.monitor_hangs_after:
            job.monitor_back.wait(JOB_LIMIT_S)

    def abortJob(self):
        self._wait_for_a_hung_monitor(self._guest().migration)
        with self.conn.cloud.lock:
            guest = self._guest()
            job = guest.migration
            job.abort_calls += 1
            if not job.active:
                raise libvirtError("Requested operation is not valid: no job is active on the domain",
                                   C.VIR_ERR_OPERATION_INVALID)
            if job.abort_failures:
                job.abort_failures -= 1
                raise libvirtError("internal error: unable to abort job: monitor is busy", C.VIR_ERR_INTERNAL_ERROR)
            if not job.abort_ignored:
                self._end(guest, job, "aborted", libvirtError(
                    "operation aborted: migration out job: canceled by client", C.VIR_ERR_OPERATION_ABORTED))
            return 0

    def abortJobFlags(self, flags=0):
        if not flags & C.VIR_DOMAIN_ABORT_JOB_POSTCOPY:
            return self.abortJob()
        with self.conn.cloud.lock:
            guest = self._guest()
            job = guest.migration
            if guest.reason not in (C.VIR_DOMAIN_PAUSED_POSTCOPY, C.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED):
                raise libvirtError("Requested operation is not valid: current job is not outgoing migration in "
                                   "post-copy mode", C.VIR_ERR_OPERATION_INVALID)
            if not job.qemu_still_migrating:
                raise libvirtError("Requested operation is not valid: QEMU reports migration is not running",
                                   C.VIR_ERR_OPERATION_INVALID)
            job.qemu_still_migrating = False
            job.post_copy_pauses += 1
            return 0

    def _resume_post_copy(self, dconnuri, flags):
        """A post-copy recovery: completes the broken post-copy when the script says the link is back."""
        cloud = self.conn.cloud
        with cloud.lock:
            guest = self._guest()
            job = guest.migration
            job.resumes += 1
            if job.qemu_still_migrating:
                raise libvirtError("Requested operation is not valid: QEMU reports migration is still running",
                                   C.VIR_ERR_OPERATION_INVALID)
            if not (job.recoveries and job.recoveries.pop(0)):
                raise libvirtError(f"operation failed: Failed to connect to remote libvirt URI {dconnuri}: "
                                   "Connection refused", C.VIR_ERR_OPERATION_FAILED)
            destination = cloud.hosts[dconnuri]
            destination.guests[guest.name] = replace(guest, state=C.VIR_DOMAIN_RUNNING,
                                                     reason=C.VIR_DOMAIN_RUNNING_MIGRATED,
                                                     persistent=bool(flags & C.VIR_MIGRATE_PERSIST_DEST))
            del self.conn.host.guests[guest.name]
            return 0

    def migrateToURI3(self, dconnuri, params, flags):
        cloud = self.conn.cloud
        if flags & C.VIR_MIGRATE_POSTCOPY_RESUME:
            return self._resume_post_copy(dconnuri, flags)
        with cloud.lock:
            job = self._guest().migration
            job.dconnuri, job.params, job.flags = dconnuri, dict(params), flags
            job.starts.append((flags, dict(params)))
            if job.start_error is not None:
                error, job.start_error = job.start_error, None
                if job.destination_down_on_start:
                    cloud.hosts[dconnuri].down = True
                raise error
            job.started.set()
            if dconnuri not in cloud.hosts:
                job.outcome, job.error = "failed", libvirtError(
                    f"unable to connect to server at '{dconnuri}': No route to host", C.VIR_ERR_SYSTEM_ERROR)
                job.ended.set()
                cloud.job_ended.set()
        deadline = time.monotonic() + JOB_LIMIT_S
        while not job.ended.wait(0.001):
            if job.client_gone.is_set():
                self.conn.dropped = True
                raise libvirtError("Cannot recv data: Connection reset by peer", C.VIR_ERR_SYSTEM_ERROR)
            if time.monotonic() > deadline:
                raise libvirtError("fake: nothing ended this migration", C.VIR_ERR_OPERATION_TIMEOUT)
        if job.client_gone.is_set():  # the connection died before the job ended: the caller never hears its end
            self.conn.dropped = True
            raise libvirtError("Cannot recv data: Connection reset by peer", C.VIR_ERR_SYSTEM_ERROR)
        if job.error is not None:
            raise job.error
        return 0

    def _force_states(self, guest, job):
        hosts = {"source": self.conn.host, "destination": self.conn.cloud.hosts[job.dconnuri]}
        for side, state in job.states_after.items():
            host = hosts[side]
            if state is None:
                host.guests.pop(guest.name, None)
            elif guest.name in host.guests:
                host.guests[guest.name].state = state
            else:
                host.guests[guest.name] = replace(guest, state=state, persistent=False)

    def _announce_passes(self, guest, job, iteration):
        """MIGRATION_ITERATION for every pass begun since the last sample, as QEMU's source sends them."""
        for number in range(job.announced_pass + 1, iteration + 1):
            self.conn.send_event(guest, C.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, number)
        job.announced_pass = max(job.announced_pass, iteration)

    # -- how a migration ends (called with the cloud lock held) ---------------------------------

    def _complete(self, guest, job):
        cloud = self.conn.cloud
        source, destination = self.conn.host, cloud.hosts[job.dconnuri]
        persistent = bool(job.flags & C.VIR_MIGRATE_PERSIST_DEST)
        # After post-copy, as in libvirt 9, the destination keeps no completed statistics.
        kept = None if job.post_copy_at is not None else dict(job.completed)
        destination.guests[guest.name] = replace(guest, state=C.VIR_DOMAIN_RUNNING,
                                                 reason=C.VIR_DOMAIN_RUNNING_MIGRATED, persistent=persistent,
                                                 completed=kept)
        self._announce_passes(guest, job, job.completed.get("memory_iteration", 0))
        self.conn.send_event(guest, C.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, dict(job.completed))
        if job.flags & C.VIR_MIGRATE_UNDEFINE_SOURCE or not guest.persistent:
            del source.guests[guest.name]
        else:
            guest.state, guest.reason = C.VIR_DOMAIN_SHUTOFF, C.VIR_DOMAIN_SHUTOFF_MIGRATED
        self._end(guest, job, "completed", None)

    def _end(self, guest, job, outcome, error):
        if outcome != "completed" and job.post_copy_at is not None:
            # Post-copy failed after the switch: QEMU pauses both halves of the guest.
            destination = self.conn.cloud.hosts[job.dconnuri]
            # libvirt >= 8.5 keeps both in the post-copy-failed state, ready for --postcopy-resume.
            destination.guests[guest.name] = replace(guest, state=C.VIR_DOMAIN_PAUSED,
                                                     reason=C.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED, persistent=False)
            guest.state, guest.reason = C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED
            if job.destination_connections_drop:
                for connection in self.conn.cloud.connections:
                    if connection.host is destination:
                        connection.dropped = True
        elif outcome != "completed" and job.cut_while_finishing:
            destination = self.conn.cloud.hosts[job.dconnuri]
            destination.guests[guest.name] = replace(guest, state=C.VIR_DOMAIN_RUNNING,
                                                     reason=C.VIR_DOMAIN_RUNNING_MIGRATED, persistent=False)
            guest.state, guest.reason = C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED
            destination.down = True
        elif outcome != "completed":
            if job.destination_copy_after:
                destination = self.conn.cloud.hosts[job.dconnuri]
                destination.guests[guest.name] = replace(guest, state=C.VIR_DOMAIN_RUNNING, persistent=False)
            if job.source_paused_after:
                guest.state, guest.reason = C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_MIGRATION
        if job.states_after:
            self._force_states(guest, job)
        if outcome != "completed" and job.destination_down_after:
            self.conn.cloud.hosts[job.dconnuri].down = True
        job.outcome, job.error = outcome, error
        job.ended.set()
        self.conn.cloud.job_ended.set()


class FakeClock:
    """The runner's clock (call it) and wait(seconds, event), in fake seconds.

    ``wait`` returns early when ``event`` is set; otherwise it advances the clock by ``seconds``.
    Once the fake has ended a migration, the runner's event is set within moments (its thread is
    returning from migrateToURI3), so ``wait`` then waits for it in real time instead of letting
    fake time run on; the results are deterministic either way.
    """

    def __init__(self, cloud, now=1000.0):
        self.cloud = cloud
        self.now = now

    def __call__(self):
        return self.now

    def wait(self, seconds, event):
        if event.wait(0.05 if self.cloud.job_ended.is_set() else 0.001):
            return
        self.now += seconds
