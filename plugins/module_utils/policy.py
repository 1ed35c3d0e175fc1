# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The convergence policy: pure decisions over job-stat samples (no libvirt, no clock inside).

Pre-copy converges when the guest dirties memory slower than the link carries it. The policy
reads the convergence ratio r = dirty rate / transfer rate of every pass. A pass with
r >= ``threshold`` does not converge; ``stall_passes`` such passes in a row climb one rung of
the ladder, as far as the user permits and QEMU/libvirt support:

1. raise the downtime limit to exactly what the remaining data needs, if that fits the budget;
2. auto-converge: QEMU throttles the guest's vCPUs (armed before the start, with a starting
   throttle and step computed from the measured rates, because libvirt cannot arm it later);
3. post-copy: the guest runs on the destination, which fetches the pages it still lacks;
4. wait: nothing permitted is left, so the strongest measures stay in force and every pass is a
   chance for a window (the data left fitting the downtime budget) until a budget ends.

After each rung the policy waits ``stall_passes`` passes and records whether r fell. With post-copy
permitted, a guest whose sampled dirty rate alone reaches the bandwidth (r >= 1 before the start:
no pass could ever shrink what is left) starts in post-copy at once, which sends each page about
once. Any other guest runs its first pass in pre-copy, at full speed on the source, where a failure
leaves it; from the second pass on, a pass whose measured ratio makes pre-copy of what is left
slower than post-copy of it (r >= 1 - 1 / 1.25, r measured both as the dirty rate's ratio and as
what the pass left of what it began with) and whose data does not fit the downtime budget switches
to post-copy. Only what the guest dirtied is then left for the window in which it runs on
remote page faults (and a failure would lose it), and a measured pass decides, not one second of
page sampling that may fall in a quiet spell. Whatever the rung, a migration whose data left at the
start of a pass has reached no new low for ``progress_timeout_s`` is aborted (KubeVirt's progress
timeout): the guest keeps running on the source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MIB = 1024 * 1024

# QEMU's downtime limit covers the memory still to send; device state and the switch-over to the
# destination come on top (about 40 ms in the lab), so part of the budget is kept for them.
DOWNTIME_RESERVE_MS = 50
DOWNTIME_RESERVE_FRACTION = 0.15
# Start low, as oVirt and Proxmox do: a guest that converges anyway then pauses as briefly as it can.
INITIAL_DOWNTIME_MS = 100
# Raise the limit a little above the estimate: pages dirtied since the last sync are sent too.
DOWNTIME_MARGIN = 1.25
DOWNTIME_STEP_MS = 10
# QEMU accepts throttle percentages from 1 to 99 and throttles in slices of 10 ms of vCPU time.
MIN_THROTTLE_PCT = 20
MAX_THROTTLE_PCT = 99
THROTTLE_SLICE_MS = 10
THROTTLE_STEP_PCT = 1
# A throttled guest should dirty at most this fraction of the threshold: passes then shrink fast.
THROTTLE_TARGET_FRACTION = 0.5
# QEMU looks at the dirty rate at most once a second and steps its throttle every second look that
# finds it high: give it the passes and the seconds of two more steps before climbing past it.
THROTTLE_PATIENCE_PASSES = 8
THROTTLE_PATIENCE_MS = 6000
THROTTLE_SETTLE_MS = 1500
# A step helped when the ratio fell by at least this fraction (measurements jitter by a few %).
HELPED_RATIO_DROP = 0.1
# KubeVirt's default progress timeout (migrations.progressTimeout): no new low of the data left for this long.
PROGRESS_TIMEOUT_S = 150
# ... where a new low must be this much below the old one: a stuck guest's passes jitter by a few % (measured on
# the lab's heavy guest, whose strict new lows kept coming for 40 s and more).
PROGRESS_DROP = 0.05
# With post-copy permitted, switch to it when pre-copy is expected to take this much longer than post-copy, which
# sends each page left about once: from r = 1 - 1 / 1.25 = 0.2 up.
POST_COPY_GAIN = 1.25
POST_COPY_RATIO = 1 - 1 / POST_COPY_GAIN


