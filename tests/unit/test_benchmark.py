"""The convergence benchmark's pure parts: the anchor policies (as their sources describe them) and the guest's
cost read from its counter lines."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from ansible_collections.kvm.live_migration.plugins.module_utils import policy as engine
from ansible_collections.kvm.live_migration.plugins.module_utils.features import Features

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
anchors = importlib.import_module("anchors")
convergence = importlib.import_module("convergence")

MIB = 1024 * 1024
GIB = 1024 * MIB


def drive(anchor, readings):
    """[(elapsed_s, action)] for a list of (elapsed_s, iteration, remaining MiB)."""
    taken = []
    for elapsed, iteration, remaining_mib in readings:
        reading = anchors.Reading(elapsed_s=elapsed, iteration=iteration, remaining_bytes=remaining_mib * MIB)
        taken += [(elapsed, what, value) for what, value in anchor.step(reading)]
    return taken


def test_nova_ramps_the_downtime_from_50_ms_one_step_per_150_s_for_small_guests():
    nova = anchors.make("nova", 512 * MIB)
    assert nova.initial_downtime_ms == 50
    taken = drive(nova, [(149, 2, 300), (151, 3, 300), (301, 4, 300), (1601, 5, 300)])
    assert taken == [(151, "downtime", 95), (301, "downtime", 140), (1601, "abort", "completion timeout 1600 s")]


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        # Pass 1 never switches; in pass 2 a poll with less than 10 % progress does.
        ([(0.5, 1, 500), (1.0, 1, 499), (1.5, 2, 300), (2.0, 2, 280)], [(2.0, "post_copy")]),
        ([(0.5, 2, 300), (1.0, 2, 200), (1.5, 2, 100)], []),
        ([(0.5, 2, 100), (1.0, 2, 150)], [(1.0, "post_copy")]),  # a sync raised the remaining data
    ],
    ids=["slow-progress", "fast-progress", "sync"],
)
def test_nova_switches_to_post_copy_on_less_than_10_pct_progress_per_poll(readings, expected):
    taken = drive(anchors.make("nova-pc", 512 * MIB), readings)
    assert [(elapsed, what) for elapsed, what, _why in taken] == expected


def test_nova_without_permit_post_copy_never_switches():
    assert drive(anchors.make("nova", 512 * MIB), [(0.5, 2, 100), (1.0, 2, 150)]) == []


def test_ovirt_minimal_downtime_applies_one_item_per_poll_on_a_new_pass_then_aborts():
    ovirt = anchors.make("ovirt-minimal", 512 * MIB)
    assert (ovirt.initial_downtime_ms, ovirt.auto_converge, ovirt.post_copy, ovirt.poll_s) == (100, True, False, 10)
    readings = [(10, 1, 500), (20, 2, 40), (30, 2, 40), (40, 3, 40), (50, 5, 40), (60, 6, 40), (70, 7, 40),
                (80, 8, 40), (90, 9, 40)]
    assert [(elapsed, what, value) for elapsed, what, value in drive(ovirt, readings) if what == "downtime"] == [
        (20, "downtime", 150), (40, "downtime", 200), (50, "downtime", 300), (60, "downtime", 400),
        (70, "downtime", 500)]
    again = anchors.make("ovirt-minimal", 512 * MIB)
    assert drive(again, readings)[-1] == (80, "abort", "schedule item after pass 8")


def test_ovirt_post_copy_schedule_switches_after_two_downtime_steps():
    ovirt = anchors.make("ovirt-pc", 512 * MIB)
    assert ovirt.post_copy is True
    taken = drive(ovirt, [(10, 2, 40), (20, 3, 40), (30, 4, 40)])
    assert [what for _elapsed, what, _value in taken] == ["downtime", "downtime", "post_copy"]


def test_proxmox_doubles_the_downtime_after_more_than_5_polls_without_progress():
    proxmox = anchors.make("proxmox", 512 * MIB)
    readings = [(n, 2, 40) for n in range(1, 15)]
    assert drive(proxmox, readings) == [(7, "downtime", 200), (13, "downtime", 400)]
    assert drive(anchors.make("proxmox", 512 * MIB), [(n, 2, 100 - n) for n in range(1, 15)]) == []


def test_kubevirt_aborts_without_progress_for_150_s_or_after_150_s_per_gib():
    stuck = drive(anchors.make("kubevirt", 2 * GIB), [(1, 1, 40), (100, 3, 41), (151.5, 9, 40)])
    assert stuck == [(151.5, "abort", "no new low of the remaining data for 150 s")]
    slow = drive(anchors.make("kubevirt", 512 * MIB), [(n, n, 500 - n) for n in range(1, 80, 2)])
    assert slow[0] == (77, "abort", "completion timeout 75 s")


def ticks(rate_per_ms, until_ms, stall=None, slow_from=None):
    """Counter lines every 200 ms at ``rate_per_ms`` pages, with an optional gap and a halved rate from a time."""
    lines, dirtied, at = [], 0, 0
    while at <= until_ms:
        lines.append((at, int(dirtied)))
        step = 200
        if stall and at == stall[0]:
            step = stall[1]
        rate = rate_per_ms / 2 if slow_from is not None and at >= slow_from else rate_per_ms
        dirtied += 0 if step != 200 else rate * step  # a stalled guest does nothing
        at += step
    return lines


def test_guest_cost_counts_lost_work_and_the_longest_stall():
    before = [line for line in ticks(10, 3000) if line[0] <= 3000]
    after = ticks(10, 20_000, stall=(5000, 1200), slow_from=6000)
    cost = convergence.guest_cost(before, after, total_ms=8000)
    # The window is 3 s to 12 s (8 s and 1 s more): stopped from 5 s to 6.2 s, then at half its rate, so it did
    # 2 + 2.9 s of its work in 9 s.
    assert cost == {"lost_s": 4.1, "stall_ms": 1000}


def test_guest_cost_of_an_idle_guest_has_no_lost_work():
    idle = ticks(0, 10_000)
    assert convergence.guest_cost(idle[:10], idle, total_ms=2000) == {"lost_s": None, "stall_ms": 0}


def test_medians_hide_no_failed_run():
    completed = {"outcome": "completed", "time_ms": 10_000, "downtime_ms": 40}
    row = convergence.summary([completed, {**completed, "time_ms": 12_000}, {"outcome": "aborted", "time_ms": 30}])
    assert (row["completed"], row["runs"], row["time_s"], row["spread_s"]) == (2, 3, None, (10.0, 12.0))


def test_the_convergence_chart_draws_a_real_run_and_refuses_an_empty_one(tmp_path):
    chart = importlib.import_module("convergence_chart")
    result = Path(__file__).resolve().parents[2] / "docs" / "images" / "convergence-heavy.json"
    assert chart.main([str(result), str(tmp_path / "chart.png")]) == 0
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")
    migration = {"timeline": [{"pass": 1, "sampled": False, "time_ms": 10}], "actions": []}
    with pytest.raises(ValueError, match="no sampled pass"):
        chart.draw(migration)


def test_the_chart_counts_what_is_left_at_the_stop_not_the_last_polls_remainder():
    chart = importlib.import_module("convergence_chart")
    entry = {"pass": 2, "sampled": True, "ratio": 0.8, "remaining_bytes": 8 * MIB, "time_ms": 13000,
             "transfer_rate_bps": 64 * MIB, "expected_downtime_ms": 5000, "downtime_limit_ms": 500}
    assert chart.left_mib(entry) == 320
    assert chart.fits_limit_mib(entry) == 32
    assert chart.sampled_passes([{**entry, "pass": 1, "ratio": None}, entry]) == [entry]


def test_the_results_are_written_as_markdown_json_and_charts(tmp_path):
    run = {"outcome": "completed", "time_ms": 9000, "downtime_ms": 30, "data_bytes": 600 * MIB, "passes": 4,
           "pass1_bytes": 450 * MIB, "lost_s": 1.5, "stall_ms": 40, "actions": [], "intact": True,
           "series": [(0.0, 500.0), (0.5, 470.0), (9.0, 3.0)]}
    runs = {("heavy", "ours-ac"): [run], ("heavy", "libvirt-ac"): [{**run, "time_ms": 30000, "lost_s": 6.0}]}
    convergence.write_results(runs, {}, repeats=1, minutes=2.0, directory=tmp_path)
    text = (tmp_path / "convergence.md").read_text()
    assert "# Convergence benchmark, " in text and "medians of 1 run(s)" in text
    assert "heavy     ours-ac" in text and "PASS  heavy, ours-ac: time <= 0.4 x the best throttling anchor" in text
    assert (tmp_path / "remaining-heavy.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "guest-work-lost.png").read_bytes().startswith(b"\x89PNG")
    assert "heavy/ours-ac" in (tmp_path / "convergence.json").read_text()


def test_the_default_matrix_runs_fewer_policies_where_they_do_not_differ():
    assert set(convergence.DEFAULT_POLICIES["idle"]) < set(convergence.POLICIES)
    assert {"ours-ac", "ours-pc"} <= set(convergence.DEFAULT_POLICIES["moderate-2g"])
    assert {"bursty", "moderate-2g"} <= set(convergence.WORKLOADS)
    assert "kvmlm.burst_ms=" in convergence.WORKLOADS["bursty"][4]


def test_an_anchor_cut_off_counts_with_its_cut_off_as_a_lower_bound():
    done = {"outcome": "completed", "time_ms": 20000, "downtime_ms": 30, "pass1_bytes": 450 * MIB, "lost_s": 3.0,
            "intact": True}
    cut = {"outcome": "not done in 60 s", "time_ms": 60100, "lost_s": 9.0}
    runs = {("heavy", "ours-ac"): [done], ("heavy", "libvirt-ac"): [cut], ("heavy", "proxmox"): [cut]}
    goals = {text: passed for text, _measured, _limit, passed in convergence.targets(runs)}
    assert goals["heavy, ours-ac: time <= 0.4 x the best throttling anchor (libvirt-ac, cut off: > 60 s)"] is True
    assert goals["heavy, ours-ac: guest work lost <= libvirt-ac, cut off: > 60 s's (s)"] is True
    runs[("heavy", "ours-ac")] = [{**done, "time_ms": 25000}]
    goals = {text: passed for text, _measured, _limit, passed in convergence.targets(runs)}
    assert goals["heavy, ours-ac: time <= 0.4 x the best throttling anchor (libvirt-ac, cut off: > 60 s)"] is False


def test_a_goal_below_one_copy_of_memory_says_so():
    run = {"outcome": "completed", "time_ms": 8400, "downtime_ms": 10, "pass1_bytes": 460 * MIB, "intact": True}
    runs = {("moderate", "nova-pc"): [run], ("moderate", "ours-pc"): [{**run, "time_ms": 8000}]}
    [goal] = [text for text, *_rest in convergence.targets(runs) if "0.75 x" in text]
    assert goal.endswith("the limit is below one copy of memory at the cap (7.2 s), which no policy beats")


def test_the_full_matrix_runs_every_policy_and_the_evacuation():
    assert convergence.policies_for("heavy", [], full=True) == convergence.POLICIES
    assert "kubevirt" not in convergence.policies_for("heavy", [], full=False)
    assert convergence.policies_for("heavy", ["proxmox"], full=False) == ["proxmox"]


def test_the_throttle_goal_says_when_qemu_began_to_throttle():
    run = {"outcome": "completed", "time_ms": 11000, "downtime_ms": 20, "pass1_bytes": 450 * MIB, "intact": True,
           "throttle_after_pass1_s": 2.1}
    later, earlier = {**run, "throttle_after_pass1_s": 2.4}, {**run, "throttle_after_pass1_s": 1.9}
    runs = {("hot-set", "ours-ac"): [run, earlier, later],
            ("hot-set", "libvirt-ac"): [{**run, "time_ms": 26000, "throttle_after_pass1_s": 9.0}]}
    [goal] = [text for text, *_rest in convergence.targets(runs) if "0.4 x" in text]
    assert goal.endswith("(libvirt-ac); QEMU's throttle began 2.1 s after pass 1")


def test_the_throttle_delay_counts_from_the_end_of_pass_1():
    assert convergence.seconds_after(8.2, 10.3) == 2.1
    assert convergence.seconds_after(8.2, None) is None
    assert convergence.seconds_after(None, 3.0) is None


@pytest.mark.parametrize(
    ("workloads", "policies", "transports", "expected"),
    [
        (["heavy"], ["ours-ac", "ours-ac@90", "ours-pc@99", "libvirt", "nova-pc"], ["tcp", "tls-p4"], []),
        (["hevy"], [], [], ["workload 'hevy'"]),
        ([], ["nova-PC"], [], ["policy 'nova-PC'"]),
        ([], ["ours-ac@100", "ours-ac@5", "ours@90"], [],
         ["policy 'ours-ac@100'", "policy 'ours-ac@5'", "policy 'ours@90'"]),
        ([], [], ["tls-p0", "udp"], ["transport 'tls-p0'", "transport 'udp'"]),
    ],
    ids=["known", "workload-typo", "policy-typo", "forced-start-out-of-range", "transports"],
)
def test_the_command_line_names_are_checked_before_the_lab_comes_up(workloads, policies, transports, expected):
    unknown = convergence.unknown_names(workloads, policies, transports)
    assert [problem.split(" (")[0] for problem in unknown] == expected


def test_a_forced_throttle_start_replaces_the_budgets_choice_in_the_engine(monkeypatch):
    monkeypatch.setattr(engine, "throttle_plan", engine.throttle_plan)  # restored after the test
    features = Features(auto_converge=True, post_copy=True)
    heavy = (160 * MIB, 512 * MIB, 64 * MIB, engine.Policy(), features)
    assert engine.predict(*heavy)["throttle_initial_pct"] == 97  # the budget's choice for 500 ms
    assert (convergence.forced_throttle_start("ours-ac@90"), convergence.forced_throttle_start("ours-ac")) == (90, None)
    convergence.force_throttle_start(90)
    plan = engine.predict(*heavy)
    assert (plan["throttle_initial_pct"], plan["throttle_step_pct"]) == (90, 1)
    convergence.force_throttle_start(99)
    assert engine.predict(*heavy)["throttle_step_pct"] == 1


def test_the_results_heading_marks_a_stack_this_machine_does_not_have(monkeypatch):
    """A controller without QEMU or libvirtd (the ansible-core matrix's chroot) still writes the results."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert convergence.machine().endswith("QEMU ? / libvirt ? under TCG")
