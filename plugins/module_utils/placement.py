# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where each guest of an evacuation goes: pure placement over what preflight found.

A guest may go to a destination whose preflight findings hold no failure (memory aside: memory is
counted here, after what is already placed there) and whose available memory, less the reserve and
the guests placed before it, still holds the guest. Among those, the one with the most memory left
wins. Larger guests are placed first, so a small one never takes the only room a large one fits.
Stopped guests are placed by the same rule but take no memory: they do not run there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.kvm.live_migration.plugins.module_utils.units import MIB

# Preflight judges memory against the destination alone; placement judges it against what is placed.
COUNTED_HERE = frozenset({"memory"})


@dataclass(frozen=True)
class GuestToPlace:
    name: str
    memory_bytes: int
    running: bool
    refusals: dict  # destination -> [the failed findings (dicts) of its preflight, memory aside]; [] = accepted


@dataclass
class Plan:
    """``placements``: guest -> destination, in the order they were placed; ``refused``: guest -> {destination:
    [reasons]} for guests no destination takes; ``memory_left``: destination -> bytes left after the plan."""

    placements: dict = field(default_factory=dict)
    refused: dict = field(default_factory=dict)
    memory_left: dict = field(default_factory=dict)

    def as_dict(self, guests):
        sizes = {guest.name: guest.memory_bytes for guest in guests}
        return {"placements": [{"name": name, "to": host, "memory_mib": sizes[name] // MIB}
                               for name, host in self.placements.items()],
                "refused": self.refused,
                "memory_left_mib": {host: left // MIB for host, left in self.memory_left.items()}}


def failed_findings(findings):
    """The failures among a preflight's findings (dicts) that placement does not judge itself."""
    return [finding for finding in findings if finding["status"] == "fail" and finding["check"] not in COUNTED_HERE]


def plan_placement(guests, available_bytes, reserve_bytes):
    """A Plan for ``guests`` (GuestToPlace) over destinations with ``available_bytes`` (destination -> bytes)."""
    plan = Plan(memory_left={host: available - reserve_bytes for host, available in available_bytes.items()})
    for guest in sorted(guests, key=lambda guest: (not guest.running, -guest.memory_bytes, guest.name)):
        host = choose_destination(guest, plan.memory_left)
        if host is None:
            plan.refused[guest.name] = refusals_of(guest, plan.memory_left)
            continue
        plan.placements[guest.name] = host
        if guest.running:
            plan.memory_left[host] -= guest.memory_bytes
    return plan


def choose_destination(guest, memory_left, excluded=()):
    """The accepting destination with the most memory left that still holds ``guest``, or None."""
    fitting = [host for host, refusals in guest.refusals.items()
               if not refusals and host not in excluded and host in memory_left
               and (not guest.running or memory_left[host] >= guest.memory_bytes)]
    return max(fitting, key=lambda host: memory_left[host], default=None)  # a tie goes to the destination named first


def refusals_of(guest, memory_left, excluded=()):
    """destination -> why it does not take ``guest``: its preflight failures, or too little memory left."""
    reasons = {}
    for host, refusals in guest.refusals.items():
        if host in excluded:
            reasons[host] = ["already tried"]
        elif refusals:
            reasons[host] = [f"{finding['check']}: {finding['message']} (fix: {finding['fix']})"
                             for finding in refusals]
        else:
            left = max(0, memory_left.get(host, 0))
            reasons[host] = [f"memory: {guest.memory_bytes // MIB} MiB needed, {left // MIB} MiB left after the "
                             "reserve and the guests placed there before it (fix: lower evacuate_memory_reserve_mib, "
                             "add a destination, or move fewer guests)"]
    return reasons