@dataclass(frozen=True)
class Policy:
    """The user's convergence settings."""

    threshold: float = 0.8
    stall_passes: int = 2
    max_downtime_ms: int = 500
    allow_auto_converge: bool = True
    allow_post_copy: bool = False
    progress_timeout_s: int = PROGRESS_TIMEOUT_S

    @property
    def downtime_cap_ms(self):
        """The highest limit given to QEMU so that the measured downtime stays within the budget."""
        reserve = max(DOWNTIME_RESERVE_MS, int(self.max_downtime_ms * DOWNTIME_RESERVE_FRACTION))
        return max(DOWNTIME_STEP_MS, self.max_downtime_ms - reserve)

    @property
    def reserve_ms(self):
        """What the budget keeps beyond QEMU's limit, for stopping the vCPUs, device state and the hand-over."""
        return self.max_downtime_ms - self.downtime_cap_ms

    @property
    def initial_downtime_ms(self):
        return min(self.downtime_cap_ms, INITIAL_DOWNTIME_MS)

    def usable(self, features):
        """The escalation rungs this migration may use, in ladder order (waiting is always last)."""
        rungs = ["set_downtime"]
        if self.allow_auto_converge and features.auto_converge:
            rungs.append("auto_converge")
        if self.allow_post_copy and features.post_copy:
            rungs.append("post_copy")
        return [*rungs, "wait"]


# -- per-sample arithmetic ---------------------------------------------------------------------


def needed_downtime_ms(sample, peak_bytes=0):
    """The downtime limit that lets QEMU send what remains in one stop (None without a rate).

    A sample read late in a short pass shows less than the next sync will find; QEMU's expected
    downtime (from the last sync) and ``peak_bytes`` (the most that remained in the previous pass)
    guard against raising the limit too little.
    """
    estimates = [sample.expected_downtime_ms] if sample.expected_downtime_ms > 0 else []
    if sample.transfer_rate_bps > 0:
        estimates.append(1000 * max(sample.remaining_bytes, peak_bytes) / sample.transfer_rate_bps)
    if not estimates:
        return None
    estimate_ms = max(estimates)
    return DOWNTIME_STEP_MS * math.ceil(estimate_ms * DOWNTIME_MARGIN / DOWNTIME_STEP_MS)


def is_stalled(sample, policy):
    ratio = sample.ratio
    return ratio is not None and ratio >= policy.threshold


# -- prediction before the start ----------------------------------------------------------------


def throttle_stop_ms(throttle_pct):
    """How long QEMU's throttle at ``throttle_pct`` stops a vCPU after each 10 ms it lets it run."""
    return round(throttle_pct / (100 - throttle_pct) * THROTTLE_SLICE_MS)


def throttle_hold_text(throttle_pct):
    """How a report names the throttle's hold that a stop can include (see ``limit_room_ms``)."""
    return (f"QEMU's throttle at {throttle_pct} % holds a vCPU {throttle_stop_ms(throttle_pct)} ms at a time and a "
            "stop can include one hold")


def throttle_plan(ratio, policy):
    """(initial %, step %) of auto-converge's throttle.

    QEMU throttles only a guest that dirtied more than half of what was sent in two one-second
    looks in a row, so a throttled guest is one that pre-copy cannot finish; page sampling, which
    cannot see a page rewritten within its second, had measured it too low. A short strong throttle
    costs such a guest less CPU time than libvirt's 20 % + 10 % per step, which takes a minute to
    bite. How strong is bounded by the pause budget: at t, QEMU lets a vCPU run 10 ms, then stops
    it for t / (1 - t) x 10 ms, and a stop can include one such hold (see ``limit_room_ms``). So
    the throttle starts at the strongest t whose hold fits beside the starting downtime limit
    within ``downtime_cap_ms`` (or within the reserve, if that is more: a small budget keeps a
    throttle that bites), or at what the measured ratio needs (aiming at half the threshold) if
    that is more; its one step of 1 % goes to QEMU's maximum.
    """
    hold_room_ms = max(policy.downtime_cap_ms - policy.initial_downtime_ms, policy.reserve_ms, 0)
    bound_pct = math.floor(100 * hold_room_ms / (hold_room_ms + THROTTLE_SLICE_MS))
    needed_pct = 0
    if ratio:
        needed_pct = math.ceil(100 * (1 - policy.threshold * THROTTLE_TARGET_FRACTION / ratio))
    initial = min(MAX_THROTTLE_PCT, max(MIN_THROTTLE_PCT, bound_pct, needed_pct))
    return initial, max(1, min(THROTTLE_STEP_PCT, MAX_THROTTLE_PCT - initial))


