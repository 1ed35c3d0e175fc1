"""The convergence policy: pure functions over job-stat samples, table-driven."""

from __future__ import annotations

import pytest

from ansible_collections.kvm.live_migration.plugins.module_utils.features import Features, detect_features
from ansible_collections.kvm.live_migration.plugins.module_utils.jobstats import JobSample
from ansible_collections.kvm.live_migration.plugins.module_utils.policy import (
    Policy,
    Steering,
    limit_room_ms,
    needed_downtime_ms,
    predict,
    steer,
    throttle_plan,
    throttle_stop_ms,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
BW = 64 * MIB
ALL_NAMES = {"VIR_MIGRATE_AUTO_CONVERGE", "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL",
             "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT", "VIR_MIGRATE_POSTCOPY", "migrateStartPostCopy",
             "VIR_DOMAIN_STATS_DIRTYRATE", "startDirtyRateCalc", "VIR_MIGRATE_POSTCOPY_RESUME",
             "VIR_DOMAIN_ABORT_JOB_POSTCOPY"}
NEW = {"libvirt": 9_000_000, "hypervisor": 7_002_000}
BACKPORTS = {"libvirt": 11_003_000, "hypervisor": 10_000_002}
NOTHING = Features(auto_converge=False, post_copy=False)


def at(iteration, ratio=None, remaining_mib=400, throttle=0, time_ms=None):
    """A sample of pass ``iteration`` at 64 MiB/s whose dirty rate gives ``ratio``."""
    dirty_pages = 0 if ratio is None else int(ratio * BW / 4096)
    return JobSample(time_ms=time_ms if time_ms is not None else iteration * 1000, iteration=iteration,
                     remaining_bytes=remaining_mib * MIB, processed_bytes=iteration * 400 * MIB, total_bytes=GIB,
                     transfer_rate_bps=BW, dirty_rate_pages=dirty_pages, throttle_pct=throttle)


def run_steering(samples, policy=None, features=None, strategy="precopy"):
    """Feed the samples; return [(pass, what, value)] of the steps and {step index: helped} of verdicts."""
    policy = policy or Policy()
    steering = Steering.start(policy, features or Features(), strategy)
    steps, verdicts = [], {}
    for sample in samples:
        decision = steer(steering, sample, policy)
        steering = decision.steering
        steps += [(sample.iteration, step.what, step.value) for step in decision.steps]
        verdicts.update(dict(decision.verdicts))
    return steps, verdicts, steering


def steered(policy, samples):
    """Feed the samples; return the Step objects taken and the last Steering."""
    steering = Steering.start(policy, Features())
    steps = []
    for sample in samples:
        decision = steer(steering, sample, policy)
        steering = decision.steering
        steps += decision.steps
    return steps, steering


# -- downtime ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "cap", "initial", "reserve"),
    [(500, 425, 100, 75), (300, 250, 100, 50), (120, 70, 70, 50), (40, 10, 10, 30), (2000, 1700, 100, 300)],
)
def test_downtime_cap_keeps_a_reserve_for_the_switch_over(budget, cap, initial, reserve):
    policy = Policy(max_downtime_ms=budget)
    assert (policy.downtime_cap_ms, policy.initial_downtime_ms, policy.reserve_ms) == (cap, initial, reserve)


@pytest.mark.parametrize(
    ("sample", "needed"),
    [
        (at(3, 0.9, remaining_mib=16), 320),  # 16 MiB at 64 MiB/s = 250 ms, + 25 %, rounded up to 10 ms
        (at(3, 0.9, remaining_mib=1), 20),
        (JobSample(time_ms=0, iteration=2, remaining_bytes=MIB, expected_downtime_ms=200), 250),
        (JobSample(time_ms=0, iteration=2, remaining_bytes=MIB), None),
    ],
    ids=["from-rate", "small", "expected-downtime-without-rate", "nothing-known"],
)
def test_needed_downtime(sample, needed):
    assert needed_downtime_ms(sample) == needed


