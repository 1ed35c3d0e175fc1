"""Evacuation against the fake cloud: hv1 is emptied onto hv2 and hv3.

Each guest's migration is one call of the hook the engine's real migrate_guest fills in the module
(tests/integration run that against real hypervisors); here a Mover moves the fake guest the way a
completed, failed or lost migration leaves it, and records how many ran at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from ansible.module_utils import basic
from conftest import SOURCE_URI
from fake_libvirt import GIB, MIB, C

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.evacuation import (
    Evacuation,
    EvacuationHooks,
    EvacuationRequest,
    EvacuationResult,
    SourceGuest,
    migration_why,
    new_entry,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.preflight import Surroundings
from ansible_collections.kvm.live_migration.plugins.module_utils.probes import PortProbe
from ansible_collections.kvm.live_migration.plugins.module_utils.progress import ProgressBoard
from ansible_collections.kvm.live_migration.plugins.module_utils.request import MigrationRequest
from ansible_collections.kvm.live_migration.plugins.modules import evacuate as evacuate_module

BRIDGE_FAIL = {"check": "network", "status": "fail", "message": "hv2 has no bridge br9", "fix": "create bridge br9"}
TEMPLATE = MigrationRequest(name="-", dest_uri="qemu+ssh://hv2/system")
OVER_BUDGET = "the guest was paused 503 ms, over max_downtime_ms=500: ...; the migration completed"


class Mover:
    """Stands in for one live migration: moves the fake guest, or leaves it as a failure would."""

    def __init__(self, cloud, outcomes=None, hold_s=0.05, during=None, after=None):
        self.cloud = cloud
        self.after = after  # called after each migration
        self.outcomes = outcomes or {}  # (guest, destination) -> "aborted" | "lost" | "over_budget"
        self.hold_s = hold_s
        self.during = during  # called once, while the first migration runs
        self.lock = threading.Lock()
        self.running = {}  # destination -> migrations into it now
        self.peak = 0
        self.peak_per_destination = 0
        self.calls = []

    def __call__(self, name, host, bandwidth_mib, on_progress):
        with self.lock:
            self.calls.append((name, host, bandwidth_mib))
            self.running[host] = self.running.get(host, 0) + 1
            self.peak = max(self.peak, sum(self.running.values()))
            self.peak_per_destination = max(self.peak_per_destination, self.running[host])
            during, self.during = self.during, None
        if during:
            during()
        on_progress({"pass": 2, "percent": 60.0, "remaining_bytes": 100 * MIB, "ratio": 0.2, "eta_s": 1.0})
        time.sleep(self.hold_s)
        with self.lock:
            self.running[host] -= 1
        outcome = self.outcomes.get((name, host))
        names = {"source": "hv1.lab", "destination": f"{host}.lab"}  # libvirt's host names, not the inventory's
        if outcome == "aborted":
            return {**names, "status": "aborted", "owner": "hv1.lab", "strategy": "auto_converge",
                    "total_time_ms": 30000,
                    "actions": [{"what": "abort", "why": "ratio 0.95 >= 0.8 for 2 passes and nothing is left"}]}
        if outcome == "refused_before_start":  # e.g. the destination's daemon went down after the planning
            raise MigrationError("cannot connect to hv2", fix="start libvirtd there")
        if outcome == "destination_unread":  # failed in pre-copy, the source named, the destination unread
            return {**names, "status": "failed", "owner": "hv1.lab", "strategy": "precopy", "total_time_ms": 9000,
                    "hosts": {"source": "running", "destination": "unreachable"},
                    "actions": [{"what": "destination_unreachable", "why": "hv2 did not answer"}]}
        if outcome == "unread_after_switch_over":
            raise MigrationError("cannot tell where guest a runs", result={
                **names, "status": "failed", "owner": "unknown",
                "hosts": {"source": "running", "destination": "unreachable"}})
        if outcome == "lost":
            raise MigrationError("the monitor connection to hv1 was lost", result={
                **names, "status": "failed", "owner": "unknown",
                "hosts": {"source": "paused", "destination": "paused"}})
        with self.cloud.lock:
            guest = self.cloud.hosts[SOURCE_URI].guests.pop(name)
            self.cloud.hosts[f"qemu+ssh://{host}/system"].guests[name] = guest
        moved = {**names, "status": "completed", "owner": f"{host}.lab", "strategy": "precopy", "total_time_ms": 4000,
                 "downtime_ms": 30, "passes": 3}
        if self.after:
            self.after()
        if outcome == "over_budget":
            return {**moved, "strategy": "auto_converge", "downtime_ms": 503,
                    "actions": [{"what": "auto_converge", "why": "ratio 1.40 >= 0.8 for 2 passes"},
                                {"what": "downtime_over_budget", "why": OVER_BUDGET}]}
        return moved


def accepting(refused=None):
    """A preflight that accepts every guest except those in ``refused`` ({(guest, destination): [findings]})."""
    refused = refused or {}
    return lambda name, host, running: refused.get((name, host), [])


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def wait(self, seconds, _event):
        self.now += seconds


@pytest.fixture
def hv3(cloud):
    return cloud.add_host("hv3")


def add_guests(cloud, host, *names, memory_gib=1, **options):
    for name in names:
        cloud.add_guest(host, name, memory_kib=memory_gib * GIB // 1024, **options)


def evacuate(cloud, mover=None, preflight=None, check_mode=False, board=None, clock=None, **changes):
    request = EvacuationRequest(**{"destinations": ("hv2", "hv3"), "migration": TEMPLATE, **changes})
    clock = clock or Clock()
    hooks = EvacuationHooks(board=board, preflight=preflight or accepting(), migrate=mover or Mover(cloud),
                            clock=clock, wall_clock=lambda: 1.8e9, wait=clock.wait)
    with Hypervisor(SOURCE_URI, cloud.libvirt) as source:
        return Evacuation(source, request, SOURCE_URI, hooks).run(check_mode=check_mode)


def where(cloud, name):
    return sorted({host.hostname for host in cloud.hosts.values() if name in host.guests})


def test_check_mode_plans_every_guest_and_moves_nothing(cloud, hv1, hv3):
    add_guests(cloud, hv1, "a", "b")
    add_guests(cloud, hv1, "s", state=C.VIR_DOMAIN_SHUTOFF)
    mover = Mover(cloud)
    result = evacuate(cloud, mover, check_mode=True)
    statuses = {name: (entry["status"], entry["to"]) for name, entry in result.entries.items()}
    assert statuses == {"a": ("would_migrate", "hv2"), "b": ("would_migrate", "hv3"), "s": ("would_move", "hv2")}
    assert [placement["name"] for placement in result.plan["placements"]] == ["a", "b", "s"]
    assert mover.calls == []
    assert (where(cloud, "a"), where(cloud, "s")) == (["hv1"], ["hv1"])
    assert result.changed


def test_every_guest_moves_at_most_concurrency_at_once(cloud, hv1, hv3):
    add_guests(cloud, hv1, "a", "b", "c", "d", "e")
    mover = Mover(cloud, hold_s=0.1)
    result = evacuate(cloud, mover, concurrency=2)
    assert result.ok and result.remaining == []
    assert mover.peak == 2
    assert {entry["status"] for entry in result.entries.values()} == {"migrated"}
    assert {name: where(cloud, name) for name in "abcde"} == {
        "a": ["hv2"], "b": ["hv3"], "c": ["hv2"], "d": ["hv3"], "e": ["hv2"]}  # most memory left, ties to hv2
    assert all(entry["started_at"] == "2027-01-15T08:00:00.000Z" for entry in result.entries.values())


def test_one_destination_receives_at_most_max_per_destination(cloud, hv1):
    add_guests(cloud, hv1, "a", "b", "c")
    mover = Mover(cloud, hold_s=0.05)
    result = evacuate(cloud, mover, destinations=("hv2",), concurrency=3, max_per_destination=1)
    assert result.ok
    assert (mover.peak, mover.peak_per_destination) == (1, 1)


@pytest.mark.parametrize(
    ("guests", "bandwidth", "concurrency", "shares"),
    [(("a", "b", "c"), 100, 2, {50}), (("a",), 100, 2, {100}), (("a", "b"), 0, 2, {0}), (("a", "b", "c"), 10, 3, {3})],
    ids=["split-among-two", "one-guest-gets-all", "no-cap", "rounded-down"],
)
def test_the_total_bandwidth_is_split_among_the_migrations_at_once(
        cloud, hv1, hv3, guests, bandwidth, concurrency, shares):
    add_guests(cloud, hv1, *guests)
    mover = Mover(cloud)
    evacuate(cloud, mover, bandwidth_mib=bandwidth, concurrency=concurrency)
    assert {share for _name, _host, share in mover.calls} == shares


def test_a_guest_that_failed_and_runs_on_the_source_is_retried_on_another_destination(cloud, hv1, hv3):
    add_guests(cloud, hv1, "a")
    mover = Mover(cloud, outcomes={("a", "hv2"): "aborted"})
    result = evacuate(cloud, mover)
    entry = result.entries["a"]
    assert (entry["status"], entry["to"], entry["attempts"], entry["tried"]) == ("migrated", "hv3", 2, ["hv2", "hv3"])
    assert where(cloud, "a") == ["hv3"]
    assert result.ok


def test_no_retry_left_or_no_other_destination_leaves_the_guest_on_the_source_and_fails(cloud, hv1):
    add_guests(cloud, hv1, "a", "b")
    mover = Mover(cloud, outcomes={("a", "hv2"): "aborted"})
    result = evacuate(cloud, mover, destinations=("hv2",))
    entry = result.entries["a"]
    assert (entry["status"], entry["attempts"], entry["owner"]) == ("failed", 1, "hv1")
    assert "ratio 0.95 >= 0.8" in entry["why"] and "no other destination takes it" in entry["why"]
    assert result.entries["b"]["status"] == "migrated"
    assert (result.ok, result.remaining) == (False, ["a"])
    assert "a (failed: " in result.summary()


def test_a_guest_whose_failure_left_its_place_unknown_is_never_tried_again(cloud, hv1, hv3):
    add_guests(cloud, hv1, "a")
    mover = Mover(cloud, outcomes={("a", "hv2"): "lost"})
    result = evacuate(cloud, mover)
    entry = result.entries["a"]
    assert (entry["status"], entry["attempts"], entry["owner"]) == ("failed", 1, "unknown")
    assert entry["hosts"] == {"source": "paused", "destination": "paused"}
    assert "check both hosts before acting" in entry["why"]
    assert mover.calls == [("a", "hv2", 0)]
    assert not result.ok


@pytest.mark.parametrize("outcome", ["destination_unread", "unread_after_switch_over"])
def test_a_guest_whose_destination_was_not_read_at_the_end_is_never_tried_on_another_host(cloud, hv1, hv3, outcome):
    """The unread destination may hold a running copy (a cut while it finished): a third host would make another."""
    add_guests(cloud, hv1, "a")
    mover = Mover(cloud, outcomes={("a", "hv2"): outcome})
    result = evacuate(cloud, mover, retries=2)
    entry = result.entries["a"]
    assert (entry["status"], entry["attempts"]) == ("failed", 1)
    assert entry["hosts"] == {"source": "running", "destination": "unreachable"}
    assert mover.calls == [("a", "hv2", 0)]
    assert not result.ok


@pytest.mark.parametrize(
    ("policy", "status", "ok", "left_on_source", "state_on_source"),
    [("fail", "failed", False, [], C.VIR_DOMAIN_RUNNING), ("leave", "left", True, ["bridged"], C.VIR_DOMAIN_RUNNING),
     ("shutdown", "shut_down", True, [], C.VIR_DOMAIN_SHUTOFF)],
    ids=["fail", "leave", "shutdown"],
)
def test_a_guest_no_destination_takes_follows_the_unmovable_policy_and_the_others_move(
        cloud, hv1, policy, status, ok, left_on_source, state_on_source):
    add_guests(cloud, hv1, "bridged", "plain")
    result = evacuate(cloud, preflight=accepting({("bridged", "hv2"): [BRIDGE_FAIL]}), destinations=("hv2",),
                      unmovable=policy)
    entry = result.entries["bridged"]
    assert entry["status"] == status
    assert entry["refusals"] == {"hv2": ["network: hv2 has no bridge br9 (fix: create bridge br9)"]}
    assert "no destination takes it: hv2: network: hv2 has no bridge br9" in entry["why"]
    assert result.entries["plain"]["status"] == "migrated"
    assert (result.ok, result.allowed) == (ok, left_on_source)
    assert hv1.guests["bridged"].state == state_on_source


def test_a_guest_that_ignores_the_shutdown_still_runs_and_fails_the_evacuation(cloud, hv1):
    add_guests(cloud, hv1, "stubborn", refuses=("shutdown",))
    clock = Clock()
    result = evacuate(cloud, preflight=accepting({("stubborn", "hv2"): [BRIDGE_FAIL]}), destinations=("hv2",),
                      unmovable="shutdown", shutdown_timeout_s=30, clock=clock)
    entry = result.entries["stubborn"]
    assert entry["status"] == "failed"
    assert "did not shut down within 30 s and still runs on hv1" in entry["why"]
    assert (result.ok, result.remaining, clock.now) == (False, ["stubborn"], 30.0)


def test_stopped_guests_move_their_definitions(cloud, hv1, hv2):
    add_guests(cloud, hv1, "s", state=C.VIR_DOMAIN_SHUTOFF)
    result = evacuate(cloud, destinations=("hv2",))
    assert result.entries["s"]["status"] == "moved"
    assert where(cloud, "s") == ["hv2"]
    assert hv2.guests["s"].state == C.VIR_DOMAIN_SHUTOFF
    assert result.ok


def test_a_stopped_guest_the_source_will_not_undefine_keeps_one_definition_on_the_source(cloud, hv1):
    add_guests(cloud, hv1, "s", state=C.VIR_DOMAIN_SHUTOFF, refuses=("undefine",))
    result = evacuate(cloud, destinations=("hv2",))
    entry = result.entries["s"]
    assert (entry["status"], entry["owner"]) == ("left", "hv1")
    assert "moving the definition failed, so it stays on hv1" in entry["why"]
    assert where(cloud, "s") == ["hv1"]  # the copy defined on hv2 was removed again


def test_a_stopped_guest_defined_on_both_hosts_after_a_refused_undefine_fails_and_says_so(cloud, hv1, hv2):
    add_guests(cloud, hv1, "s", state=C.VIR_DOMAIN_SHUTOFF, refuses=("undefine",))
    hv2.refuses_undefine = True
    result = evacuate(cloud, destinations=("hv2",))
    entry = result.entries["s"]
    assert (entry["status"], entry["owner"]) == ("failed", "unknown")
    assert "is now defined on both hv1 and hv2" in entry["why"] and "virsh undefine s" in entry["why"]
    assert where(cloud, "s") == ["hv1", "hv2"]
    assert not result.ok


def test_a_guest_refused_before_its_migration_started_is_tried_on_another_host(cloud, hv1, hv3):
    add_guests(cloud, hv1, "a")
    mover = Mover(cloud, outcomes={("a", "hv2"): "refused_before_start"})
    result = evacuate(cloud, mover, retries=1)
    assert result.entries["a"]["status"] == "migrated"
    assert [call[1] for call in mover.calls] == ["hv2", "hv3"]


def test_a_paused_guest_refused_by_the_migration_stays_named_on_the_source(cloud, hv1):
    """Preflight only warns about a paused guest; the migration refuses it before anything moves."""
    add_guests(cloud, hv1, "dozing")
    hv1.guests["dozing"].state, hv1.guests["dozing"].reason = C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_USER
    mover = Mover(cloud, outcomes={("dozing", "hv2"): "refused_before_start", ("dozing", "hv3"):
                                   "refused_before_start"})
    cloud.add_host("hv3")
    result = evacuate(cloud, mover, retries=1)
    entry = result.entries["dozing"]
    assert (entry["status"], entry["owner"], entry["attempts"]) == ("failed", "hv1", 2)
    assert "no retry left; it runs on hv1" in entry["why"]


def test_a_source_that_cannot_be_read_at_the_end_keeps_the_report_and_fails(cloud, hv1, hv2):
    add_guests(cloud, hv1, "a")

    def lose_the_source():
        for connection in cloud.connections:
            if connection.host is hv1:
                connection.dropped = True
    mover = Mover(cloud, after=lose_the_source)
    result = evacuate(cloud, mover, destinations=("hv2",))
    assert result.entries["a"]["status"] == "migrated"
    assert result.source_unread.startswith("hv1 could not be read after the moves")
    assert not result.ok and "which guests still run there is unknown" in result.summary()


def test_a_guest_that_vanished_before_its_shutdown_is_named_not_a_traceback(cloud, hv1):
    add_guests(cloud, hv1, "bridged")

    def vanish(name, host, running):
        hv1.guests.pop("bridged", None)
        return [BRIDGE_FAIL]
    result = evacuate(cloud, preflight=vanish, destinations=("hv2",), unmovable="shutdown")
    entry = result.entries["bridged"]
    assert entry["status"] == "failed" and entry["owner"] == "unknown"
    assert "vanished from hv1 before its shutdown" in entry["why"]


@pytest.mark.parametrize(("policy", "status"), [("leave", "left"), ("move", "moved")])
def test_stopped_guests_follow_the_stopped_policy(cloud, hv1, policy, status):
    add_guests(cloud, hv1, "s", state=C.VIR_DOMAIN_SHUTOFF)
    assert evacuate(cloud, destinations=("hv2",), stopped=policy).entries["s"]["status"] == status


@pytest.mark.parametrize(("state", "fix"), [
    (C.VIR_DOMAIN_PMSUSPENDED, "virsh dompmwakeup asleep"),
    (C.VIR_DOMAIN_CRASHED, "virsh destroy asleep"),
    (C.VIR_DOMAIN_SHUTDOWN, "shutting down; wait until it is off"),
], ids=["pmsuspended", "crashed-and-kept", "shutting-down"])
@pytest.mark.parametrize(("policy", "status", "ok"), [("fail", "failed", False), ("leave", "left", True)])
def test_a_live_guest_that_is_not_running_is_never_moved_as_a_stopped_one(cloud, hv1, state, fix, policy, status, ok):
    """Its definition must not move: undefining it on the source would leave a live transient QEMU there."""
    add_guests(cloud, hv1, "asleep", state=state)
    add_guests(cloud, hv1, "plain")
    mover = Mover(cloud)
    result = evacuate(cloud, mover, destinations=("hv2",), stopped="move", unmovable=policy)
    entry = result.entries["asleep"]
    assert (entry["status"], entry["owner"]) == (status, "hv1")
    assert fix in entry["why"] and "a live guest that no migration takes" in entry["why"], entry["why"]
    assert where(cloud, "asleep") == ["hv1"] and hv1.guests["asleep"].persistent
    assert hv1.guests["asleep"].state == state
    assert [call[0] for call in mover.calls] == ["plain"]
    assert (result.ok, result.remaining, result.allowed) == (ok, [] if ok else ["asleep"], ["asleep"] if ok else [])


def test_a_live_guest_that_is_not_running_is_planned_as_staying_in_check_mode(cloud, hv1):
    add_guests(cloud, hv1, "asleep", state=C.VIR_DOMAIN_PMSUSPENDED)
    result = evacuate(cloud, destinations=("hv2",), check_mode=True)
    assert result.entries["asleep"]["status"] == "would_fail"
    assert where(cloud, "asleep") == ["hv1"]


def test_stopped_fail_counts_only_shut_off_guests(cloud, hv1):
    add_guests(cloud, hv1, "asleep", state=C.VIR_DOMAIN_PMSUSPENDED)
    result = evacuate(cloud, destinations=("hv2",), stopped="fail")
    assert result.entries["asleep"]["status"] == "failed"


def test_stopped_fail_refuses_before_anything_moves(cloud, hv1):
    add_guests(cloud, hv1, "a")
    add_guests(cloud, hv1, "s", state=C.VIR_DOMAIN_SHUTOFF)
    mover = Mover(cloud)
    with pytest.raises(MigrationError, match=r"not running: s \(stopped=fail\)"):
        evacuate(cloud, mover, stopped="fail")
    assert mover.calls == []


def test_the_selection_picks_by_name_pattern_and_reports_names_it_does_not_find(cloud, hv1):
    add_guests(cloud, hv1, "web1", "web2", "db1")
    result = evacuate(cloud, destinations=("hv2",), guests=("web*", "gone"))
    assert {name: entry["status"] for name, entry in result.entries.items()} == {
        "web1": "migrated", "web2": "migrated", "gone": "not_found"}
    assert where(cloud, "db1") == ["hv1"]
    assert result.ok  # db1 was not asked for


def test_an_empty_selection_moves_nothing(cloud, hv1):
    add_guests(cloud, hv1, "a")
    mover = Mover(cloud)
    result = evacuate(cloud, mover, destinations=("hv2",), guests=())
    assert (result.entries, mover.calls, result.ok) == ({}, [], True)


def test_a_guest_started_on_the_source_meanwhile_fails_the_check_of_the_host(cloud, hv1):
    add_guests(cloud, hv1, "a")
    mover = Mover(cloud, during=lambda: add_guests(cloud, hv1, "late"))
    result = evacuate(cloud, mover, destinations=("hv2",))
    assert result.remaining == ["late"]
    assert result.entries["late"]["status"] == "failed"
    assert not result.ok


def test_progress_counts_the_guests_done(cloud, hv1, tmp_path):
    add_guests(cloud, hv1, "a", "b")
    board = ProgressBoard()
    evacuate(cloud, destinations=("hv2",), board=board)
    snapshot = board.snapshot()
    assert (snapshot["total"], snapshot["done"]) == (2, 2)
    assert {entry["outcome"] for entry in snapshot["guests"].values()} == {"migrated"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"destinations": ()}, "destinations is empty"),
        ({"destinations": ("hv1",)}, "destinations include the host being emptied, hv1"),
        ({"concurrency": 0}, "concurrency=0 must be at least 1"),
        ({"max_per_destination": 0}, "max_per_destination=0 must be at least 1"),
        ({"bandwidth_mib": -1}, "bandwidth=-1 must be 0"),
        ({"bandwidth_mib": 1, "concurrency": 2}, "bandwidth=1 MiB/s cannot be split among concurrency=2"),
        ({"memory_reserve_mib": -5}, "memory_reserve_mib=-5 is negative"),
        ({"retries": 4}, "retries=4 is outside 0-3"),
        ({"stopped": "keep"}, "stopped='keep' is not one of move, leave, fail"),
        ({"unmovable": "destroy"}, "unmovable='destroy' is not one of fail, leave, shutdown"),
        ({"shutdown_timeout_s": 0}, "shutdown_timeout=0 must be positive"),
        ({"migration": MigrationRequest(name="-", dest_uri="qemu+ssh://hv2/system", transport="tcp")},
         "transport=tcp sends the guest's memory across the network unencrypted"),
    ],
    ids=["no-destination", "source-as-destination", "concurrency", "per-destination", "bandwidth", "bandwidth-split",
         "reserve", "retries", "stopped", "unmovable", "shutdown-timeout", "cleartext"],
)
def test_bad_requests_are_refused_before_anything_moves(cloud, hv1, changes, message):
    add_guests(cloud, hv1, "a")
    mover = Mover(cloud)
    with pytest.raises(MigrationError, match=message):
        evacuate(cloud, mover, **changes)
    assert mover.calls == []


def test_the_real_preflight_places_what_it_passes_and_refuses_a_missing_bridge(cloud, hv1, hv2, clock):
    """The default preflight hook is the engine's Preflight: its findings decide the plan."""
    add_guests(cloud, hv1, "plain")
    add_guests(cloud, hv1, "bridged", devices="<interface type='bridge'><source bridge='br9'/></interface>")
    hv1.interfaces["br9"] = True
    request = EvacuationRequest(destinations=("hv2",), migration=replace(TEMPLATE, transport="ssh"))
    surroundings = Surroundings(resolve=lambda name: ("10.0.0.12",), probe_port=lambda host, port: PortProbe(
        host, port, "refused"), clock=clock, wait=clock.wait, root="/nonexistent")
    hooks = EvacuationHooks(surroundings=surroundings, clock=clock, wait=clock.wait)
    with Hypervisor(SOURCE_URI, cloud.libvirt) as source:
        result = Evacuation(source, request, SOURCE_URI, hooks).run(check_mode=True)
    assert result.entries["plain"]["status"] == "would_migrate"
    assert result.entries["bridged"]["status"] == "would_fail"
    assert not result.ok  # check mode fails as the evacuation would
    assert result.entries["bridged"]["refusals"] == {"hv2": [
        "network: interface (bridge br9): hv2 has no bridge br9; QEMU could not attach the guest's interface there "
        "(fix: create bridge br9 (with the same uplink as on the source) on hv2, or choose a destination on the same "
        "networks)"]}