def limit_room_ms(policy, throttle_pct):
    """The highest downtime limit that leaves room for QEMU's throttle hold within ``downtime_cap_ms``.

    Under TCG, QEMU's last dirty-bitmap sync, inside the stop, waits for every vCPU to finish the work
    queued on it; a throttle hold queued just before the stop then runs to its end within the stop
    (measured: stops of 501 and 503 ms, one 490 ms hold at 98 % and a stop of 11-13 ms).
    """
    return policy.downtime_cap_ms - throttle_stop_ms(throttle_pct)


def predict(dirty_rate_bps, memory_bytes, bandwidth_bps, policy, features):
    """Whether pre-copy converges at this bandwidth, how long it would take, and how to start.

    Each pre-copy pass resends what the previous one left dirty, so with r = dirty / bandwidth
    the passes shrink geometrically and pre-copy takes about first pass / (1 - r) when r < 1.
    Without a bandwidth cap the link's speed is unknown until the first pass measures it.
    """
    prediction = {"dirty_rate_bps": dirty_rate_bps, "bandwidth_bps": bandwidth_bps or None, "ratio": None,
                  "first_pass_s": None, "precopy_s": None, "converges": None}
    if dirty_rate_bps is None or not bandwidth_bps:
        why = ("no dirty rate was measured" if dirty_rate_bps is None
               else "no bandwidth cap: the link's speed is unknown until the first pass")
        return {**prediction, **_start(policy, features, None, None, None, why)}
    ratio = dirty_rate_bps / bandwidth_bps
    first_pass_s = memory_bytes / bandwidth_bps
    precopy_s = first_pass_s / (1 - ratio) if ratio < 1 else None
    converges = ratio < policy.threshold
    prediction.update(ratio=round(ratio, 3), first_pass_s=round(first_pass_s, 1),
                      precopy_s=None if precopy_s is None else round(precopy_s, 1), converges=converges)
    return {**prediction, **_start(policy, features, ratio, first_pass_s, precopy_s, None)}


def _start(policy, features, ratio, first_pass_s, precopy_s, unknown_why):
    rungs = policy.usable(features)
    initial, increment = throttle_plan(ratio, policy) if "auto_converge" in rungs else (None, None)
    plan = {"throttle_initial_pct": initial, "throttle_step_pct": increment}
    if ratio is None:
        return {**plan, "strategy": "precopy", "why": f"{unknown_why}; starting with pre-copy"}
    slow = precopy_s is None or precopy_s > POST_COPY_GAIN * first_pass_s
    if ratio < policy.threshold and not ("post_copy" in rungs and slow):
        return {**plan, "strategy": "precopy", "why": f"pre-copy converges (ratio {ratio:.2f} below the threshold "
                                                      f"{policy.threshold})"}
    estimate = "never" if precopy_s is None else f"in about {precopy_s:.0f} s"
    if "post_copy" in rungs and precopy_s is None:
        return {**plan, "strategy": "post_copy",
                "why": f"pre-copy would finish never (ratio {ratio:.2f}: the sampled rate alone reaches the "
                       f"bandwidth); post-copy sends each page about once, about {first_pass_s:.0f} s"}
    if "post_copy" in rungs:
        return {**plan, "strategy": "precopy",
                "why": f"pre-copy would finish {estimate} (ratio {ratio:.2f}); post-copy after the first pass "
                       f"(about {first_pass_s:.0f} s, the guest at full speed on the source) if that pass measures "
                       f"a ratio of {POST_COPY_RATIO:.1f} or more: only what the guest dirtied is then left for "
                       "post-copy"}
    if "auto_converge" in rungs:
        return {**plan, "strategy": "auto_converge",
                "why": f"pre-copy would finish {estimate} (ratio {ratio:.2f}); QEMU may throttle the guest "
                       f"at {initial} %, then {initial + increment} %"}
    return {**plan, "strategy": "precopy",
            "why": f"pre-copy would finish {estimate} (ratio {ratio:.2f}) and neither auto-converge nor post-copy "
                   "is permitted and supported: it completes only if a pass happens to fit the downtime budget "
                   "before a budget or the progress timeout ends it"}