def test_needed_downtime_counts_the_previous_pass_peak():
    assert needed_downtime_ms(at(3, 0.9, remaining_mib=1), peak_bytes=16 * MIB) == 320


# -- throttle and prediction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "budget_ms", "plan"),
    [
        # 97 %: holds of 323 ms, which fit beside the starting limit of 100 ms within the cap of 425 ms
        (None, 500, (97, 1)),
        (0.1, 500, (97, 1)),
        (2.0, 500, (97, 1)),
        (None, 100, (83, 1)),  # no room beside the starting limit: holds of 49 ms, within the 50 ms reserve
        (2.0, 100, (83, 1)),
        (10.0, 100, (96, 1)),  # the measured ratio needs more than the budget's throttle
        (None, 300, (93, 1)),
        (None, 2000, (99, 1)),  # QEMU's maximum
        (None, 1, (20, 1)),
    ],
)
def test_throttle_plan(ratio, budget_ms, plan):
    assert throttle_plan(ratio, Policy(max_downtime_ms=budget_ms)) == plan


BOTH = Policy(allow_post_copy=True)
AUTO = Policy()
NONE = Policy(allow_auto_converge=False)


@pytest.mark.parametrize(
    ("dirty_mib", "bandwidth_mib", "policy", "features", "expected"),
    [
        (4, 64, AUTO, Features(),
         {"ratio": 0.062, "converges": True, "strategy": "precopy", "first_pass_s": 8.0, "precopy_s": 8.5,
          "throttle_initial_pct": 97}),
        # Moderate: converges, but post-copy would save 40 % of the time: after the first pass, if it measures so.
        (26, 64, BOTH, Features(),
         {"ratio": 0.406, "converges": True, "strategy": "precopy", "precopy_s": 13.5}),
        (56, 64, BOTH, Features(), {"ratio": 0.875, "converges": False, "strategy": "precopy"}),
        (26, 64, AUTO, Features(), {"converges": True, "strategy": "precopy"}),
        (128, 64, BOTH, Features(),
         {"ratio": 2.0, "converges": False, "strategy": "post_copy", "precopy_s": None}),
        (128, 64, BOTH, Features().without("post_copy", "no userfaultfd"),
         {"strategy": "auto_converge", "throttle_initial_pct": 97, "throttle_step_pct": 1}),
        (56, 64, AUTO, Features(), {"ratio": 0.875, "converges": False, "strategy": "auto_converge",
                                    "throttle_initial_pct": 97, "throttle_step_pct": 1}),
        (128, 64, NONE, Features(),
         {"strategy": "precopy", "converges": False, "throttle_initial_pct": None, "throttle_step_pct": None}),
        (128, 0, BOTH, Features(), {"ratio": None, "converges": None, "strategy": "precopy", "bandwidth_bps": None}),
        (None, 64, BOTH, Features(), {"ratio": None, "converges": None, "strategy": "precopy",
                                      "throttle_initial_pct": 97}),
    ],
    ids=["idle", "moderate-post-copy-after-the-first-pass", "stalling-post-copy-after-the-first-pass",
         "moderate-auto-converge", "heavy-post-copy-at-once", "heavy-no-userfaultfd",
         "heavy-auto-converge", "heavy-nothing-permitted", "uncapped", "unmeasured"],
)
def test_predict(dirty_mib, bandwidth_mib, policy, features, expected):
    dirty = None if dirty_mib is None else dirty_mib * MIB
    prediction = predict(dirty, 512 * MIB, bandwidth_mib * MIB, policy, features)
    assert {key: prediction[key] for key in expected} == expected
    assert prediction["why"]


def test_predict_explains_an_expected_abort():
    prediction = predict(128 * MIB, 512 * MIB, BW, NONE, Features())
    assert prediction["why"] == ("pre-copy would finish never (ratio 2.00) and neither auto-converge nor post-copy "
                                 "is permitted and supported: it completes only if a pass happens to fit the downtime "
                                 "budget before a budget or the progress timeout ends it")


