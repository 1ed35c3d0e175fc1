# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small wrapper around one libvirt connection.

One ``Hypervisor`` is one open connection, opened once and closed on exit, so a module makes
exactly the connections it needs (the migration runner needs a second one to the source to
watch the job, because the connection running a managed migration answers nothing useful
until the migration ends). The libvirt binding is passed in, which is how the unit tests
substitute their fake.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import threading
import traceback
from urllib.parse import urlsplit

from ansible_collections.kvm.live_migration.plugins.module_utils.bounded import BoundedCall, CallTimedOut
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError, libvirt_errors
from ansible_collections.kvm.live_migration.plugins.module_utils.features import dotted_version
from ansible_collections.kvm.live_migration.plugins.module_utils.libvirtxml import parse_capabilities

try:
    import libvirt
except ImportError:
    libvirt = None
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()
else:
    LIBVIRT_IMPORT_ERROR = None

_UUID = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.IGNORECASE)
KIB = 1024
_STATE_NAMES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended")


def _discard_libvirt_error(_context, _error):
    """libvirt prints every error to stderr by default; errors reach us as exceptions instead."""


_EVENT_LOOPS = {}  # binding -> the thread that runs its default event loop
# A peer that answers no keepalive for KEEPALIVE_INTERVAL_S x KEEPALIVE_COUNT seconds is declared dead: libvirt then
# closes the connection, and every call blocked on it returns with an error instead of waiting forever.
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 6
OPEN_TIMEOUT_S = 30


def start_event_loop(lv):
    """Run libvirt's default event loop in a daemon thread, once per process and binding.

    libvirt delivers events only to connections opened after the loop was registered.
    """
    if id(lv) in _EVENT_LOOPS:
        return
    lv.virEventRegisterDefaultImpl()

    def run():
        while True:
            lv.virEventRunDefaultImpl()

    thread = threading.Thread(target=run, name="kvmlm-libvirt-events", daemon=True)
    thread.start()
    _EVENT_LOOPS[id(lv)] = thread


# State reasons that say a migration is under way or broke half-way (libvirt's virDomain*Reason names, lower case).
POST_COPY_REASONS = {("running", "postcopy"), ("running", "postcopy_failed"), ("paused", "postcopy"),
                     ("paused", "postcopy_failed")}
INCOMING_REASONS = {("paused", "migration")}


class GuestState:
    """Where a guest is and what it is doing, as one hypervisor sees it: the state and libvirt's reason for it."""

    def __init__(self, name, uuid, state, persistent, reason=None):
        self.name = name
        self.uuid = uuid
        self.state = state
        self.persistent = persistent
        self.reason = reason

    @property
    def running(self):
        return self.state in ("running", "blocked")

    @property
    def paused(self):
        return self.state == "paused"

    @property
    def post_copy(self):
        """In post-copy, or failed in it: neither this copy nor the other one holds all of the guest's memory."""
        return (self.state, self.reason) in POST_COPY_REASONS

    @property
    def post_copy_failed(self):
        """A post-copy that broke (libvirt >= 8.5 keeps it for a resume): not one that still runs."""
        return self.post_copy and self.reason == "postcopy_failed"

    @property
    def migrating(self):
        """Paused by a migration (the source's final copy, or a destination waiting for the memory)."""
        return (self.state, self.reason) in INCOMING_REASONS

    def describe(self):
        """The state, with the reason when it tells of a migration (what a report shows)."""
        return f"{self.state} ({self.reason})" if self.post_copy or self.migrating else self.state

    def as_dict(self):
        return {"name": self.name, "uuid": self.uuid, "state": self.state, "reason": self.reason,
                "persistent": self.persistent}


