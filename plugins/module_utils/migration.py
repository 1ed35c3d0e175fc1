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

import itertools
import threading
import time

from ansible_collections.kvm.live_migration.plugins.module_utils.bounded import BoundedCall, CallTimedOut
from ansible_collections.kvm.live_migration.plugins.module_utils.connection import (
    GuestState,
    Hypervisor,
    binding_names,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import (
    MigrationError,
    from_libvirt_error,
    libvirt_errors,
    post_copy_refusal_fix,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.features import detect_features
from ansible_collections.kvm.live_migration.plugins.module_utils.jobs import completed_job_stats, measure_dirty_rate
from ansible_collections.kvm.live_migration.plugins.module_utils.jobstats import JobSample, Timeline, progress
from ansible_collections.kvm.live_migration.plugins.module_utils.libvirtxml import parse_guest
from ansible_collections.kvm.live_migration.plugins.module_utils.ownership import (
    BROKEN_POST_COPY,
    Ownership,
    describe,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.policy import (
    Steering,
    predict,
    steer,
    throttle_hold_text,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.request import (
    default_timeout_s,
    migration_flags,
    migration_params,
    validate_request,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.result import MigrationResult
from ansible_collections.kvm.live_migration.plugins.module_utils.units import KIB, MIB

POST_COPY_SWITCH_TRIES = 5
COMPLETION_EVENT_WAIT_S = 2
# Errors at the start of a migration that mean "this host cannot do that feature": retry without it.
_UNSUPPORTED_AT_START = (
    # libvirt 9 sometimes reports the destination QEMU's refusal only as the peer connection's end.
    ("post_copy", ("postcopy is not supported", "post-copy migration is not supported", "userfaultfd",
                   "end of file while reading data")),
    ("auto_converge", ("auto_converge", "auto-converge")),
)
_AUTO_CONVERGE_FIX = "upgrade QEMU/libvirt on both hosts"
ABORT_TIMEOUT_S = 30
ABORT_RETRY_S = 2.0
# A statistics or abort call that libvirt has not answered in this long waits on the guest's QEMU monitor (libvirt's
# own wait for a busy monitor is 30 s): the runner goes on by the clock.
STALLED_CALL_S = 45
# Post-copy needs room on the destination for everything still on the source, and this much more.
POST_COPY_MEMORY_MARGIN = 256 * MIB
POST_COPY_RECOVERY_RETRY_S = 5.0
EOF_AT_START = "end of file while reading data"


class _Outcome:
    """What the thread running migrateToURI3 leaves behind; or, with ``gone`` (a function that reads libvirt), a job
    whose call already returned and which has ended once ``gone()`` says so."""

    def __init__(self, gone=None):
        self.finished = threading.Event()
        self.error = None
        self._gone = gone

    def ended(self):
        if not self.finished.is_set() and self._gone is not None and self._gone():
            self.finished.set()
        return self.finished.is_set()


class MigrationRunner:
    """Runs one live migration; ``run()`` returns a MigrationResult."""

    call_timeout_s = STALLED_CALL_S  # how long a statistics or abort call may take before the runner goes on

    def __init__(self, source, monitor, destination, request, clock=time.monotonic, wait=None):
        """``source`` and ``monitor`` are two open Hypervisors on the source, ``destination`` one on the
        destination. ``wait(seconds, event)`` sleeps at most ``seconds`` or until ``event`` is set.
        Set ``on_progress(fields)`` to receive each sample's progress (``jobstats.progress``, with the strategy)."""
        self.on_progress = None
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
        self._pass_started_ms = {}  # pass -> when its MIGRATION_ITERATION event came
        self._migrating = None  # the domain on the migrating connection, once the migration started
        self._memory_bytes = None
        self.features = None  # what both hosts support (detect_features), read before anything moves
        self._stats_call = BoundedCall("jobStats", self.call_timeout_s)
        self._abort_call = BoundedCall("abortJob", self.call_timeout_s)
        self.ownership = Ownership(request.name, monitor, destination, self._record, source_fallback=source,
                                   resume_options="--tls" if request.transport == "tls" else "")

    # -- public -----------------------------------------------------------------------------

    def run(self, check_mode=False):
        validate_request(self.request)
        result = self._new_result()
        placement = self.ownership.placement()
        result.hosts = dict(self.ownership.shown)
        if placement == "destination":
            result.status, result.owner = "already_migrated", result.destination
            return result
        if placement == BROKEN_POST_COPY:
            return self._resume_broken_post_copy(result, check_mode)
        if placement != "source":
            raise MigrationError(placement)
        watched = self.monitor.find_domain(self.request.name)
        memory_bytes = watched.maxMemory() * KIB
        self._memory_bytes = memory_bytes
        self._check_disk_targets(watched)
        features = self.features = self._features()
        self._record_dropped_permissions(features)
        result.prediction = self._predict(watched, features, memory_bytes)
        if check_mode:
            result.status, result.owner = "would_migrate", result.source
            result.strategy = result.prediction["strategy"]
            result.actions = self.actions
            return result
        try:
            return self._migrate(result, watched, features, memory_bytes)
        except MigrationError as error:
            raise self._with_result(error, result) from None

    # -- phases -----------------------------------------------------------------------------

    def _new_result(self):
        return MigrationResult(status="pending", owner=None, source=self.source.hostname(),
                               destination=self.destination.hostname(), transport=self.request.transport)

    def _features(self):
        return detect_features(binding_names(self.lv), self.source.version_numbers(),
                               self.destination.version_numbers(), self.request.transport)

    def _check_disk_targets(self, watched):
        """migrate_disks names only disks the guest has (checked against its definition before anything moves)."""
        if not self.request.migrate_disks:
            return
        with libvirt_errors(self.lv, f"reading {self.request.name!r}'s definition"):
            targets = {disk.target for disk in parse_guest(watched.XMLDesc(0)).disks}
        unknown = [target for target in self.request.migrate_disks if target not in targets]
        if unknown:
            raise MigrationError(f"migrate_disks={', '.join(unknown)}: {self.request.name} has no such disk "
                                 f"(its disks: {', '.join(sorted(targets)) or 'none'})",
                                 fix="name the guest's own disk targets, as 'virsh domblklist' lists them")

    def _record_dropped_permissions(self, features):
        """A permission this pair of hosts cannot honour is recorded as dropped, never ignored silently."""
        for feature, permitted in (("post_copy", self.request.allow_post_copy),
                                   ("auto_converge", self.request.allow_auto_converge)):
            if permitted and not getattr(features, feature):
                self._record(f"{feature}_unavailable", f"allow_{feature}=true is dropped: {features.reasons[feature]}")
        if self.request.allow_post_copy and features.post_copy and not features.post_copy_recovery:
            self._record("post_copy_recovery_unavailable", "a post-copy that breaks (a cut link, a host that stops "
                                                           "answering) cannot be resumed: "
                                                           f"{features.reasons['post_copy_recovery']}")

    def _resume_broken_post_copy(self, result, check_mode):
        """This guest's post-copy broke before this run, and libvirt keeps it for a resume: resume it, start nothing."""
        self.features = self._features()
        self._record("post_copy_found_broken", f"a post-copy of the guest broke before this run "
                                               f"({self.ownership.shown_text()}); it is resumed, nothing is started")
        result.strategy = "post_copy"
        if check_mode:
            result.status, result.owner, result.actions = "would_resume", "unknown", self.actions
            return result
        domain = self.source.find_domain(self.request.name)
        self._started = self.clock()
        result.status = "failed"
        try:
            self._recover_post_copy(result, domain)
            result.owner = self.ownership.settle(result, True)
        except MigrationError as error:
            raise self._with_result(error, result) from None
        finally:
            result.hosts = dict(self.ownership.shown)
            result.actions = self.actions
            result.total_time_ms = self._elapsed_ms()
        return result

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
        self._migrating = domain
        timeout_s = self.request.timeout_s or default_timeout_s(memory_bytes)
        while True:
            self.steering = Steering.start(self.policy, features, result.prediction["strategy"])
            with libvirt_errors(self.lv, f"setting the downtime limit of {self.request.name!r}"):
                watched.migrateSetMaxDowntime(self.steering.downtime_limit_ms, 0)
            stop_watching = self._watch_events(watched)
            self._started = self.clock()
            outcome = self._start(domain, result.prediction)
            self._watch(watched, outcome, timeout_s, memory_bytes)
            outcome = self._follow_a_job_that_outlived_its_call(watched, outcome, timeout_s, memory_bytes)
            unsupported = self._unsupported_at_start(outcome)
            if unsupported is None:
                break
            stop_watching()
            message = outcome.error.get_error_message()
            features = features.without(unsupported, message)
            self._record(f"{unsupported}_unavailable", f"{message}; retrying without it "
                                                       f"(to use it: {self._feature_fix(unsupported, message)})")
        self._finish(result, watched, outcome, domain)
        stop_watching()
        return result

    def _feature_fix(self, feature, message):
        """What makes ``feature`` usable again: for post-copy it depends on what the destination said (an end of
        file says nothing of the cause, which is then in the destination's QEMU log)."""
        if feature == "post_copy":
            return post_copy_refusal_fix(message, self.request.name)
        return _AUTO_CONVERGE_FIX

    def _start(self, domain, prediction):
        outcome = _Outcome()
        rungs = self.steering.rungs
        flags = migration_flags(self.lv, self.request, rungs)
        throttle = ((prediction["throttle_initial_pct"], prediction["throttle_step_pct"])
                    if "auto_converge" in rungs else (None, None))
        params = migration_params(self.lv, self.request, throttle, post_copy="post_copy" in rungs)
        self._run_migration_call(domain, params, flags, outcome)
        return outcome

    def _run_migration_call(self, domain, params, flags, outcome):
        """migrateToURI3 in a thread of its own (it blocks until the job ends); ``outcome`` says when and how."""

        def migrate():
            try:
                domain.migrateToURI3(self.request.dest_uri, params, flags)
            except Exception as error:  # any failure is handed over to the runner's thread and reported there
                outcome.error = error
            finally:
                outcome.finished.set()

        threading.Thread(target=migrate, name="kvmlm-migrate", daemon=True).start()

    def _unsupported_at_start(self, outcome):
        """The feature a failed start says this host pair lacks, when nothing was sent yet."""
        error = outcome.error
        if error is None or not isinstance(error, self.lv.libvirtError) or self.timeline.last is not None:
            return None
        message = (error.get_error_message() or "").lower()
        for feature, patterns in _UNSUPPORTED_AT_START:
            if feature in self.steering.rungs and any(pattern in message for pattern in patterns):
                # The peer connection's end means a refusal only while the destination still answers.
                if EOF_AT_START in message and not self._destination_answers():
                    return None
                return feature
        return None

    def _destination_answers(self):
        try:
            self.destination.conn.getLibVersion()
        except self.lv.libvirtError:
            return False
        return True

    def _follow_a_job_that_outlived_its_call(self, watched, outcome, timeout_s, memory_bytes):
        """migrateToURI3 returned an error, yet libvirt still runs the peer-to-peer job: the client's connection
        broke (a blip, a keepalive false alarm), not the migration. The job is watched on through the monitor's
        connection under the same budgets, and how it ended is read from libvirt."""
        if outcome.error is None or self.timeline.last is None or self.source.alive():
            return outcome  # the call's own connection lives: its error is the migration's
        returned = self._describe_error(outcome.error)["message"]
        if self._job_active(watched):
            self._record("job_outlived_its_call", f"the migration call returned '{returned}' as its connection "
                                                  "broke, but libvirt still runs the job: it is watched on to its end")
            followed = _Outcome(gone=lambda: not self._job_active(watched))
            self._watch(watched, followed, timeout_s, memory_bytes)
            followed.error = outcome.error
            outcome = followed
        if outcome.ended() and self._arrived():
            self._record("completed_unheard", f"the migration call returned '{returned}' as its connection broke, "
                                              "and libvirt shows the guest running on the destination only: the "
                                              "migration completed")
            outcome.error = None
        return outcome

    def _job_active(self, watched):
        try:
            return bool(self.monitor.active_job(watched))
        except MigrationError:
            return False  # the monitor cannot tell either: the ownership check reads both hosts

    def _arrived(self):
        """Libvirt shows the guest running on the destination only, past any post-copy."""
        on_source, on_destination = self.ownership.look()
        return (isinstance(on_destination, GuestState) and on_destination.running and not on_destination.post_copy
                and not (isinstance(on_source, GuestState) and on_source.running))

    def _watch(self, watched, outcome, timeout_s, memory_bytes):
        max_data = self.request.max_data_factor * memory_bytes
        while not outcome.ended():
            sample = self._sample(watched)
            if sample is None:
                # No statistics (the monitor lost its connection, or the job is between states): the clock still
                # holds the time budget.
                if self._elapsed_ms() > timeout_s * 1000 and self._over_budget(
                        watched, outcome, f"the migration ran longer than its timeout of {timeout_s} s (without job "
                                          "statistics at the end)"):
                    return
            else:
                self._pass = max(self._pass, sample.iteration)
                reason = budget_exceeded(sample, timeout_s, max_data, self.request.max_data_factor)
                aborted = self._over_budget(watched, outcome, reason) if reason else False
                aborted = aborted or self._steer(watched, outcome, sample)
                self.timeline.add(sample, self.steering.downtime_limit_ms)  # the limit in force after this sample
                if self.on_progress is not None:
                    self.on_progress({**progress(sample), "strategy": self.steering.strategy})
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
        shortfall = self._post_copy_room()
        if shortfall:
            self.actions.remove(self._steps.pop())
            self.steering = before.without_rung("post_copy")
            self._record("post_copy_refused", f"{shortfall}; staying in pre-copy, which leaves the source's copy whole")
            return
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

    def _post_copy_room(self):
        """Why the destination cannot take the rest of the guest in post-copy (None when it can): in post-copy a
        destination that runs out of memory loses the guest, as no host then holds all of it."""
        needed = (self.timeline.last.remaining_bytes if self.timeline.last else self._memory_bytes) \
            + POST_COPY_MEMORY_MARGIN
        try:
            available = self.destination.memory()["available_bytes"]
        except MigrationError as error:
            return f"the destination's free memory could not be read ({error})"
        if available < needed:
            return (f"{self.destination.hostname()} has {available // MIB} MiB available, post-copy needs "
                    f"{needed // MIB} MiB (what is left to send and {POST_COPY_MEMORY_MARGIN // MIB} MiB more)")
        return None

    def _sample(self, watched):
        try:
            stats = self._stats_call(watched.jobStats)
        except CallTimedOut as stalled:
            if not any(action["what"] == "statistics_stalled" for action in self.actions):
                self._record("statistics_stalled", f"{stalled}: libvirt waits on the guest's QEMU (a hung monitor); "
                                                   "the time budget holds by the clock")
            return None
        except self.lv.libvirtError:
            # The guest left the source between the check and the call: the job is ending.
            return None
        if stats.get("type") in (None, self.lv.VIR_DOMAIN_JOB_NONE):
            return None
        return JobSample.from_stats(stats, self._elapsed_ms())

    def _abort(self, watched, outcome, reason, step=False):
        self._record("abort", reason, step=step)
        deadline = self.clock() + ABORT_TIMEOUT_S
        # Through the monitor first, then through the migrating connection should the monitor's have died.
        handles = itertools.cycle([watched, self._migrating or watched])
        aborting = True
        while not outcome.ended() and self.clock() < deadline:
            if aborting and not self._abort_call.stalled:
                try:
                    self._abort_call(next(handles).abortJob)
                except CallTimedOut as stalled:
                    self._record("abort_retry", f"{stalled}: libvirt waits on the guest's QEMU")
                except self.lv.libvirtError as error:
                    if error.get_error_code() == self.lv.VIR_ERR_OPERATION_INVALID:
                        aborting = False  # no job left to abort: the migration already ended
                    else:
                        self._record("abort_retry", f"abortJob failed: {error.get_error_message()}")
            self.wait(ABORT_RETRY_S, outcome.finished)
        if not outcome.ended():
            self._record("abort_timeout", f"the migration job did not end within {ABORT_TIMEOUT_S} s of the abort")

    def _post_copy_broke(self, result, outcome):
        """The job failed after the switch to post-copy (the runner's or anyone's): libvirt shows it on either host."""
        if result.status == "completed" or not outcome.finished.is_set():
            return False
        if self.steering.post_copy:
            return True
        states = self.ownership.look()
        return any(isinstance(state, GuestState) and state.post_copy for state in states)

    def _recover_post_copy(self, result, domain):
        """Within post_copy_recovery_timeout, wait for the broken post-copy to end on the destination.

        Measured after a cut link: libvirt's keepalive calls the job failed after about 30 s, but QEMU's stream
        survives (TCP keeps retrying), carries on once the link is back and completes, and libvirt (>= 8.5) then
        finishes the migration unattended on both hosts. So QEMU's stream is never paused here: pausing it turns a
        stall that heals itself into a break that only a resume can mend. Only a stream that QEMU gave up itself
        is resumed (VIR_MIGRATE_POSTCOPY_RESUME), where libvirt can. The source's copy is never resumed."""
        budget = self.request.post_copy_recovery_timeout_s
        deadline = self.clock() + budget
        can_resume = self.features.post_copy_recovery
        if not can_resume:
            self.ownership.recovery_blocked = self.features.reasons["post_copy_recovery"]
            self._record("post_copy_recovery_unavailable", f"a broken post-copy is not resumed "
                                                           f"({self.ownership.recovery_blocked}); QEMU's own stream "
                                                           "may still complete it once the hosts reach each other")
        rungs = self.steering.rungs if self.steering else ()
        flags = migration_flags(self.lv, self.request, rungs) | self.lv.VIR_MIGRATE_POSTCOPY | \
            self.lv.VIR_MIGRATE_POSTCOPY_RESUME
        params = migration_params(self.lv, self.request, post_copy=True)
        tries, last_error = 0, "the destination was not asked yet"
        while self.clock() < deadline:
            if self._completed_on_the_destination():
                self._recovered(result, "QEMU's post-copy stream came back once the hosts reached each other and "
                                        "completed; libvirt finished the migration unattended")
                return
            not_ready = self._destination_unreachable() or self._destination_not_failed()
            if can_resume and not not_ready:
                tries += 1
                resumed = _Outcome()
                self._run_migration_call(domain, params, flags, resumed)
                self.wait(max(0.0, deadline - self.clock()), resumed.finished)
                if resumed.finished.is_set() and resumed.error is None:
                    self._recovered(result, f"post-copy resumed and completed after {tries} "
                                            f"attempt{'s' if tries > 1 else ''}")
                    return
                not_ready = resumed.error.get_error_message() if isinstance(resumed.error, self.lv.libvirtError) \
                    else str(resumed.error or "no answer")
            last_error = not_ready or last_error
            self.wait(min(POST_COPY_RECOVERY_RETRY_S, max(0.0, deadline - self.clock())), threading.Event())
        self._record("post_copy_recovery_failed",
                     f"post-copy did not complete within post_copy_recovery_timeout={budget} s ({tries} resume "
                     f"attempts; last: {last_error})" if budget > 0 else "post_copy_recovery_timeout=0: no waiting")

    def _recovered(self, result, why):
        self._record("post_copy_recovered", why)
        result.status, result.error, result.total_time_ms = "completed", None, self._elapsed_ms()

    def _completed_on_the_destination(self):
        """The guest runs on the destination, past post-copy, and no longer on the source: the post-copy completed
        (libvirt finishes a migration whose stream completed after its job was called failed)."""
        try:
            there = self.destination.guest_state(self.request.name) if self.destination.revive() else None
            here = self.source.guest_state(self.request.name)
        except MigrationError:
            return False
        return there is not None and there.running and not there.post_copy and (here is None or not here.running)

    def _destination_unreachable(self):
        """Why the destination cannot be asked now (its link or libvirtd is down), or None. A connection libvirt still
        calls alive proves nothing until keepalive gave up on it: the destination must answer a call."""
        if self.destination.revive() and self._destination_answers():
            return None
        return f"the destination ({self.destination.uri}) does not answer"

    def _destination_not_failed(self):
        """Why a resume must wait, or None. Measured: a resume that reaches the destination before its libvirt saw
        the stream break (the moment a cut link returns) can hang both daemons' jobs; so the destination must show
        the guest in post-copy-failed first."""
        try:
            state = self.destination.guest_state(self.request.name)
        except MigrationError as error:
            return f"the destination does not answer: {error.message}"
        if state is None or not state.post_copy_failed:
            return (f"the destination shows the guest {describe(state)}: its side has not seen the post-copy "
                    "stream break yet")
        return None

    def _finish(self, result, watched, outcome, domain=None):
        result.actions = self.actions
        result.final_ratio = self.timeline.last.rounded_ratio if self.timeline.last else None
        result.strategy = self.steering.strategy
        aborted = any(action["what"] == "abort" for action in self.actions)
        completed = outcome.finished.is_set() and outcome.error is None
        for pending in self.steering.pending:
            self._judged(pending.index, completed)
        if completed:
            result.status = "completed"
            stats = self._completed_event_stats() or self._completed_stats(self.destination)
        else:
            result.status = "aborted" if aborted else "failed"
            if outcome.error is not None and not aborted:
                result.error = self._describe_error(outcome.error)
            stats = self._completed_stats(self.monitor) or self._completed_stats(self.source)
        self._apply_completed_stats(result, stats)
        self._fill_from_samples(result)
        if completed:
            self._note_downtime_over_budget(result)
        if not outcome.finished.is_set():
            # The job outlived its bounded abort: touch nothing, and name the host only if libvirt shows it.
            result.status = "failed"
            result.owner = result.source if self.ownership.runs_only_on_source() else "unknown"
            result.hosts = dict(self.ownership.shown)
            return
        if self._post_copy_broke(result, outcome):
            self._recover_post_copy(result, domain)
        try:
            result.owner = self.ownership.settle(result, self.steering.post_copy)
        finally:
            result.hosts = dict(self.ownership.shown)

    def _note_downtime_over_budget(self, result):
        """Say so when the measured stop outlasted the budget, with what was measured around it. QEMU's limit
        covers the memory left; stopping the vCPUs, device state and the hosts' hand-over come on top."""
        budget_ms = self.request.max_downtime_ms
        if result.downtime_ms is None or result.downtime_ms <= budget_ms:
            return
        handover = ""
        if result.downtime_net_ms is not None and result.downtime_net_ms <= result.downtime_ms:
            handover = f", {result.downtime_ms - result.downtime_net_ms} ms of it the hosts handing over control"
        throttle = self.timeline.last.throttle_pct if self.timeline.last else 0
        throttled = ""
        if throttle:
            throttled = f"; {throttle_hold_text(throttle)}"
        self._record("downtime_over_budget",
                     f"the guest was paused {result.downtime_ms} ms{handover}, over max_downtime_ms={budget_ms}: "
                     f"QEMU's limit at the stop was {self.steering.downtime_limit_ms} ms for the memory left, and "
                     f"the rest of the stop took more than the {self.policy.reserve_ms} ms kept for stopping the "
                     f"vCPUs, device state and the hand-over{throttled}; the migration completed",
                     value=result.downtime_ms)

    def _fill_from_samples(self, result):
        """What the completed statistics did not give, from the samples; one timeline entry per pass."""
        last = self.timeline.last
        result.total_time_ms = result.total_time_ms or self._elapsed_ms()
        if result.passes is None and last:
            result.passes = last.iteration
        if result.data_sent_bytes is None and last:
            result.data_sent_bytes, result.data_total_bytes = last.processed_bytes, last.total_bytes
        result.timeline = self.timeline.entries(passes=result.passes, started_ms=self._pass_started_ms)

    def _with_result(self, error, result):
        """``error`` carrying the result so far: a failure after the start still tells what happened."""
        if error.result is None and self._started is not None:
            if result.status in ("pending", "completed"):
                result.status = "failed"
            result.owner = "unknown"
            result.hosts = result.hosts or dict(self.ownership.shown)
            result.error = result.error or error.as_dict()
            if not result.timeline:
                result.actions = self.actions
                self._fill_from_samples(result)
            error.result = result.as_dict()
        return error

    def _describe_error(self, error):
        if isinstance(error, self.lv.libvirtError):
            return from_libvirt_error(self.lv, error, "the migration").as_dict()
        return MigrationError(f"the migration call raised {type(error).__name__}: {error}",
                              fix="report this as a bug of kvm.live_migration, with the versions").as_dict()

    def _watch_events(self, watched):
        """Catch the source's JOB_COMPLETED event (after post-copy the destination keeps no statistics) and
        its MIGRATION_ITERATION events (a pass shorter than a poll still gets its place on the timeline)."""
        self._completion = (threading.Event(), [])
        if not self.monitor.events:
            return lambda: None
        ready, stats = self._completion

        def completed(values):
            stats.append(values)
            ready.set()

        def iteration(number):
            self._pass_started_ms.setdefault(number, self._elapsed_ms())

        stops = [self.monitor.watch_job_completed(watched, completed),
                 self.monitor.watch_migration_iterations(watched, iteration)]
        return lambda: [stop() for stop in stops]

    def _completed_event_stats(self):
        ready, stats = self._completion
        if self.monitor.events:
            self.wait(COMPLETION_EVENT_WAIT_S, ready)  # the event may trail migrateToURI3's return a little
        return stats[-1] if stats else None

    def _completed_stats(self, hypervisor):
        """The completed job's statistics as ``hypervisor`` keeps them, or None (also when its connection died)."""
        try:
            domain = hypervisor.find_domain(self.request.name)
        except MigrationError:
            return None
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


def migrate_guest(source_uri, request, check_mode=False, on_progress=None, libvirt_module=None):
    """Validate ``request``, open the three connections a migration needs and run it; the MigrationResult."""
    validate_request(request)  # a bad option is reported before any connection
    with (Hypervisor(source_uri, libvirt_module) as source, Hypervisor(source_uri, libvirt_module, events=True) as
          monitor, Hypervisor(request.dest_uri, libvirt_module) as destination):
        runner = MigrationRunner(source, monitor, destination, request)
        runner.on_progress = on_progress
        return runner.run(check_mode)


def budget_exceeded(sample, timeout_s, max_data_bytes, max_data_factor):
    """Why the migration must stop now, or None while it is within its budgets."""
    if sample.time_ms > timeout_s * 1000:
        return f"the migration ran longer than its timeout of {timeout_s} s"
    if sample.processed_bytes > max_data_bytes:
        return (f"{sample.processed_bytes} bytes sent, more than max_data_factor={max_data_factor} times "
                "the guest's memory")
    return None