# -- features --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "source", "destination", "transport", "expected"),
    [
        (ALL_NAMES, NEW, NEW, "tls", {"auto_converge": True, "post_copy": True, "dirty_rate": True}),
        (ALL_NAMES - {"migrateStartPostCopy"}, NEW, NEW, "tls",
         {"post_copy": False, "reasons": {"post_copy": "the libvirt Python binding lacks migrateStartPostCopy"}}),
        (ALL_NAMES, {"libvirt": 7_000_000, "hypervisor": 7_002_000}, NEW, "tls",
         {"dirty_rate": False, "post_copy": True,
          "reasons": {"dirty_rate": "needs libvirt 7.2.0 or later on both hosts",
                      "post_copy_recovery": "needs libvirt 8.5.0 or later on both hosts"}}),
        (ALL_NAMES, NEW, {"libvirt": 9_000_000, "hypervisor": 2_004_000}, "tls",
         {"post_copy": False, "dirty_rate": True,
          "reasons": {"post_copy": "needs QEMU 2.5.0 or later on both hosts",
                      "post_copy_recovery": "needs QEMU 3.0.0 or later on both hosts"}}),
        (ALL_NAMES, NEW, {"libvirt": 1_003_000, "hypervisor": 7_002_000}, "tls",
         {"auto_converge": False, "post_copy": False}),
        (ALL_NAMES, NEW, NEW, "ssh",
         {"post_copy": False,
          "reasons": {"post_copy": "tunnelled (transport: ssh) migration cannot switch to post-copy"}}),
        (ALL_NAMES, NEW, BACKPORTS, "tls",
         {"post_copy": True, "post_copy_recovery": False,
          "reasons": {"post_copy_recovery": "libvirt 11.3.0 crashes its libvirtd on every post-copy resume (a NULL "
                                            "file descriptor in qemuMigrationDstPrepareResume) on the destination"}}),
        (ALL_NAMES, {"libvirt": 11_004_000, "hypervisor": 10_001_000}, {"libvirt": 8_005_000, "hypervisor": 7_002_000},
         "tls", {"post_copy": True, "post_copy_recovery": True, "reasons": {}}),
        (ALL_NAMES, NEW, {"libvirt": 8_004_000, "hypervisor": 7_002_000}, "tls",
         {"post_copy": True, "post_copy_recovery": False,
          "reasons": {"post_copy_recovery": "needs libvirt 8.5.0 or later on both hosts"}}),
    ],
    ids=["all", "binding-without-post-copy", "old-source-libvirt", "old-destination-qemu",
         "ancient-destination-libvirt", "tunnelled", "destination-libvirt-that-crashes-on-resume",
         "libvirt-around-the-broken-release", "destination-libvirt-before-post-copy-recovery"],
)
def test_detect_features(names, source, destination, transport, expected):
    features = detect_features(names, source, destination, transport)
    assert {key: getattr(features, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("policy", "features", "rungs"),
    [
        (Policy(), Features(), ["set_downtime", "auto_converge", "wait"]),
        (BOTH, Features(), ["set_downtime", "auto_converge", "post_copy", "wait"]),
        (BOTH, NOTHING, ["set_downtime", "wait"]),
        (Policy(allow_auto_converge=False, allow_post_copy=True), Features(), ["set_downtime", "post_copy", "wait"]),
    ],
)
def test_usable_rungs(policy, features, rungs):
    assert policy.usable(features) == rungs


# -- steering --------------------------------------------------------------------------------------

CONVERGING = [at(1), at(2, 0.3, 200), at(3, 0.2, 60), at(4, 0.1, 10)]
# The hot set: 40 MiB left every pass, a 780 ms stop (beyond the cap of 425 ms).
STALLED = [at(1), *(at(n, 0.95, 40) for n in range(2, 13))]
# The same, with QEMU's throttle at 50 % from pass 3 and at its maximum from pass 4.
STALLED_THROTTLED = [at(1), at(2, 0.95, 40), at(3, 0.95, 40, throttle=50),
                     *(at(n, 0.95, 40, throttle=99) for n in range(4, 9))]
# Stalled, but each pass leaves 1 MiB less than the one before: slow progress.
SHRINKING = [at(1), *(at(n, 0.95, 60 - n) for n in range(2, 13))]
# Stalled until the throttle engages at pass 3, then the ratio and the remaining data fall.
THROTTLED = [at(1), at(2, 0.95, 300), at(3, 0.95, 300, throttle=60), at(4, 0.5, 100, throttle=60),
             at(5, 0.3, 15, throttle=80), at(6, 0.2, 5, throttle=80)]


@pytest.mark.parametrize(
    ("samples", "policy", "features", "steps", "verdicts"),
    [
        pytest.param(CONVERGING, AUTO, Features(), [], {}, id="converging"),
        pytest.param([at(1), at(2, 0.9, 10), at(3, 0.9, 10)], AUTO, Features(),
                     [(3, "set_downtime", 200)], {}, id="stalled-but-fits-budget"),
        pytest.param([at(1), at(2, 0.9, 10), at(3, 0.9, 10), at(4, 0.9, 10), at(5, 0.9, 10)], AUTO, NOTHING,
                     [(3, "set_downtime", 200), (5, "wait", None)], {0: False}, id="raised-limit-did-not-help"),
        pytest.param(STALLED, NONE, Features(), [(3, "wait", None)], {}, id="stalled-nothing-permitted-waits"),
        # Pass 2 set the low (40 MiB) at 3 s; 5 s without a new low end it.
        pytest.param(STALLED, Policy(allow_auto_converge=False, progress_timeout_s=5), Features(),
                     [(3, "wait", None), (8, "abort", None)], {}, id="no-progress-aborts"),
        pytest.param(SHRINKING, Policy(allow_auto_converge=False, progress_timeout_s=5), Features(),
                     [(3, "wait", None)], {}, id="each-new-low-restarts-the-progress-timeout"),
        pytest.param(STALLED, Policy(progress_timeout_s=5), Features(),
                     [(3, "auto_converge", None), (8, "abort", None)], {0: False},
                     id="no-progress-aborts-while-throttling"),
        # With post-copy permitted, the first pass measured at a ratio where post-copy pays is enough, throttle or
        # not: from 0.2 (pre-copy 1.25 x slower than post-copy), below the threshold too.
        pytest.param([at(1), at(2, 1.2, 300), at(3, 1.2, 300)], BOTH, Features(), [(2, "post_copy", None)], {},
                     id="ratio-above-1-post-copy-at-once"),
        pytest.param([at(1), at(2, 0.5, 200), at(3, 0.5, 100)], BOTH, Features(), [(2, "post_copy", None)], {},
                     id="moderate-ratio-post-copy-after-the-first-pass"),
        pytest.param([at(1), at(2, 0.19, 60), at(3, 0.1, 5)], BOTH, Features(), [], {},
                     id="ratio-and-shrink-below-0.2-pre-copy-finishes"),
        # A small hot set: QEMU's rate over the long pass 1 says 0.05, but pass 2 left all 32 MiB it began with.
        pytest.param([at(1), at(2, 0.05, 32), at(3, 0.05, 32)], BOTH, Features(), [(3, "post_copy", None)], {},
                     id="data-left-does-not-shrink-post-copy"),
        pytest.param([at(1), at(2, 0.1, 60), at(3, 1.1, 60, throttle=60)], BOTH, Features(),
                     [(3, "post_copy", None)], {}, id="ratio-rises-while-throttled-post-copy-at-once"),
        pytest.param([at(1), at(2, 1.2, 10), at(3, 1.2, 10)], BOTH, Features(), [(3, "set_downtime", 200)], {},
                     id="ratio-above-1-but-what-is-left-fits-the-budget"),
        pytest.param([at(1), at(2, 1.2, 300), at(3, 1.2, 300)], AUTO, Features(), [(3, "auto_converge", None)], {},
                     id="ratio-above-1-without-post-copy-climbs-the-ladder"),
        # At its maximum from pass 4: two passes and 1.5 s there before the ladder climbs on.
        pytest.param(STALLED_THROTTLED, AUTO, Features(), [(3, "auto_converge", 50), (6, "wait", None)],
                     {0: False}, id="throttle-at-maximum-did-not-help-then-wait"),
        pytest.param(STALLED_THROTTLED, BOTH, Features(), [(2, "post_copy", None)], {},
                     id="post-copy-before-any-throttle"),
        # QEMU's throttle never rose: the ladder waits 8 passes for it, then climbs on.
        pytest.param(STALLED, AUTO, Features(), [(3, "auto_converge", None), (11, "wait", None)], {0: False},
                     id="throttle-never-rose-then-wait-at-deadline"),
        pytest.param(STALLED, BOTH, Features(auto_converge=False), [(2, "post_copy", None)], {},
                     id="no-auto-converge-support"),
        # At pass 5 only 15 MiB remain, but pass 4 held 100 MiB: the limit waits for pass 6 (15 MiB peak).
        pytest.param(THROTTLED, AUTO, Features(), [(3, "auto_converge", 60), (6, "set_downtime", 300)], {0: True},
                     id="throttle-helped-then-downtime-fits"),
        # A stop can include one throttle hold: a limit raised before QEMU throttled at 97 % (323 ms holds) goes back
        # to what leaves room for one (the cap of 425 ms less 323 ms: 102 ms, no lower than the starting 100 ms) ...
        pytest.param([at(1), at(2, 0.9, 10), at(3, 0.9, 10), at(4, 0.9, 10, throttle=97)], AUTO, Features(),
                     [(3, "set_downtime", 200), (4, "set_downtime", 100)], {}, id="throttle-began-limit-lowered"),
        # ... and no limit is raised past that room while it throttles: the ladder climbs instead.
        pytest.param([at(1), at(2, 0.9, 10, throttle=97), at(3, 0.9, 10, throttle=97)], AUTO, Features(),
                     [(3, "auto_converge", 97)], {}, id="throttled-limit-not-raised-past-the-hold"),
        pytest.param([at(1), at(2, 0.9, 10, throttle=60), at(3, 0.9, 10, throttle=60)], AUTO, Features(),
                     [(3, "set_downtime", 200)], {}, id="a-light-throttle-leaves-room-for-the-limit"),
        pytest.param([at(1), at(2, 0.9), at(3, 0.5), at(4, 0.9), at(5, 0.5)], NONE, Features(), [], {},
                     id="stall-counter-resets"),
        pytest.param(STALLED[:8], Policy(stall_passes=4, allow_auto_converge=False), Features(), [(5, "wait", None)],
                     {}, id="stall-passes-4"),
        pytest.param(STALLED, Policy(threshold=1.0, allow_auto_converge=False), Features(), [], {},
                     id="threshold-1"),
    ],
)
def test_steer(samples, policy, features, steps, verdicts):
    taken, judged, _steering = run_steering(samples, policy, features)
    assert (taken, judged) == (steps, verdicts)


def test_wait_says_what_stays_in_force_and_why_a_throttle_cannot_help():
    steps, _steering = steered(AUTO, STALLED_THROTTLED)
    wait = steps[-1]
    assert wait.what == "wait"
    assert wait.why == ("ratio 0.95 >= 0.8 for 5 passes and nothing permitted is left to make it converge; a stop now "
                        "would take about 790 ms (budget 500 ms); QEMU's throttle is at its maximum (99 %) and the "
                        "guest still dirties 61 MiB/s: it writes much memory with little CPU, which no throttle makes "
                        "converge; waiting for a pass whose data fits the budget, until the data left reaches no new "
                        "low for 150 s (progress_timeout) or a budget ends")


def test_no_progress_abort_names_the_low_and_the_measures_in_force():
    policy = Policy(allow_auto_converge=False, progress_timeout_s=5)
    steps, _steering = steered(policy, STALLED)
    assert steps[-1].why == ("no progress: the data left at the start of a pass has not fallen below 40 MiB for 5 s "
                             "(progress_timeout); ratio 0.95")


def test_post_copy_waits_for_the_first_pass_and_says_why():
    policy = BOTH
    steering = Steering.start(policy, Features())
    first = steer(steering, at(1), policy)
    second = steer(first.steering, at(2, 0.5, 192), policy)
    assert (first.steps, [step.what for step in second.steps], second.steering.strategy) == (
        (), ["post_copy"], "post_copy")
    assert second.steps[0].why == ("pass 1 measured ratio 0.50 and left 192 of the 400 MiB it began with (post-copy "
                                   "from 0.20): pre-copy would need about 6 s for the 192 MiB left, which no stop "
                                   "within 500 ms sends; post-copy sends them about once in about 3 s")


def test_steer_starts_post_copy_at_the_first_sample_when_predicted():
    steps, verdicts, steering = run_steering([at(1), at(2, 2.0), at(3, 2.0), at(4, 2.0)], BOTH, Features(),
                                             strategy="post_copy")
    assert (steps, verdicts, steering.strategy) == ([(1, "post_copy", None)], {}, "post_copy")


def test_steer_ignores_a_post_copy_strategy_that_is_not_usable():
    steps, _verdicts, steering = run_steering([at(1), at(2, 2.0)], AUTO, Features(), strategy="post_copy")
    assert (steps, steering.strategy) == ([], "precopy")


def test_post_copy_not_usable_is_never_taken():
    steps, _verdicts, steering = run_steering([at(1), at(2, 2.0), at(3, 2.0)], AUTO, Features())
    assert ("post_copy" not in [what for _pass, what, _value in steps], steering.strategy) == (True, "precopy")


def test_steer_acts_once_per_pass():
    samples = [at(1), at(2, 0.95, 40), at(3, 0.95, 40), at(3, 0.95, 40), at(3, 0.95, 40)]
    steps, _verdicts, steering = run_steering(samples, NONE, Features())
    assert steps == [(3, "wait", None)]
    assert steering.last_pass == 3


def test_strategy_reports_a_throttle_qemu_applied():
    _steps, _verdicts, steering = run_steering(THROTTLED, AUTO, Features())
    assert steering.strategy == "auto_converge"


def test_steering_raises_the_limit_it_reports():
    _steps, _verdicts, steering = run_steering(THROTTLED, AUTO, Features())
    assert steering.downtime_limit_ms == 300


@pytest.mark.parametrize(("throttle_pct", "stop_ms"), [(20, 2), (50, 10), (90, 90), (98, 490), (99, 990)])
def test_the_throttle_stops_a_vcpu_after_each_10_ms_it_runs(throttle_pct, stop_ms):
    assert throttle_stop_ms(throttle_pct) == stop_ms


@pytest.mark.parametrize(("throttle_pct", "room_ms"), [(0, 425), (80, 385), (97, 102), (99, -565)])
def test_the_limit_leaves_room_for_one_throttle_hold_within_the_cap(throttle_pct, room_ms):
    assert limit_room_ms(Policy(), throttle_pct) == room_ms


def test_a_hold_longer_than_the_cap_sends_the_limit_back_to_where_it_started():
    samples = [at(1), at(2, 0.9, 10), at(3, 0.9, 10), at(4, 0.9, 10, throttle=99)]
    policy = AUTO
    steps, steering = steered(policy, samples)
    assert [(step.what, step.value) for step in steps] == [("set_downtime", 200), ("set_downtime", 100)]
    assert steps[-1].why == ("QEMU's throttle at 99 % holds a vCPU 990 ms at a time and a stop can include one hold, "
                             "which alone leaves no room within the budget (500 ms): back to the starting limit of "
                             "100 ms")
    assert steering.downtime_limit_ms == 100