class Hypervisor:
    """One libvirt connection to one hypervisor. Use as a context manager."""

    # Keepalive starts once a connection is open: before that, a host whose link silently drops packets would hold
    # the open for the kernel's connect timeout (minutes), stretching every budget that opens one again.
    open_timeout_s = OPEN_TIMEOUT_S

    def __init__(self, uri, libvirt_module=None, events=False):
        """``events``: receive domain events on this connection (starts libvirt's event loop)."""
        self.uri = uri
        self.lv = libvirt_module or libvirt
        self.events = events
        self._opening = BoundedCall("opening the connection", self.open_timeout_s)
        self._conn = None
        self._hostname = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *_exc):
        self.close()

    def open(self):
        if self.lv is None:
            raise MigrationError(
                "the Python libvirt binding is not installed on the host running this module",
                fix="pip install libvirt-python (needs libvirt-dev and pkg-config to build) on that host",
            )
        self.lv.registerErrorHandler(_discard_libvirt_error, None)
        start_event_loop(self.lv)  # events need it, and so does keepalive, which every connection gets
        with libvirt_errors(self.lv, f"connecting to libvirt at {self.uri}"):
            try:
                self._conn = self._opening(self.lv.open, self.uri)
            except CallTimedOut as stalled:
                raise MigrationError(f"connecting to libvirt at {self.uri} failed: {stalled}",
                                     fix="check that the host answers on its network (a link that drops packets "
                                         "answers nothing) and that libvirtd runs there") from None
        self._keep_alive()

    def _keep_alive(self):
        try:
            self._conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        except self.lv.libvirtError as error:
            # Only drivers without a remote peer (test:///) lack keepalive: nothing there can stop answering.
            if error.get_error_code() != self.lv.VIR_ERR_NO_SUPPORT:
                raise MigrationError(f"turning keepalive on for {self.uri} failed: {error.get_error_message()}",
                                     fix="check that libvirtd on that host runs and answers") from error

    def close(self):
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        # A daemon that went away (e.g. the host rebooted) leaves nothing to release.
        with contextlib.suppress(self.lv.libvirtError):
            conn.close()

    def alive(self):
        """Whether the connection is open and its peer still answers (keepalive has not given up on it)."""
        if self._conn is None:
            return False
        try:
            return self._conn.isAlive() == 1
        except self.lv.libvirtError:
            return False

    def revive(self):
        """Open the connection again when it died (a cut link, a restarted libvirtd); False while the host does not
        answer."""
        if self.alive():
            return True
        self.close()
        try:
            self.open()
        except MigrationError:
            return False
        return True

    @property
    def conn(self):
        if self._conn is None:
            raise MigrationError(f"no open libvirt connection to {self.uri}", fix="open the Hypervisor before use")
        return self._conn

    def hostname(self):
        if self._hostname is None:
            with libvirt_errors(self.lv, f"asking {self.uri} for its host name"):
                self._hostname = self.conn.getHostname()
        return self._hostname

    def host_uuid(self):
        return self.capabilities().uuid

    def capabilities(self):
        """The host's libvirt capabilities (CPU, UUID, the guests it runs) as a HostCapabilities."""
        with libvirt_errors(self.lv, f"reading the capabilities of {self.uri}"):
            return parse_capabilities(self.conn.getCapabilities())

    def memory(self):
        """{total_bytes, free_bytes, available_bytes} of the whole host.

        getInfo() and getFreeMemory() count NUMA node 0 only; the all-cells statistics count every node.
        """
        with libvirt_errors(self.lv, f"reading the memory of {self.uri}"):
            return memory_facts(self.conn.getMemoryStats(self.lv.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0))

    def versions(self):
        return {key: dotted_version(number) for key, number in self.version_numbers().items()}

    def version_numbers(self):
        """libvirt's and the hypervisor's versions as libvirt encodes them (major * 1,000,000 + ...)."""
        with libvirt_errors(self.lv, f"reading versions from {self.uri}"):
            return {"libvirt": self.conn.getLibVersion(), "hypervisor": self.conn.getVersion()}

    def find_domain(self, name_or_uuid):
        """The domain with this name or UUID, or None when the hypervisor has none."""
        lookup = self.conn.lookupByUUIDString if _UUID.match(name_or_uuid) else self.conn.lookupByName
        try:
            return lookup(name_or_uuid)
        except self.lv.libvirtError as error:
            if error.get_error_code() == self.lv.VIR_ERR_NO_DOMAIN:
                return None
            raise MigrationError(f"looking up guest {name_or_uuid!r} on {self.uri} failed: {error}") from error

    def guest_state(self, name_or_uuid):
        """A GuestState for the guest, or None when this hypervisor does not know it."""
        domain = self.find_domain(name_or_uuid)
        return None if domain is None else self.describe(domain)

    def describe(self, domain):
        """A GuestState for a looked-up domain, or None when it vanished since the lookup."""
        try:
            state, reason = domain.state()
            name = self.state_name(state)
            return GuestState(domain.name(), domain.UUIDString(), name, bool(domain.isPersistent()),
                              self.reason_name(name, reason))
        except self.lv.libvirtError as error:
            # Gone between lookup and state(): a transient guest that just migrated away or stopped.
            if error.get_error_code() == self.lv.VIR_ERR_NO_DOMAIN:
                return None
            raise MigrationError(f"reading the state of {domain.name()!r} on {self.uri} failed: {error}") from error

    def watch_job_completed(self, domain, callback):
        """Call ``callback(stats)`` with the statistics of the domain's next completed job.

        Returns a function that stops watching. The event carries the statistics even when the
        domain is gone from this host afterwards (undefined after migrating away) and when the
        destination keeps none (post-copy).
        """
        return self._watch(domain, "VIR_DOMAIN_EVENT_ID_JOB_COMPLETED",
                           lambda _conn, _domain, stats, _opaque: callback(dict(stats)))

    def watch_migration_iterations(self, domain, callback):
        """Call ``callback(pass)`` as each pass of the domain's outgoing migration begins; returns a stopper."""
        return self._watch(domain, "VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION",
                           lambda _conn, _domain, iteration, _opaque: callback(int(iteration)))

    def _watch(self, domain, event_name, deliver):
        if not self.events:
            raise MigrationError(f"the connection to {self.uri} was opened without events",
                                 fix="open the Hypervisor with events=True")
        with libvirt_errors(self.lv, f"watching the jobs of {domain.name()!r} on {self.uri}"):
            callback_id = self.conn.domainEventRegisterAny(domain, getattr(self.lv, event_name), deliver, None)

        def stop():
            with contextlib.suppress(self.lv.libvirtError):
                self.conn.domainEventDeregisterAny(callback_id)

        return stop

    def active_job(self, domain):
        """The type of the guest's active job (0: none), or None when the guest does not run here."""
        try:
            return domain.jobInfo()[0]
        except self.lv.libvirtError as error:
            if error.get_error_code() in (self.lv.VIR_ERR_NO_DOMAIN, self.lv.VIR_ERR_OPERATION_INVALID):
                return None  # gone, or not running: no job
            raise MigrationError(f"reading the jobs of {domain.name()!r} on {self.uri} failed: {error}") from error

    def reason_name(self, state_name, reason):
        """libvirt's name of a state's reason (``postcopy_failed`` for VIR_DOMAIN_PAUSED_POSTCOPY_FAILED)."""
        prefix = f"VIR_DOMAIN_{state_name.upper()}_"
        for name in dir(self.lv):
            if name.startswith(prefix) and name != f"{prefix}LAST" and getattr(self.lv, name) == reason:
                return name.removeprefix(prefix).lower()
        return f"unknown({reason})"

    def state_name(self, state):
        for name in _STATE_NAMES:
            if getattr(self.lv, f"VIR_DOMAIN_{name.upper()}", None) == state:
                return name
        return f"unknown({state})"


