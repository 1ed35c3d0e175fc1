# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the user asks of a pair of hypervisors, its one validation, and the libvirt flags and typed
parameters it becomes.

``migrate`` and ``preflight`` validate with the same ``validate_request``: a request preflight
passes is one migrate accepts. Bad values are refused with the value and the fix, before any
connection is opened.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.policy import PROGRESS_TIMEOUT_S, Policy
from ansible_collections.kvm.live_migration.plugins.module_utils.units import GIB

TRANSPORTS = ("tls", "ssh", "tcp")
COPY_STORAGE = ("all", "incremental")
COMPRESSION_METHODS = ("xbzrle", "mt", "zlib", "zstd")
MAX_PARALLEL_CONNECTIONS = 255
# A DNS name (RFC 1123 labels) or an IPv4/IPv6 address: nothing that adds a user, a path or URI parameters.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                        r"[A-Za-z0-9])?)*\.?$")
_IPV6 = re.compile(r"^\[?[0-9A-Fa-f:.]+(%[A-Za-z0-9]+)?\]?$")
_DISK_TARGET = re.compile(r"^[a-z][a-z0-9]{1,31}$")  # vda, sdb, hdc, xvda, nvme0n1
LIBVIRT_SCHEMES = ("qemu", "qemu+ssh", "qemu+libssh", "qemu+libssh2", "qemu+tls", "qemu+tcp", "qemu+unix")
MIGRATE_URI_SCHEMES = ("tcp", "rdma", "unix")
MIN_TIMEOUT_S = 60
TIMEOUT_S_PER_GIB = 150
# libvirt takes the downtime limit as an unsigned long long in ms and QEMU caps it at 2000 s; a bound far above any
# real pause, which keeps an overflowing number from reaching libvirt.
MAX_DOWNTIME_MS = 2_000_000
# Schemes whose libvirt connection (the control channel, which carries the guest's definition) is not encrypted.
CLEARTEXT_SCHEMES = ("qemu+tcp",)


@dataclass
class MigrationRequest:
    """What the user asked for, already validated by ``validate_request``."""

    name: str
    dest_uri: str
    transport: str = "tls"
    allow_insecure: bool = False
    bandwidth_mib: int = 0
    max_downtime_ms: int = 500
    persistent: bool = True
    undefine_source: bool = True
    migrate_uri: str | None = None
    listen_address: str | None = None
    timeout_s: int | None = None
    max_data_factor: float = 5.0
    poll_interval_s: float = 0.25
    convergence_threshold: float = 0.8
    stall_passes: int = 2
    allow_auto_converge: bool = True
    allow_post_copy: bool = False
    measure_dirty_rate: bool = True
    parallel_connections: int | None = None
    compression: tuple = ()
    copy_storage: str | None = None
    migrate_disks: tuple = ()
    post_copy_recovery_timeout_s: int = 300
    progress_timeout_s: int = PROGRESS_TIMEOUT_S

    @property
    def policy(self):
        return Policy(threshold=self.convergence_threshold, stall_passes=self.stall_passes,
                      max_downtime_ms=self.max_downtime_ms, allow_auto_converge=self.allow_auto_converge,
                      allow_post_copy=self.allow_post_copy, progress_timeout_s=self.progress_timeout_s)


def validate_request(request):
    """Raise MigrationError naming the bad value and the fix; return the request unchanged."""
    validate_values(request)
    if request.transport == "tcp" and not request.allow_insecure:
        raise MigrationError(
            "transport=tcp sends the guest's memory across the network unencrypted",
            fix="use transport: tls or ssh, or set allow_insecure: true on a trusted, isolated migration network",
        )
    return request


def valid_host_name(host):
    return bool(host) and (bool(_HOST_NAME.match(host)) or (":" in host and bool(_IPV6.match(host))))


def valid_address(address):
    """An IPv4 or IPv6 address (libvirt's listen_address takes no name)."""
    try:
        ipaddress.ip_address(address.strip("[]") if isinstance(address, str) else "")
    except ValueError:
        return False
    return True


