# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The migration runner: move one running guest peer-to-peer and steer it pass by pass.

Before the start the runner detects which convergence features both hosts support and, when
asked, measures the guest's dirty rate to predict whether pre-copy converges and to pick the
starting strategy (``policy.predict``). The source libvirtd then drives the migration
(``migrateToURI3`` with ``VIR_MIGRATE_PEER2PEER``) on one connection while a second connection to
the source reads job statistics every poll, records one timeline entry per pass and applies what
the convergence policy decides (``policy.steer``): raise the downtime limit, rely on QEMU's
throttle, switch to post-copy, or abort. Budgets (time, data sent) abort the job; every abort is
bounded in time and retried. Whatever happens, the runner then asks both hypervisors where the
guest runs and makes sure it runs on exactly one of them.

Time is injected (``clock`` returns seconds, ``wait`` sleeps), so unit tests drive the loop
with a fake clock and a fake libvirt.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import binding_names
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import (
    MigrationError,
    from_libvirt_error,
    libvirt_errors,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.jobstats import JobSample, Timeline, progress
from ansible_collections.kvm.live_migration.plugins.module_utils.policy import (
    MIB,
    Policy,
    Steering,
    detect_features,
    predict,
    steer,
)

TRANSPORTS = ("tls", "ssh", "tcp")
COPY_STORAGE = ("all", "incremental")
COMPRESSION_METHODS = ("xbzrle", "mt", "zlib", "zstd")
MAX_PARALLEL_CONNECTIONS = 255
DIRTY_RATE_SECONDS = 1
DIRTY_RATE_GRACE_S = 5
POST_COPY_SWITCH_TRIES = 5
COMPLETION_EVENT_WAIT_S = 2
# Errors at the start of a migration that mean "this host cannot do that feature": retry without it.
_UNSUPPORTED_AT_START = (
    # libvirt 9 sometimes reports the destination QEMU's refusal only as the peer connection's end.
    ("post_copy", ("postcopy is not supported", "post-copy migration is not supported", "userfaultfd",
                   "end of file while reading data")),
    ("auto_converge", ("auto_converge", "auto-converge")),
)
_FEATURE_FIXES = {
    "post_copy": "set vm.unprivileged_userfaultfd=1 on the destination (QEMU runs as a non-root user), or give it "
                 "libvirt >= 10.1 and QEMU >= 8.1, which use /dev/userfaultfd",
    "auto_converge": "upgrade QEMU/libvirt on both hosts",
}
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

    @property
    def policy(self):
        return Policy(threshold=self.convergence_threshold, stall_passes=self.stall_passes,
                      max_downtime_ms=self.max_downtime_ms, allow_auto_converge=self.allow_auto_converge,
                      allow_post_copy=self.allow_post_copy)


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
    _validate_convergence(request)
    _validate_data_path(request)
    return request


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
    if request.migrate_disks and request.copy_storage is None:
        raise MigrationError(f"migrate_disks={', '.join(request.migrate_disks)} needs copy_storage",
                             fix="set copy_storage: all or incremental, or drop migrate_disks for shared storage")


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
        self.policy = request.policy
        self.lv = source.lv
        self.clock = clock
        self.wait = wait or (lambda seconds, event: event.wait(seconds))
        self.timeline = Timeline()
        self.actions = []
        self.steering = None
        self._started = None
        self._post_copy_tries = 0
        self._steps = []  # the actions of the policy's steps, by step index
        self._pass = 0  # the latest pass seen
        self._completion = (threading.Event(), [])  # the JOB_COMPLETED event's statistics

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
        watched = self.monitor.find_domain(self.request.name)
        memory_bytes = watched.maxMemory() * 1024
        features = self._features()
        result.prediction = self._predict(watched, features, memory_bytes)
        if check_mode:
            result.status, result.owner = "would_migrate", result.source
            result.strategy = result.prediction["strategy"]
            result.actions = self.actions
            return result
        return self._migrate(result, watched, features, memory_bytes)

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

    def _features(self):
        return detect_features(binding_names(self.lv), self.source.version_numbers(),
                               self.destination.version_numbers(), self.request.transport)

    def _predict(self, watched, features, memory_bytes):
        """The prediction from a measured dirty rate (when asked and possible) and the starting strategy."""
        dirty_rate_bps, measured_ms = None, None
        if self.request.measure_dirty_rate and features.dirty_rate:
            started = self.clock()
            dirty_rate_bps = self._measure_dirty_rate(watched)
            measured_ms = int((self.clock() - started) * 1000)
        elif self.request.measure_dirty_rate:
            self._record("measure_skipped", f"dirty rate not measured: {features.reasons['dirty_rate']}")
        prediction = predict(dirty_rate_bps, memory_bytes, self.request.bandwidth_mib * MIB, self.policy, features)
        return {**prediction, "measure_time_ms": measured_ms}

    def _measure_dirty_rate(self, watched):
        """The guest's dirty rate in bytes/s, or None (recorded) when libvirt could not measure it."""
        rate, failure = measure_dirty_rate(self.lv, self.monitor.conn, watched, self.clock, self.wait)
        if failure:
            self._record("measure_failed", failure)
        return rate

    def _migrate(self, result, watched, features, memory_bytes):
        domain = self.source.find_domain(self.request.name)
        timeout_s = self.request.timeout_s or default_timeout_s(memory_bytes)
        while True:
            self.steering = Steering.start(self.policy, features, result.prediction["strategy"])
            with libvirt_errors(self.lv, f"setting the downtime limit of {self.request.name!r}"):
                watched.migrateSetMaxDowntime(self.steering.downtime_limit_ms, 0)
            stop_watching = self._watch_completion(watched)
            self._started = self.clock()
            outcome = self._start(domain, result.prediction)
            self._watch(watched, outcome, timeout_s, memory_bytes)
            unsupported = self._unsupported_at_start(outcome)
            if unsupported is None:
                break
            stop_watching()
            features = features.without(unsupported, outcome.error.get_error_message())
            self._record(f"{unsupported}_unavailable", f"{outcome.error.get_error_message()}; retrying without it "
                                                       f"(to use it: {_FEATURE_FIXES[unsupported]})")
        self._finish(result, watched, outcome)
        stop_watching()
        return result

    def _start(self, domain, prediction):
        outcome = _Outcome()
        rungs = self.steering.rungs
        flags = migration_flags(self.lv, self.request, rungs)
        throttle = ((prediction["throttle_initial_pct"], prediction["throttle_step_pct"])
                    if "auto_converge" in rungs else (None, None))
        params = migration_params(self.lv, self.request, throttle, post_copy="post_copy" in rungs)

        def migrate():
            try:
                domain.migrateToURI3(self.request.dest_uri, params, flags)
            except Exception as error:  # any failure is handed over to the runner's thread and reported there
                outcome.error = error
            finally:
                outcome.finished.set()

        threading.Thread(target=migrate, name="kvmlm-migrate", daemon=True).start()
        return outcome

    def _unsupported_at_start(self, outcome):
        """The feature a failed start says this host pair lacks, when nothing was sent yet."""
        error = outcome.error
        if error is None or not isinstance(error, self.lv.libvirtError) or self.timeline.last is not None:
            return None
        message = (error.get_error_message() or "").lower()
        for feature, patterns in _UNSUPPORTED_AT_START:
            if feature in self.steering.rungs and any(pattern in message for pattern in patterns):
                return feature
        return None

    def _watch(self, watched, outcome, timeout_s, memory_bytes):
        max_data = self.request.max_data_factor * memory_bytes
        while not outcome.finished.is_set():
            sample = self._sample(watched)
            if sample is not None:
                self._pass = max(self._pass, sample.iteration)
                reason = budget_exceeded(sample, timeout_s, max_data, self.request.max_data_factor)
                aborted = self._over_budget(watched, outcome, reason) if reason else False
                aborted = aborted or self._steer(watched, outcome, sample)
                self.timeline.add(sample, self.steering.downtime_limit_ms)  # the limit in force after this sample
                if aborted:
                    return
            self.wait(self.request.poll_interval_s, outcome.finished)

    def _over_budget(self, watched, outcome, reason):
        """Abort a pre-copy migration that exceeded a budget; True when it was aborted."""
        if not self.steering.post_copy:
            self._abort(watched, outcome, reason)
            return True
        if not any(action["what"] == "budget_exceeded" for action in self.actions):
            self._record("budget_exceeded", f"{reason}; post-copy cannot be aborted without losing the guest, so it "
                                            "runs to its end")
        return False

    def _steer(self, watched, outcome, sample):
        """Apply what the policy decides for this sample; True when the migration was aborted."""
        decision = steer(self.steering, sample, self.policy)
        before = self.steering
        self.steering = decision.steering
        for index, helped in decision.verdicts:
            self._judged(index, helped)
        for step in decision.steps:
            if step.what == "abort":
                self._abort(watched, outcome, step.why, step=True)
                return True
            self._record(step.what, step.why, value=step.value, step=True)
            if step.what == "set_downtime":
                self._set_downtime(watched, step.value)
            elif step.what == "post_copy":
                self._switch_to_post_copy(watched, before)
        return False

    def _set_downtime(self, watched, limit_ms):
        try:
            watched.migrateSetMaxDowntime(limit_ms, 0)
        except self.lv.libvirtError as error:
            self._record("set_downtime_failed", f"migrateSetMaxDowntime({limit_ms}) failed: "
                                                f"{error.get_error_message()}")

    def _switch_to_post_copy(self, watched, before):
        try:
            watched.migrateStartPostCopy(0)
        except self.lv.libvirtError as error:
            # Too early in the job, or refused: stay in pre-copy and try again on the next sample.
            self._post_copy_tries += 1
            self.actions.remove(self._steps.pop())
            self.steering = before if self._post_copy_tries < POST_COPY_SWITCH_TRIES else \
                before.without_rung("post_copy")
            if self._post_copy_tries == POST_COPY_SWITCH_TRIES:
                self._record("post_copy_failed", f"migrateStartPostCopy failed {POST_COPY_SWITCH_TRIES} times: "
                                                 f"{error.get_error_message()}")

    def _sample(self, watched):
        try:
            stats = watched.jobStats()
        except self.lv.libvirtError:
            # The guest left the source between the check and the call: the job is ending.
            return None
        if stats.get("type") in (None, self.lv.VIR_DOMAIN_JOB_NONE):
            return None
        return JobSample.from_stats(stats, self._elapsed_ms())

    def _abort(self, watched, outcome, reason, step=False):
        self._record("abort", reason, step=step)
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
        result.strategy = self.steering.strategy
        aborted = any(action["what"] == "abort" for action in self.actions)
        completed = outcome.finished.is_set() and outcome.error is None
        for pending in self.steering.pending:
            self._judged(pending.index, completed)
        if completed:
            result.status = "completed"
            stats = self._completed_event_stats() or self._completed_stats(self.destination)
            self._apply_completed_stats(result, stats)
        else:
            result.status = "aborted" if aborted else "failed"
            if outcome.error is not None and not aborted:
                result.error = self._describe_error(outcome.error)
            self._apply_completed_stats(result, self._completed_stats(self.monitor))
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

    def _watch_completion(self, watched):
        """Catch the source's JOB_COMPLETED event: after post-copy the destination keeps no statistics."""
        self._completion = (threading.Event(), [])
        if not self.monitor.events:
            return lambda: None
        ready, stats = self._completion

        def completed(values):
            stats.append(values)
            ready.set()

        return self.monitor.watch_job_completed(watched, completed)

    def _completed_event_stats(self):
        ready, stats = self._completion
        if self.monitor.events:
            self.wait(COMPLETION_EVENT_WAIT_S, ready)  # the event may trail migrateToURI3's return a little
        return stats[-1] if stats else None

    def _completed_stats(self, hypervisor):
        """The completed job's statistics as ``hypervisor`` keeps them, or None."""
        domain = hypervisor.find_domain(self.request.name)
        return None if domain is None else completed_job_stats(self.lv, domain)

    def _apply_completed_stats(self, result, stats):
        if not stats:
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
        if self.steering.post_copy and result.status != "completed" and not destination_runs:
            raise MigrationError(
                f"post-copy of {self.request.name!r} failed after the switch: the destination ran the guest, so "
                f"neither host holds all of its memory (source: {_describe(on_source)}, destination: "
                f"{_describe(on_destination)})",
                fix="once both hosts reach each other again, recover with 'virsh migrate --postcopy "
                    "--postcopy-resume' on the source; do not resume the source copy, its memory is out of date")
        if source_runs and destination_runs and self.steering.post_copy:
            raise MigrationError(f"guest {self.request.name!r} runs on both hosts after post-copy",
                                 fix=f"the copy on {result.destination} is current: stop the one on {result.source}")
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
        return 0 if self._started is None else int((self.clock() - self._started) * 1000)

    def _record(self, what, why, value=None, step=False):
        """Append an action to the result; ``step`` marks one the policy decided (its verdict comes later)."""
        action = {"pass": self._pass, "time_ms": self._elapsed_ms(), "what": what, "why": why,
                  "value": value, "helped": None}
        self.actions.append(action)
        if step:
            self._steps.append(action)
        return action

    def _judged(self, index, helped):
        self._steps[index]["helped"] = helped


def measure_dirty_rate(lv, conn, domain, clock, wait):
    """(bytes/s, None) measured by QEMU over DIRTY_RATE_SECONDS, or (None, why) when libvirt could not.

    ``wait(seconds, event)`` sleeps; ``clock()`` reads monotonic seconds (both injected for tests).
    """
    idle = threading.Event()
    try:
        domain.startDirtyRateCalc(DIRTY_RATE_SECONDS, 0)
        deadline = clock() + DIRTY_RATE_SECONDS + DIRTY_RATE_GRACE_S
        wait(DIRTY_RATE_SECONDS, idle)
        while True:
            stats = conn.domainListGetStats([domain], lv.VIR_DOMAIN_STATS_DIRTYRATE, 0)[0][1]
            if stats.get("dirtyrate.calc_status") == lv.VIR_DOMAIN_DIRTYRATE_MEASURED:
                return int(stats.get("dirtyrate.megabytes_per_second", 0)) * MIB, None
            if clock() >= deadline:
                return None, "libvirt did not finish measuring the dirty rate in time"
            wait(0.1, idle)
    except lv.libvirtError as error:
        return None, f"measuring the dirty rate failed: {error.get_error_message()}"


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
    return {"active": False}, completed_job_stats(lv, domain)


def completed_job_stats(lv, domain):
    """The statistics of the domain's last completed job, or None when libvirt keeps none."""
    try:
        stats = domain.jobStats(lv.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except lv.libvirtError:
        return None  # this libvirt keeps no completed statistics for the guest
    return None if not stats or stats.get("type") in (None, lv.VIR_DOMAIN_JOB_NONE) else stats