# -- steering during the migration ---------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One thing to do to the running migration."""

    what: str  # set_downtime | auto_converge | post_copy | wait | abort
    why: str
    value: int | None = None  # the new downtime limit, or the throttle percentage
    judge: bool = True  # whether to check later that it helped


@dataclass(frozen=True)
class Pending:
    """A step whose effect is checked ``stall_passes`` passes after it was taken."""

    index: int  # the step's position among all steps taken
    what: str
    taken_pass: int
    ratio: float | None


@dataclass(frozen=True)
class Steering:
    """Where the migration is on the ladder; ``steer`` returns the next Steering."""

    downtime_limit_ms: int
    rungs: tuple = ("set_downtime", "wait")
    start_post_copy: bool = False
    last_pass: int = 0
    stalled_passes: int = 0
    climbed: tuple = ()  # rungs already used
    pending: tuple = ()
    steps_taken: int = 0
    post_copy: bool = False
    throttle_seen: bool = False
    pass_peak_bytes: int = 0  # the most that remained in the current pass
    last_pass_peak_bytes: int = 0  # ... and in the pass before
    throttle_deadline: tuple | None = None  # (pass, time_ms) by which QEMU's throttle must have helped
    throttle_maxed: tuple | None = None  # (pass, time_ms) when QEMU's throttle reached its maximum
    lowest_peak_bytes: int | None = None  # the least data left at the start of a pass so far
    lowest_peak_ms: int = 0  # ... and when that pass ended
    aborted: bool = False

    @classmethod
    def start(cls, policy, features, strategy="precopy"):
        rungs = tuple(policy.usable(features))
        return cls(downtime_limit_ms=policy.initial_downtime_ms, rungs=rungs,
                   start_post_copy=strategy == "post_copy" and "post_copy" in rungs)

    def without_rung(self, rung):
        return replace(self, rungs=tuple(item for item in self.rungs if item != rung), start_post_copy=False)

    @property
    def strategy(self):
        if self.post_copy:
            return "post_copy"
        return "auto_converge" if self.throttle_seen else "precopy"


@dataclass(frozen=True)
class Decision:
    steering: Steering
    steps: tuple = ()
    verdicts: tuple = ()  # (step index, helped) of earlier steps judged now


def steer(steering, sample, policy):
    """What to do after reading ``sample``; acts once per pass (and at once to start post-copy)."""
    if steering.post_copy or steering.aborted or sample.iteration < 1:
        return Decision(steering)
    if steering.start_post_copy:
        step = Step("post_copy", "the prediction chose post-copy: the sampled dirty rate alone reaches the bandwidth, "
                                 "so no pre-copy pass could shrink what is left")
        return _taken(replace(steering, start_post_copy=False), (step,), (), sample)
    steering = _note_throttle(steering, sample)
    if sample.iteration <= steering.last_pass:
        return Decision(replace(steering, pass_peak_bytes=max(steering.pass_peak_bytes, sample.remaining_bytes)))
    return _steer_new_pass(steering, sample, policy)