def test_a_migrated_guest_whose_stop_outlasted_the_budget_says_so():
    migration = {"strategy": "auto_converge", "total_time_ms": 44816, "passes": 7, "downtime_ms": 501,
                 "actions": [{"what": "downtime_over_budget", "why": "the guest was paused 501 ms"}]}
    assert migration_why(migration) == ("auto_converge in 44816 ms, 7 passes, downtime 501 ms, over the downtime "
                                        "budget (downtime_over_budget)")
    assert migration_why({**migration, "actions": []}).endswith("downtime 501 ms")


def test_a_stop_over_the_budget_is_a_warning_of_the_evacuation_named_by_its_guest(cloud, hv1, hv3):
    add_guests(cloud, hv1, "a", "b")
    result = evacuate(cloud, Mover(cloud, outcomes={("b", "hv2"): "over_budget", ("b", "hv3"): "over_budget"}))

    assert result.ok
    assert result.entries["b"]["status"] == "migrated"
    assert result.entries["b"]["why"].endswith("downtime 503 ms, over the downtime budget (downtime_over_budget)")
    assert (result.entries["a"]["warnings"], result.entries["b"]["warnings"]) == ([], [OVER_BUDGET])
    assert result.warnings == [f"b: {OVER_BUDGET}"]
    assert result.as_dict()["warnings"] == result.warnings


def test_the_evacuate_module_shows_each_warning(module_runner, monkeypatch):
    warned = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda _module, message: warned.append(message))
    moved = {**new_entry(SourceGuest("b", None, "running", 0), "hv1"), "status": "migrated", "to": "hv2",
             "owner": "hv2", "warnings": [OVER_BUDGET]}
    monkeypatch.setattr(evacuate_module, "run_evacuation", lambda params, check_mode, board: EvacuationResult(
        source="hv1", entries={"b": moved}))

    outcome, returned = module_runner(evacuate_module)({"source_uri": SOURCE_URI, "destinations": ["hv2"]})

    assert (outcome, returned["changed"]) == ("exit", True)
    assert warned == returned["evacuation"]["warnings"] == [f"b: {OVER_BUDGET}"]