def validate_host_name(host, option):
    """Raise MigrationError unless ``host`` is a DNS name or an address (``option`` names it in the message)."""
    if not isinstance(host, str) or not valid_host_name(host):
        raise MigrationError(f"{option}={host!r} is not a host name or address",
                             fix=f"give {option} as a DNS name (hv2.example.com) or an address; use dest_uri for a "
                                 "full libvirt URI")


def validate_libvirt_uri(uri, option):
    """A libvirt URI: a qemu scheme, /system or /session, a valid host for a remote one. Query parameters are
    allowed (dest_uri is the documented way to give them); nothing else is."""
    if not uri or not isinstance(uri, str):
        raise MigrationError(f"{option} is empty", fix=f"give {option} as qemu+ssh://HOST/system, or give dest_host")
    parsed = urlsplit(uri)
    if parsed.scheme not in LIBVIRT_SCHEMES or "://" not in uri:
        raise MigrationError(f"{option}={uri!r} is not a libvirt URI of QEMU ({', '.join(LIBVIRT_SCHEMES)})",
                             fix=f"give {option} as qemu+ssh://HOST/system (or qemu:///system for this host)")
    if parsed.path not in ("/system", "/session"):
        raise MigrationError(f"{option}={uri!r} names neither /system nor /session", fix="end the URI with /system")
    if parsed.scheme not in ("qemu", "qemu+unix") and not valid_host_name(parsed.hostname or ""):
        raise MigrationError(f"{option}={uri!r} has no valid host name", fix="give qemu+ssh://HOST/system")


def validate_migrate_uri(uri):
    """migrate_uri: tcp://HOST[:PORT] (or rdma://, unix://), or a bare host name."""
    parsed = urlsplit(uri if "://" in uri else f"tcp://{uri}")
    try:
        parsed.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in MIGRATE_URI_SCHEMES or parsed.query or parsed.username or (
            parsed.scheme != "unix" and not valid_host_name(parsed.hostname or "")):
        raise MigrationError(f"migrate_uri={uri!r} is not tcp://HOST[:PORT] (or rdma://HOST[:PORT], unix://PATH)",
                             fix="give the address QEMU sends memory to, e.g. tcp://192.0.2.13:49152")