def _steer_new_pass(steering, sample, policy):
    """The first sample of a pass: count stalls, judge earlier steps, then stop, switch, wait or climb."""
    stalled = is_stalled(sample, policy)
    steering = _note_progress(steering, sample)
    steering = replace(steering, last_pass=sample.iteration,
                       stalled_passes=steering.stalled_passes + 1 if stalled else 0,
                       last_pass_peak_bytes=steering.pass_peak_bytes, pass_peak_bytes=sample.remaining_bytes)
    steering, verdicts = _judge(steering, sample, policy)
    if _no_progress(steering, sample, policy):
        return _taken(steering, (_progress_abort(steering, sample, policy),), verdicts, sample)
    ratio = _post_copy_pays(steering, sample, policy)
    if ratio is not None:
        return _taken(steering, (_post_copy_now(steering, sample, policy, ratio),), verdicts, sample)
    lowered = _room_for_the_throttle(steering, sample, policy)
    if lowered:
        return _taken(steering, lowered, verdicts, sample)
    if steering.stalled_passes < policy.stall_passes and not _escalated(steering):
        return Decision(steering, verdicts=verdicts)
    steps = _fit_downtime(steering, sample, policy)
    if not steps and steering.stalled_passes >= policy.stall_passes and not steering.pending:
        steps = _climb(steering, sample, policy)
    return _taken(steering, steps, verdicts, sample)


def _note_throttle(steering, sample):
    if sample.throttle_pct > 0 and not steering.throttle_seen:
        steering = replace(steering, throttle_seen=True)
    if sample.throttle_pct >= MAX_THROTTLE_PCT and steering.throttle_maxed is None:
        steering = replace(steering, throttle_maxed=(sample.iteration, sample.time_ms))
    return steering


def _note_progress(steering, sample):
    """At a pass's end, keep its peak (the data left at its start) when it is a new low."""
    if steering.last_pass < 1:
        return steering
    peak = steering.pass_peak_bytes
    if steering.lowest_peak_bytes is None or peak < steering.lowest_peak_bytes * (1 - PROGRESS_DROP):
        return replace(steering, lowest_peak_bytes=peak, lowest_peak_ms=sample.time_ms)
    return steering


def _no_progress(steering, sample, policy):
    return (steering.lowest_peak_bytes is not None
            and sample.time_ms - steering.lowest_peak_ms >= 1000 * policy.progress_timeout_s)


def _progress_abort(steering, sample, policy):
    lowest_mib = steering.lowest_peak_bytes / MIB
    measures = [rung for rung in steering.climbed if rung in ("set_downtime", "auto_converge")]
    tried = f" ({', '.join(measures)} in force)" if measures else ""
    return Step("abort", f"no progress: the data left at the start of a pass has not fallen below {lowest_mib:.0f} MiB "
                         f"for {policy.progress_timeout_s} s (progress_timeout){tried}; ratio "
                         f"{_ratio_text(sample)}", judge=False)


def _ratio_text(sample):
    return "unknown" if sample.ratio is None else f"{sample.ratio:.2f}"


def _post_copy_pays(steering, sample, policy):
    """The pass's ratio when post-copy pays, else None. It pays after the first pass, with post-copy permitted, at a
    measured ratio at which pre-copy of what is left takes ``POST_COPY_GAIN`` times longer than post-copy of it (or
    never ends), with data that no stop within the budget sends. Waiting for more passes would only cost time (and,
    throttled, the guest's CPU)."""
    if "post_copy" not in steering.rungs or "post_copy" in steering.climbed:
        return None
    ratio = _pass_ratio(steering, sample)
    if ratio is None or ratio < POST_COPY_RATIO:
        return None
    # Pass 1's peak is all of memory, not what is left.
    needed = needed_downtime_ms(sample, steering.last_pass_peak_bytes if sample.iteration > 2 else 0)  # noqa: PLR2004
    return ratio if needed is None or needed > limit_room_ms(policy, sample.throttle_pct) else None


