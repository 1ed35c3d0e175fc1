# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The migration runner: move one running guest peer-to-peer and watch it pass by pass.

The source libvirtd drives the migration (``migrateToURI3`` with ``VIR_MIGRATE_PEER2PEER``) on
one connection while a second connection to the source reads job statistics every poll and
records one timeline entry per pass. Budgets (time, data sent) abort the job; every abort is
bounded in time and retried. Whatever happens, the runner then asks both hypervisors where the
guest runs and makes sure it runs on exactly one of them.

Time is injected (``clock`` returns seconds, ``wait`` sleeps), so unit tests drive the loop
with a fake clock and a fake libvirt.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ansible_collections.kvm.live_migration.plugins.module_utils.errors import (
    MigrationError,
    from_libvirt_error,
    libvirt_errors,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.jobstats import JobSample, Timeline, progress

TRANSPORTS = ("tls", "ssh", "tcp")
GIB = 1024**3
MIN_TIMEOUT_S = 60
TIMEOUT_S_PER_GIB = 150
ABORT_TIMEOUT_S = 30
ABORT_RETRY_S = 2.0


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
    poll_interval_s: float = 0.5


@dataclass
class MigrationResult:
    status: str
    owner: str | None
    source: str
    destination: str
    strategy: str = "precopy"
    actions: list = field(default_factory=list)
    total_time_ms: int | None = None
    downtime_ms: int | None = None
    downtime_net_ms: int | None = None
    setup_time_ms: int | None = None
    data_sent_bytes: int | None = None
    data_total_bytes: int | None = None
    passes: int | None = None
    final_ratio: float | None = None
    prediction: dict | None = None
    timeline: list = field(default_factory=list)
    error: dict | None = None

    @property
    def changed(self):
        return self.status != "already_migrated"

    def as_dict(self):
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def validate_request(request):
    """Raise MigrationError naming the bad value and the fix; return the request unchanged."""
    if request.transport not in TRANSPORTS:
        raise MigrationError(f"transport={request.transport!r} is not one of {', '.join(TRANSPORTS)}",
                             fix="use transport: tls (QEMU native TLS), ssh (tunnelled) or tcp")
    if request.transport == "tcp" and not request.allow_insecure:
        raise MigrationError(
            "transport=tcp sends the guest's memory across the network unencrypted",
            fix="use transport: tls or ssh, or set allow_insecure: true on a trusted, isolated migration network",
        )
    if request.max_downtime_ms <= 0:
        raise MigrationError(f"max_downtime_ms={request.max_downtime_ms} must be positive",
                             fix="give the longest pause the guest may see, in milliseconds (e.g. 500)")
    if request.bandwidth_mib < 0:
        raise MigrationError(f"bandwidth={request.bandwidth_mib} must be 0 (no cap) or a positive MiB/s",
                             fix="set bandwidth to the MiB/s the migration may use, or 0")
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
    return request


def default_timeout_s(memory_bytes):
    """The completion budget when the user gives none: 150 s per GiB of guest RAM, at least 60 s."""
    return max(MIN_TIMEOUT_S, int(TIMEOUT_S_PER_GIB * memory_bytes / GIB))


def migration_flags(lv, request):
    flags = lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PEER2PEER | lv.VIR_MIGRATE_ABORT_ON_ERROR
    if request.persistent:
        flags |= lv.VIR_MIGRATE_PERSIST_DEST
    if request.undefine_source:
        flags |= lv.VIR_MIGRATE_UNDEFINE_SOURCE
    if request.transport == "ssh":
        flags |= lv.VIR_MIGRATE_TUNNELLED
    elif request.transport == "tls":
        flags |= lv.VIR_MIGRATE_TLS
    return flags


def migration_params(lv, request):
    params = {}
    if request.bandwidth_mib:
        params[lv.VIR_MIGRATE_PARAM_BANDWIDTH] = request.bandwidth_mib
    if request.migrate_uri:
        params[lv.VIR_MIGRATE_PARAM_URI] = request.migrate_uri
    if request.listen_address:
        params[lv.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = request.listen_address
    return params


class _Outcome:
    """What the thread running migrateToURI3 leaves behind."""

    def __init__(self):
        self.finished = threading.Event()
        self.error = None


class MigrationRunner:
    """Runs one live migration; ``run()`` returns a MigrationResult."""

    def __init__(self, source, monitor, destination, request, clock=time.monotonic, wait=None):
        """``source`` and ``monitor`` are two open Hypervisors on the source, ``destination`` one on the
        destination. ``wait(seconds, event)`` sleeps at most ``seconds`` or until ``event`` is set."""
        self.source = source
        self.monitor = monitor
        self.destination = destination
        self.request = request
        self.lv = source.lv
        self.clock = clock
        self.wait = wait or (lambda seconds, event: event.wait(seconds))
        self.timeline = Timeline()
        self.actions = []
        self._started = None

    # -- public -----------------------------------------------------------------------------

    def run(self, check_mode=False):
        validate_request(self.request)
        result = self._new_result()
        placement = self._placement()
        if placement == "destination":
            result.status, result.owner = "already_migrated", result.destination
            return result
        if placement != "source":
            raise MigrationError(placement)
        if check_mode:
            result.status, result.owner = "would_migrate", result.source
            return result
        return self._migrate(result)

    # -- phases -----------------------------------------------------------------------------

    def _new_result(self):
        return MigrationResult(status="pending", owner=None, source=self.source.hostname(),
                               destination=self.destination.hostname())

    def _placement(self):
        """'source', 'destination', or a message explaining why neither can be acted on."""
        name = self.request.name
        host_uuid = self.source.host_uuid()
        if host_uuid == self.destination.host_uuid():
            return (f"source {self.source.uri} and destination {self.destination.uri} report the same host UUID "
                    f"{host_uuid}: they are the same host, or host_uuid is duplicated; give each hypervisor a "
                    "unique host_uuid in libvirtd.conf")
        on_source = self.source.guest_state(name)
        on_destination = self.destination.guest_state(name)
        if on_source and on_source.running:
            if on_destination and on_destination.running:
                return (f"guest {name!r} runs on both {self.source.hostname()} and {self.destination.hostname()}; "
                        "stop the copy that must not run before migrating")
            return "source"
        if on_destination and on_destination.running:
            return "destination"
        if on_source:
            return (f"guest {name!r} is {on_source.state} on {self.source.hostname()}; a live migration needs a "
                    "running guest (start or resume it first)")
        return (f"guest {name!r} was found on neither {self.source.hostname()} nor "
                f"{self.destination.hostname()}; check the name or UUID with 'virsh list --all'")

    def _migrate(self, result):
        domain = self.source.find_domain(self.request.name)
        watched = self.monitor.find_domain(self.request.name)
        memory_bytes = domain.maxMemory() * 1024
        timeout_s = self.request.timeout_s or default_timeout_s(memory_bytes)
        with libvirt_errors(self.lv, f"setting the downtime limit of {self.request.name!r}"):
            watched.migrateSetMaxDowntime(self.request.max_downtime_ms, 0)
        self._started = self.clock()
        outcome = self._start(domain)
        self._watch(watched, outcome, timeout_s, memory_bytes)
        self._finish(result, watched, outcome)
        return result

    def _start(self, domain):
        outcome = _Outcome()
        flags = migration_flags(self.lv, self.request)
        params = migration_params(self.lv, self.request)

        def migrate():
            try:
                domain.migrateToURI3(self.request.dest_uri, params, flags)
            except Exception as error:  # any failure is handed over to the runner's thread and reported there
                outcome.error = error
            finally:
                outcome.finished.set()

        threading.Thread(target=migrate, name="kvmlm-migrate", daemon=True).start()
        return outcome

    def _watch(self, watched, outcome, timeout_s, memory_bytes):
        max_data = self.request.max_data_factor * memory_bytes
        while not outcome.finished.is_set():
            sample = self._sample(watched)
            if sample is not None:
                self.timeline.add(sample, self.request.max_downtime_ms)
                reason = budget_exceeded(sample, timeout_s, max_data, self.request.max_data_factor)
                if reason:
                    self._abort(watched, outcome, reason)
                    return
            self.wait(self.request.poll_interval_s, outcome.finished)

    def _sample(self, watched):
        try:
            stats = watched.jobStats()
        except self.lv.libvirtError:
            # The guest left the source between the check and the call: the job is ending.
            return None
        if stats.get("type") in (None, self.lv.VIR_DOMAIN_JOB_NONE):
            return None
        return JobSample.from_stats(stats, self._elapsed_ms())

    def _abort(self, watched, outcome, reason):
        self._record("abort", reason)
        deadline = self.clock() + ABORT_TIMEOUT_S
        while not outcome.finished.is_set() and self.clock() < deadline:
            try:
                watched.abortJob()
            except self.lv.libvirtError as error:
                if error.get_error_code() == self.lv.VIR_ERR_OPERATION_INVALID:
                    break  # no job left to abort: the migration already ended
                self._record("abort_retry", f"abortJob failed: {error.get_error_message()}")
            self.wait(ABORT_RETRY_S, outcome.finished)
        self.wait(max(0.0, deadline - self.clock()), outcome.finished)  # the rest of the same ABORT_TIMEOUT_S
        if not outcome.finished.is_set():
            self._record("abort_timeout", f"the migration job did not end within {ABORT_TIMEOUT_S} s of the abort")

    def _finish(self, result, watched, outcome):
        result.actions = self.actions
        result.timeline = self.timeline.entries()
        result.passes = self.timeline.last.iteration if self.timeline.last else None
        result.final_ratio = self.timeline.last.rounded_ratio if self.timeline.last else None
        aborted = any(action["what"] == "abort" for action in self.actions)
        if outcome.finished.is_set() and outcome.error is None:
            result.status = "completed"
            self._apply_completed_stats(result, self.destination)
        else:
            result.status = "aborted" if aborted else "failed"
            if outcome.error is not None and not aborted:
                result.error = self._describe_error(outcome.error)
            self._apply_completed_stats(result, self.monitor)
        result.total_time_ms = result.total_time_ms or self._elapsed_ms()
        if result.data_sent_bytes is None and self.timeline.last:
            result.data_sent_bytes = self.timeline.last.processed_bytes
            result.data_total_bytes = self.timeline.last.total_bytes
        if not outcome.finished.is_set():
            # The job outlived its bounded abort: report where the guest is, but touch nothing.
            result.status = "failed"
            result.owner = self.monitor.hostname()
            return
        result.owner = self._settle_owner(result)

    def _describe_error(self, error):
        if isinstance(error, self.lv.libvirtError):
            return from_libvirt_error(self.lv, error, "the migration").as_dict()
        return MigrationError(f"the migration call raised {type(error).__name__}: {error}",
                              fix="report this as a bug of kvm.live_migration, with the versions").as_dict()

    def _apply_completed_stats(self, result, hypervisor):
        """Copy the completed job's statistics (the destination keeps them after success)."""
        domain = hypervisor.find_domain(self.request.name)
        if domain is None:
            return
        try:
            stats = domain.jobStats(self.lv.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except self.lv.libvirtError:
            return
        if stats.get("type") in (None, self.lv.VIR_DOMAIN_JOB_NONE):
            return
        result.total_time_ms = stats.get("time_elapsed")
        result.downtime_ms = stats.get("downtime")
        result.downtime_net_ms = stats.get("downtime_net")
        result.setup_time_ms = stats.get("setup_time")
        result.data_sent_bytes = stats.get("data_processed", stats.get("memory_processed"))
        result.data_total_bytes = stats.get("data_total", stats.get("memory_total"))
        result.passes = stats.get("memory_iteration", result.passes)

    def _settle_owner(self, result):
        """Make sure exactly one hypervisor runs the guest and return its host name."""
        on_source = self.monitor.guest_state(self.request.name)
        on_destination = self.destination.guest_state(self.request.name)
        source_runs = bool(on_source and on_source.running)
        destination_runs = bool(on_destination and on_destination.running)
        if source_runs and destination_runs:
            if result.status == "completed":
                raise MigrationError(f"guest {self.request.name!r} runs on both hosts after a completed migration",
                                     fix=f"stop the copy on {result.source} by hand after checking which is current")
            self._destroy_incomplete_copy()
            destination_runs = False
        if source_runs:
            return result.source
        if destination_runs:
            return result.destination
        return self._resume_paused(result, on_source, on_destination)

    def _destroy_incomplete_copy(self):
        domain = self.destination.find_domain(self.request.name)
        self._record("destroy_destination_copy", "the migration did not complete but a copy runs on the destination")
        with libvirt_errors(self.lv, f"stopping the incomplete copy of {self.request.name!r} on the destination"):
            domain.destroy()

    def _resume_paused(self, result, on_source, on_destination):
        """Neither side runs the guest: resume the side that holds the complete copy."""
        completed = result.status == "completed"
        hypervisor, state, host = ((self.destination, on_destination, result.destination) if completed
                                   else (self.monitor, on_source, result.source))
        if state is None or not state.paused:
            raise MigrationError(
                f"guest {self.request.name!r} runs on neither host after the migration "
                f"(source: {_describe(on_source)}, destination: {_describe(on_destination)})",
                fix=f"start it on {host}, where its last complete copy is",
            )
        self._record("resume", f"the guest was left paused on {host}")
        with libvirt_errors(self.lv, f"resuming {self.request.name!r} on {host}"):
            hypervisor.find_domain(self.request.name).resume()
        return host

    # -- helpers ----------------------------------------------------------------------------

    def _elapsed_ms(self):
        return int((self.clock() - self._started) * 1000)

    def _record(self, what, why):
        last = self.timeline.last
        self.actions.append({"pass": last.iteration if last else 0, "time_ms": self._elapsed_ms(), "what": what,
                             "why": why, "helped": None})


def budget_exceeded(sample, timeout_s, max_data_bytes, max_data_factor):
    """Why the migration must stop now, or None while it is within its budgets."""
    if sample.time_ms > timeout_s * 1000:
        return f"the migration ran longer than its timeout of {timeout_s} s"
    if sample.processed_bytes > max_data_bytes:
        return (f"{sample.processed_bytes} bytes sent, more than max_data_factor={max_data_factor} times "
                "the guest's memory")
    return None


def _describe(state):
    return "absent" if state is None else state.state


def read_job(hypervisor, name):
    """(live progress, completed statistics or None) of the guest's job on ``hypervisor``."""
    lv = hypervisor.lv
    domain = hypervisor.find_domain(name)
    state = None if domain is None else hypervisor.describe(domain)
    if state is None:
        raise MigrationError(f"guest {name!r} is not on {hypervisor.uri}",
                             fix="query the hypervisor that runs the guest (the migration's source)")
    if not (state.running or state.paused):
        return {"active": False}, None  # a stopped guest has no job, and libvirt refuses to read one
    with libvirt_errors(lv, f"reading the job statistics of {name!r}"):
        stats = domain.jobStats()
    if stats.get("type") not in (None, lv.VIR_DOMAIN_JOB_NONE):
        return {"active": True, **progress(JobSample.from_stats(stats, stats.get("time_elapsed") or 0))}, None
    try:
        completed = domain.jobStats(lv.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except lv.libvirtError:
        completed = None  # this libvirt keeps no completed statistics for the guest
    if not completed or completed.get("type") in (None, lv.VIR_DOMAIN_JOB_NONE):
        completed = None
    return {"active": False}, completed