def validate_numbers(request):
    """NaN and infinity slip past every comparison (nan < 1 and nan > 1 are both false): refuse them first."""
    for item in fields(request):
        value = getattr(request, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise MigrationError(f"{item.name.removesuffix('_s').removesuffix('_mib')}={value} is not a finite number",
                                 fix="give a number, such as the option's default")


def validate_values(request):
    """Every option's value and their combinations; cleartext without allow_insecure is left to the caller
    (migrate refuses it, preflight reports it as its transport finding)."""
    validate_numbers(request)
    _validate_guest_and_channels(request)
    if request.transport not in TRANSPORTS:
        raise MigrationError(f"transport={request.transport!r} is not one of {', '.join(TRANSPORTS)}",
                             fix="use transport: tls (QEMU native TLS), ssh (tunnelled) or tcp")
    if not 0 < request.max_downtime_ms <= MAX_DOWNTIME_MS:
        raise MigrationError(f"max_downtime_ms={request.max_downtime_ms} is outside 1-{MAX_DOWNTIME_MS}",
                             fix="give the longest pause the guest may see, in milliseconds (e.g. 500)")
    if request.bandwidth_mib < 0:
        raise MigrationError(f"bandwidth={request.bandwidth_mib} must be 0 (no cap) or a positive MiB/s",
                             fix="set bandwidth to the MiB/s the migration may use, or 0")
    if request.post_copy_recovery_timeout_s < 0:
        raise MigrationError(f"post_copy_recovery_timeout={request.post_copy_recovery_timeout_s} is negative",
                             fix="give the seconds a broken post-copy may take to resume, e.g. 300, or 0 for no try")
    if request.progress_timeout_s < 1:
        raise MigrationError(f"progress_timeout={request.progress_timeout_s} must be at least 1 second",
                             fix=f"give the seconds without a new low of the data left before an abort, e.g. "
                                 f"{PROGRESS_TIMEOUT_S}")
    if request.timeout_s is not None and request.timeout_s <= 0:
        raise MigrationError(f"timeout={request.timeout_s} must be a positive number of seconds",
                             fix="omit timeout to derive it from the guest's memory, or give seconds")
    if request.max_data_factor < 1:
        raise MigrationError(f"max_data_factor={request.max_data_factor} is below 1: nothing could complete",
                             fix="allow at least one copy of the guest's memory (default 5)")
    if not 0.05 <= request.poll_interval_s <= 1:  # noqa: PLR2004 - documented range
        raise MigrationError(f"poll_interval={request.poll_interval_s} is outside 0.05-1 s",
                             fix="poll at most once a second so every pass is seen")
    if request.transport == "ssh" and not request.dest_uri.startswith("qemu+ssh://"):
        raise MigrationError(f"transport=ssh tunnels through the libvirt connection, but dest_uri={request.dest_uri!r} "
                             "is not a qemu+ssh:// URI", fix="use a qemu+ssh:// dest_uri, or transport: tls")
    _validate_convergence(request)
    _validate_data_path(request)


def _validate_guest_and_channels(request):
    """The guest's name, the URIs and addresses, and what they promise together."""
    if not isinstance(request.name, str) or not request.name.strip():
        raise MigrationError(f"name={request.name!r} is empty",
                             fix="give the guest's name or UUID ('virsh list --all')")
    validate_libvirt_uri(request.dest_uri, "dest_uri")
    if request.migrate_uri is not None:
        validate_migrate_uri(request.migrate_uri)
    if request.listen_address is not None and not valid_address(request.listen_address):
        raise MigrationError(f"listen_address={request.listen_address!r} is not an IP address",
                             fix="give the address the destination's QEMU listens on (e.g. 192.0.2.13, or :: / "
                                 "0.0.0.0 for every address), or omit it")
    if urlsplit(request.dest_uri).scheme in CLEARTEXT_SCHEMES and request.transport == "tls" \
            and not request.allow_insecure:
        raise MigrationError(f"dest_uri={request.dest_uri!r} opens the libvirt connection in cleartext while "
                             "transport=tls asks for encryption: the guest's definition and every command would "
                             "cross the network unencrypted",
                             fix="use a qemu+ssh:// or qemu+tls:// dest_uri, or set allow_insecure: true on a trusted, "
                                 "isolated network")
    if request.undefine_source and not request.persistent:
        raise MigrationError("undefine_source=true with persistent=false leaves the guest defined on neither host: "
                             "it would live only as long as it runs on the destination",
                             fix="keep persistent: true (the default), or set undefine_source: false")


def _validate_convergence(request):
    if not 0 < request.convergence_threshold <= 1:
        raise MigrationError(f"convergence_threshold={request.convergence_threshold} is outside 0-1",
                             fix="give the dirty/transfer ratio above which a pass does not converge, e.g. 0.8")
    if request.stall_passes < 1:
        raise MigrationError(f"stall_passes={request.stall_passes} must be at least 1",
                             fix="give how many non-converging passes in a row trigger the next step, e.g. 2")


def _validate_data_path(request):
    if request.parallel_connections is not None:
        if not 1 <= request.parallel_connections <= MAX_PARALLEL_CONNECTIONS:
            raise MigrationError(f"parallel_connections={request.parallel_connections} is outside 1-255",
                                 fix="give the number of connections to send memory over, e.g. 4")
        if request.transport == "ssh":
            raise MigrationError("parallel_connections cannot be used with transport=ssh (one tunnel)",
                                 fix="use transport: tls for parallel connections, or drop parallel_connections")
    unknown = [method for method in request.compression if method not in COMPRESSION_METHODS]
    if unknown:
        raise MigrationError(f"compression={', '.join(unknown)} is not one of {', '.join(COMPRESSION_METHODS)}",
                             fix="choose compression methods QEMU knows (xbzrle suits guests that rewrite pages)")
    if request.copy_storage not in (None, *COPY_STORAGE):
        raise MigrationError(f"copy_storage={request.copy_storage!r} is not one of {', '.join(COPY_STORAGE)}",
                             fix="use copy_storage: all (full copy) or incremental (backing files are shared)")
    bad_targets = [target for target in request.migrate_disks if not _DISK_TARGET.match(str(target))]
    if bad_targets:
        raise MigrationError(f"migrate_disks={', '.join(map(str, bad_targets))} is not a disk target name",
                             fix="give the disk targets as libvirt names them (vda, sdb); see 'virsh domblklist'")
    if request.migrate_disks and request.copy_storage is None:
        raise MigrationError(f"migrate_disks={', '.join(request.migrate_disks)} needs copy_storage",
                             fix="set copy_storage: all or incremental, or drop migrate_disks for shared storage")


def ssh_uri(host):
    """The libvirt URI a destination host name stands for: its system daemon over SSH."""
    return f"qemu+ssh://{host}/system"


def default_timeout_s(memory_bytes):
    """The completion budget when the user gives none: 150 s per GiB of guest RAM, at least 60 s."""
    return max(MIN_TIMEOUT_S, int(TIMEOUT_S_PER_GIB * memory_bytes / GIB))


def migration_flags(lv, request, rungs=()):
    """The migrateToURI3 flags for the request; ``rungs`` are the ladder's usable steps."""
    flags = lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PEER2PEER | lv.VIR_MIGRATE_ABORT_ON_ERROR
    optional = (
        (request.persistent, "VIR_MIGRATE_PERSIST_DEST"),
        (request.undefine_source, "VIR_MIGRATE_UNDEFINE_SOURCE"),
        (request.transport == "ssh", "VIR_MIGRATE_TUNNELLED"),
        (request.transport == "tls", "VIR_MIGRATE_TLS"),
        ("auto_converge" in rungs, "VIR_MIGRATE_AUTO_CONVERGE"),
        ("post_copy" in rungs, "VIR_MIGRATE_POSTCOPY"),
        (request.parallel_connections is not None, "VIR_MIGRATE_PARALLEL"),
        (bool(request.compression), "VIR_MIGRATE_COMPRESSED"),
        (request.copy_storage == "all", "VIR_MIGRATE_NON_SHARED_DISK"),
        (request.copy_storage == "incremental", "VIR_MIGRATE_NON_SHARED_INC"),
    )
    for wanted, name in optional:
        if wanted:
            flags |= getattr(lv, name)
    return flags


def migration_params(lv, request, throttle=(None, None), post_copy=False):
    """The migrateToURI3 typed parameters; ``throttle`` is auto-converge's (initial %, step %).

    QEMU does not apply the pre-copy bandwidth to post-copy, so the cap is given for both.
    """
    initial, increment = throttle
    optional = (
        ("VIR_MIGRATE_PARAM_BANDWIDTH", request.bandwidth_mib or None),
        ("VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY", (request.bandwidth_mib or None) if post_copy else None),
        ("VIR_MIGRATE_PARAM_URI", request.migrate_uri),
        ("VIR_MIGRATE_PARAM_LISTEN_ADDRESS", request.listen_address),
        ("VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL", initial),
        ("VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT", increment),
        ("VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS", request.parallel_connections),
        ("VIR_MIGRATE_PARAM_COMPRESSION", list(request.compression) or None),
        ("VIR_MIGRATE_PARAM_MIGRATE_DISKS", list(request.migrate_disks) or None),
    )
    return {getattr(lv, name): value for name, value in optional if value is not None}


@dataclass
class PreflightRequest(MigrationRequest):
    """A migration request as preflight checks it: the same options, plus what only preflight asks."""

    measure_dirty_rate: bool = False  # preflight measures only when asked: it takes a second of the guest
    memory_margin_mib: int = 512


def validate_preflight_request(request):
    """What migrate refuses, preflight refuses (``validate_values``), then preflight's own options."""
    validate_values(request)
    if request.memory_margin_mib < 0:
        raise MigrationError(f"memory_margin_mib={request.memory_margin_mib} is negative",
                             fix="give the MiB the destination must keep beyond the guest's memory, e.g. 512")
    return request