def _shrink(steering, sample):
    """The data left at this pass's start over the previous pass's: the ratio pre-copy actually achieved."""
    if steering.last_pass_peak_bytes <= 0:
        return None
    return sample.remaining_bytes / steering.last_pass_peak_bytes


def _pass_ratio(steering, sample):
    """The larger of the dirty rate's ratio and the shrink. QEMU's dirty rate averages a pass: over a long pass it
    understates a small hot set that the guest rewrites whole in every short pass after it, whose data left then
    does not shrink at all."""
    measured = [value for value in (sample.ratio, _shrink(steering, sample)) if value is not None]
    return max(measured, default=None)


def _post_copy_now(steering, sample, policy, ratio):
    left_mib = sample.remaining_bytes / MIB
    rate_mib = sample.transfer_rate_bps / MIB
    if ratio >= 1:
        precopy = "pre-copy cannot shrink"
    else:
        precopy = (f"pre-copy would need about {left_mib / rate_mib / (1 - ratio):.0f} s for"
                   if rate_mib else "pre-copy would be slow with")
    post_copy = f" in about {left_mib / rate_mib:.0f} s" if rate_mib else ""
    before_mib = steering.last_pass_peak_bytes / MIB
    return Step("post_copy", f"pass {sample.iteration - 1} measured ratio {_ratio_text(sample)} and left "
                             f"{left_mib:.0f} of the {before_mib:.0f} MiB it began with (post-copy from "
                             f"{POST_COPY_RATIO:.2f}): {precopy} the {left_mib:.0f} MiB left, which no stop within "
                             f"{policy.max_downtime_ms} ms sends; post-copy sends them about once{post_copy}")


def _escalated(steering):
    return any(rung != "set_downtime" for rung in steering.climbed)


def _judge(steering, sample, policy):
    """Judge the steps taken ``stall_passes`` passes ago: did the ratio fall?"""
    due = [item for item in steering.pending if sample.iteration - item.taken_pass >= policy.stall_passes]
    if not due:
        return steering, ()
    verdicts = tuple((item.index, _helped(item, sample.ratio)) for item in due)
    return replace(steering, pending=tuple(item for item in steering.pending if item not in due)), verdicts


def _helped(item, ratio):
    """A raised limit helps by ending the migration, so one still running passes later did not help;
    throttling helps when the ratio fell."""
    if item.what == "set_downtime":
        return False
    return ratio is not None and item.ratio is not None and ratio < item.ratio * (1 - HELPED_RATIO_DROP)


