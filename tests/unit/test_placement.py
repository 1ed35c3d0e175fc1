"""Placement of an evacuation's guests: pure, table-driven."""

from __future__ import annotations

import pytest
from fake_libvirt import GIB, MIB

from ansible_collections.kvm.live_migration.plugins.module_utils.placement import (
    GuestToPlace,
    choose_destination,
    failed_findings,
    plan_placement,
)

NETWORK_FAIL = {"check": "network", "status": "fail", "message": "hv3 has no bridge br1", "fix": "create bridge br1"}


def guest(name, gib, running=True, **refusals):
    return GuestToPlace(name, gib * GIB, running, {"hv2": refusals.get("hv2", []), "hv3": refusals.get("hv3", [])})


@pytest.mark.parametrize(
    ("guests", "available", "placements", "refused"),
    [
        # The destination with the most memory left takes each guest, the largest first.
        ([guest("a", 1), guest("b", 4), guest("c", 2)], {"hv2": 8 * GIB, "hv3": 6 * GIB},
         {"b": "hv2", "c": "hv3", "a": "hv2"}, []),
        # A destination whose preflight failed takes nothing, whatever its memory.
        ([guest("a", 1, hv2=[NETWORK_FAIL])], {"hv2": 64 * GIB, "hv3": 2 * GIB}, {"a": "hv3"}, []),
        # Memory is counted after what is already placed, and after the reserve.
        ([guest("a", 3), guest("b", 3)], {"hv2": 4 * GIB, "hv3": 4 * GIB}, {"a": "hv2", "b": "hv3"}, []),
        ([guest("a", 3), guest("b", 3), guest("c", 3)], {"hv2": 4 * GIB, "hv3": 4 * GIB},
         {"a": "hv2", "b": "hv3"}, ["c"]),
        # A stopped guest takes no memory: it does not run there.
        ([guest("a", 3), guest("s", 16, running=False)], {"hv2": 4 * GIB, "hv3": 1 * GIB}, {"a": "hv2", "s": "hv2"},
         []),
        # Nobody takes a guest every destination refused.
        ([guest("a", 1, hv2=[NETWORK_FAIL], hv3=[NETWORK_FAIL])], {"hv2": 8 * GIB, "hv3": 8 * GIB}, {}, ["a"]),
    ],
    ids=["most-memory-left", "refused-destination", "after-placed", "no-room-left", "stopped-takes-none",
         "refused-everywhere"],
)
def test_plan_placement(guests, available, placements, refused):
    plan = plan_placement(guests, available, 512 * MIB)
    assert plan.placements == placements
    assert sorted(plan.refused) == refused


def test_refusals_name_each_destination_and_why():
    plan = plan_placement([guest("big", 8, hv3=[NETWORK_FAIL])], {"hv2": 4 * GIB, "hv3": 64 * GIB}, 512 * MIB)
    assert plan.refused == {"big": {
        "hv2": ["memory: 8192 MiB needed, 3584 MiB left after the reserve and the guests placed there before it "
                "(fix: lower evacuate_memory_reserve_mib, add a destination, or move fewer guests)"],
        "hv3": ["network: hv3 has no bridge br1 (fix: create bridge br1)"]}}
    assert plan.as_dict([guest("big", 8)])["memory_left_mib"] == {"hv2": 3584, "hv3": 65024}


def test_a_retry_excludes_the_destinations_tried():
    candidate = guest("a", 1)
    assert choose_destination(candidate, {"hv2": 8 * GIB, "hv3": 2 * GIB}) == "hv2"
    assert choose_destination(candidate, {"hv2": 8 * GIB, "hv3": 2 * GIB}, excluded=["hv2"]) == "hv3"
    assert choose_destination(candidate, {"hv2": 8 * GIB, "hv3": 2 * GIB}, excluded=["hv2", "hv3"]) is None


def test_failed_findings_leave_memory_to_placement():
    findings = [{"check": "memory", "status": "fail", "message": "m", "fix": "f"}, NETWORK_FAIL,
                {"check": "tls", "status": "warn", "message": "w", "fix": "f"}]
    assert failed_findings(findings) == [NETWORK_FAIL]