def memory_facts(stats):
    """Bytes from getMemoryStats (KiB): available counts page cache and buffers the kernel can reclaim."""
    total = stats.get("total", 0) * KIB
    free = stats.get("free", 0) * KIB
    reclaimable = (stats.get("buffers", 0) + stats.get("cached", 0)) * KIB
    return {"total_bytes": total, "free_bytes": free, "available_bytes": min(total, free + reclaimable)}


def binding_names(lv):
    """The constants, functions and domain methods the libvirt binding offers (what feature detection reads)."""
    names = set(dir(lv))
    domain_class = getattr(lv, "virDomain", None)
    if domain_class is not None:
        names |= {name for name in dir(domain_class) if not name.startswith("_")}
    return names


def client_versions(libvirt_module=None):
    """Versions of the libvirt binding and client library on this host, for failure reports."""
    lv = libvirt_module or libvirt
    if lv is None:
        return {"libvirt_python": None, "libvirt_client": None}
    try:
        binding = importlib.metadata.version("libvirt-python")
    except importlib.metadata.PackageNotFoundError:
        binding = None  # a distribution package (python3-libvirt) without pip metadata
    return {"libvirt_python": binding, "libvirt_client": dotted_version(lv.getVersion())}


def is_local_uri(uri):
    """Whether a libvirt URI reaches the daemon of the host running the module (it names no host)."""
    return not urlsplit(uri).hostname