def _room_for_the_throttle(steering, sample, policy):
    """Lower a limit raised before QEMU's throttle began, so that a stop that includes one hold stays within the
    budget; never below the starting limit."""
    room_ms = limit_room_ms(policy, sample.throttle_pct)
    lowest_ms = max(policy.initial_downtime_ms, DOWNTIME_STEP_MS * (room_ms // DOWNTIME_STEP_MS))
    if steering.downtime_limit_ms <= lowest_ms:
        return ()
    hold = throttle_hold_text(sample.throttle_pct)
    if room_ms >= policy.initial_downtime_ms:
        why = f"{hold}: a {lowest_ms} ms limit keeps such a stop within the budget ({policy.max_downtime_ms} ms)"
    else:
        why = (f"{hold}, which alone leaves no room within the budget ({policy.max_downtime_ms} ms): back to the "
               f"starting limit of {lowest_ms} ms")
    return (Step("set_downtime", why, value=lowest_ms, judge=False),)


def _fit_downtime(steering, sample, policy):
    """Raise the limit to exactly what the remaining data needs, when that fits the budget beside the throttle's
    hold."""
    needed = needed_downtime_ms(sample, steering.last_pass_peak_bytes)
    if needed is None or needed <= steering.downtime_limit_ms or needed > limit_room_ms(policy, sample.throttle_pct):
        return ()
    remaining_mib = max(sample.remaining_bytes, steering.last_pass_peak_bytes) / MIB
    rate_mib = sample.transfer_rate_bps / MIB
    why = (f"{remaining_mib:.0f} MiB remain at {rate_mib:.0f} MiB/s (QEMU expects a {sample.expected_downtime_ms} ms "
           f"stop): a {needed} ms limit lets it finish (budget {policy.max_downtime_ms} ms)")
    return (Step("set_downtime", why, value=needed),)


def _climb(steering, sample, policy):
    """The next rung above the ones used: auto-converge, post-copy, or waiting with what is in force."""
    ratio = sample.ratio
    stall = (f"ratio {ratio:.2f} >= {policy.threshold} for {steering.stalled_passes} passes"
             if ratio is not None else "no convergence")
    if _throttle_still_rising(steering, sample, policy):
        return ()
    for rung in steering.rungs:
        if rung == "set_downtime" or rung in steering.climbed:
            continue
        if rung == "auto_converge":
            throttle = sample.throttle_pct
            how = f"QEMU throttles the guest at {throttle} %" if throttle else "QEMU's throttle is armed"
            return (Step("auto_converge", f"{stall}; {how}", value=throttle or None),)
        if rung == "post_copy":
            return (Step("post_copy", f"{stall}; switching to post-copy"),)
        return (Step("wait", _wait_why(stall, steering, sample, policy), judge=False),)
    return ()


def _wait_why(stall, steering, sample, policy):
    needed = needed_downtime_ms(sample)
    needs = f"; a stop now would take about {needed} ms" if needed else ""
    kept = ""
    if steering.throttle_maxed is not None and is_stalled(sample, policy):
        kept = (f"; QEMU's throttle is at its maximum ({sample.throttle_pct} %) and the guest still dirties "
                f"{sample.dirty_rate_bps / MIB:.0f} MiB/s: it writes much memory with little CPU, which no throttle "
                "makes converge")
    elif sample.throttle_pct:
        kept = f"; QEMU's throttle stays at {sample.throttle_pct} %"
    return (f"{stall} and nothing permitted is left to make it converge{needs} (budget {policy.max_downtime_ms} "
            f"ms){kept}; waiting for a pass whose data fits the budget, until the data left reaches no new low for "
            f"{policy.progress_timeout_s} s (progress_timeout) or a budget ends")


def _throttle_still_rising(steering, sample, policy):
    """QEMU raises its throttle step by step: give it until the maximum (or a deadline), and then
    ``stall_passes`` passes and a moment at the maximum, before climbing past auto-converge."""
    if "auto_converge" not in steering.climbed or steering.throttle_deadline is None:
        return False
    if steering.throttle_maxed is None:
        pass_deadline, time_deadline_ms = steering.throttle_deadline
        return sample.iteration < pass_deadline or sample.time_ms < time_deadline_ms
    maxed_pass, maxed_ms = steering.throttle_maxed
    return sample.iteration < maxed_pass + policy.stall_passes or sample.time_ms < maxed_ms + THROTTLE_SETTLE_MS


def _taken(steering, steps, verdicts, sample):
    """Record ``steps`` in the steering: limits, climbed rungs, and checks to make later."""
    pending = list(steering.pending)
    climbed = list(steering.climbed)
    limit = steering.downtime_limit_ms
    index = steering.steps_taken
    for step in steps:
        rung = step.what
        if rung not in climbed:
            climbed.append(rung)
        if step.what == "set_downtime":
            limit = step.value
        if step.judge:
            pending.append(Pending(index, step.what, sample.iteration, sample.ratio))
        index += 1
    deadline = steering.throttle_deadline
    if any(step.what == "auto_converge" for step in steps):
        deadline = (sample.iteration + THROTTLE_PATIENCE_PASSES, sample.time_ms + THROTTLE_PATIENCE_MS)
    steering = replace(steering, pending=tuple(pending), climbed=tuple(climbed), downtime_limit_ms=limit,
                       steps_taken=index, post_copy=steering.post_copy or any(s.what == "post_copy" for s in steps),
                       aborted=steering.aborted or any(s.what == "abort" for s in steps), throttle_deadline=deadline)
    return Decision(steering, tuple(steps), verdicts)
