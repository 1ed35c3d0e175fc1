# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Empty a hypervisor: place every selected guest, move them a few at a time, check what is left.

``Evacuation.run`` reads the source's guests from libvirt, runs preflight for each guest against
each destination, plans where each goes (``placement``) before anything moves, then:

- moves the definitions of stopped guests (``stopped: move``; storage must be shared, which
  preflight's storage check proves) one by one: define on the destination, undefine on the source,
  and the definition on the destination removed again when the source refuses to let go;
- live-migrates the running ones, at most ``concurrency`` at once and ``max_per_destination`` into
  one host, each with its share of ``bandwidth``; a guest whose migration failed and that still
  runs on the source is tried once more (``retries``) on another destination that takes it;
- applies the ``unmovable`` policy to the guests still on the source (fail, leave, shutdown);
- reads the source again: the run fails if a guest runs there that the policy did not allow.

The per-guest report carries from, to, status, time, downtime, strategy, attempts and why.
Preflight and each migration come in as functions (the real engine by default), so the unit tests
drive the scheduling against the fake libvirt.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError, libvirt_errors
from ansible_collections.kvm.live_migration.plugins.module_utils.migration import migrate_guest
from ansible_collections.kvm.live_migration.plugins.module_utils.ownership import UNREACHABLE
from ansible_collections.kvm.live_migration.plugins.module_utils.placement import (
    GuestToPlace,
    choose_destination,
    failed_findings,
    plan_placement,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.preflight import Preflight
from ansible_collections.kvm.live_migration.plugins.module_utils.progress import ProgressBoard
from ansible_collections.kvm.live_migration.plugins.module_utils.request import (
    MigrationRequest,
    PreflightRequest,
    ssh_uri,
    validate_request,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.result import warnings_of
from ansible_collections.kvm.live_migration.plugins.module_utils.units import KIB, MIB

STOPPED_POLICIES = ("move", "leave", "fail")
UNMOVABLE_POLICIES = ("fail", "leave", "shutdown")
MAX_RETRIES = 3
# What moving a stopped guest's definition depends on; the other checks judge a live migration.
COLD_MOVE_CHECKS = frozenset({"host_identity", "transport", "architecture", "machine_type", "cpu", "storage",
                              "network", "destination_name"})
SHUTDOWN_POLL_S = 1.0


@dataclass
class EvacuationRequest:
    """What the user asked for; ``migration`` holds the options every migration gets (name and URI aside)."""

    destinations: tuple
    migration: MigrationRequest
    guests: tuple | None = None  # names, UUIDs or shell patterns; None selects every guest, () none
    concurrency: int = 2
    max_per_destination: int | None = None  # None: as many as concurrency
    bandwidth_mib: int = 0  # in total, split among the migrations that run at once
    memory_reserve_mib: int = 512
    retries: int = 1
    stopped: str = "move"
    unmovable: str = "fail"
    shutdown_timeout_s: int = 300

    @property
    def per_destination(self):
        return self.max_per_destination or self.concurrency


def validate_evacuation(request, source_name):
    """Raise MigrationError naming the bad value and the fix, before anything moves."""
    checks = (
        (not request.destinations, "destinations is empty: there is nowhere to move the guests",
         "give the hypervisors that may take the guests (evacuate_destinations, or a group with other hosts)"),
        (source_name in request.destinations, f"destinations include the host being emptied, {source_name}",
         f"remove {source_name} from the destinations"),
        (request.concurrency < 1, f"concurrency={request.concurrency} must be at least 1",
         "give how many migrations may run at once, e.g. 2"),
        (request.max_per_destination is not None and request.max_per_destination < 1,
         f"max_per_destination={request.max_per_destination} must be at least 1",
         "give how many migrations one destination may receive at once, or omit it"),
        (request.bandwidth_mib < 0, f"bandwidth={request.bandwidth_mib} must be 0 (no cap) or a positive MiB/s",
         "give the MiB/s all migrations together may use, or 0"),
        (0 < request.bandwidth_mib < request.concurrency,
         f"bandwidth={request.bandwidth_mib} MiB/s cannot be split among concurrency={request.concurrency} "
         "migrations (each needs at least 1 MiB/s)", "raise bandwidth or lower concurrency"),
        (request.memory_reserve_mib < 0, f"memory_reserve_mib={request.memory_reserve_mib} is negative",
         "give the MiB each destination keeps free beyond the guests, e.g. 512"),
        (not 0 <= request.retries <= MAX_RETRIES, f"retries={request.retries} is outside 0-{MAX_RETRIES}",
         "give how many other destinations a failed guest is tried on, e.g. 1"),
        (request.stopped not in STOPPED_POLICIES,
         f"stopped={request.stopped!r} is not one of {', '.join(STOPPED_POLICIES)}",
         "choose what happens to guests that are defined but not running"),
        (request.unmovable not in UNMOVABLE_POLICIES,
         f"unmovable={request.unmovable!r} is not one of {', '.join(UNMOVABLE_POLICIES)}",
         "choose what happens to running guests that no destination can take"),
        (request.shutdown_timeout_s <= 0, f"shutdown_timeout={request.shutdown_timeout_s} must be positive",
         "give the seconds a guest may take to shut down, e.g. 300"),
    )
    for bad, message, fix in checks:
        if bad:
            raise MigrationError(message, fix=fix)
    validate_request(replace(request.migration, name="-", dest_uri=ssh_uri(request.destinations[0])))
    return request


@dataclass
class SourceGuest:
    name: str
    uuid: str
    state: str
    memory_bytes: int

    @property
    def running(self):
        return self.state in ("running", "blocked", "paused")

    @property
    def stopped(self):
        """Only a shut-off guest has no QEMU: its definition may move. Suspended to memory (pmsuspended), crashed
        and kept, or shutting down, a guest is a live process that neither a live migration nor a move takes."""
        return self.state == "shutoff"


# Why each live state that no migration takes cannot move, and what makes it movable.
LIVE_BUT_UNMOVABLE = {
    "pmsuspended": "suspended by its own OS (pmsuspended); wake it with 'virsh dompmwakeup {name}' there",
    "crashed": "crashed and kept for inspection (on_crash=preserve); destroy it with 'virsh destroy {name}' there "
               "once inspected",
    "shutdown": "shutting down; wait until it is off",
}


@dataclass
class EvacuationResult:
    source: str
    entries: dict = field(default_factory=dict)  # guest -> report entry
    plan: dict = field(default_factory=dict)
    remaining: list = field(default_factory=list)  # running on the source at the end, not allowed to stay
    allowed: list = field(default_factory=list)  # running on the source at the end, as the policy allows
    check_mode: bool = False
    source_unread: str | None = None  # why the source could not be read at the end

    @property
    def ok(self):
        return not self.remaining and self.source_unread is None and not any(
            entry["status"] in ("failed", "would_fail") for entry in self.entries.values())

    @property
    def changed(self):
        return any(entry["status"] in ("migrated", "moved", "shut_down") for entry in self.entries.values()) or (
            self.check_mode and any(entry["status"].startswith("would_") for entry in self.entries.values()))

    def report(self):
        return sorted(self.entries.values(), key=lambda entry: (entry["started_at"] or "~", entry["name"]))

    def summary(self):
        """One line: how many moved, and each guest that did not with why."""
        counts = {}
        for entry in self.entries.values():
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        text = f"{self.source}: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        trouble = [f"{entry['name']} ({entry['status']}: {entry['why']})" for entry in self.report()
                   if entry["status"] in ("failed", "left")]
        if self.remaining:
            text += f"; still running on {self.source}: {', '.join(self.remaining)}"
        if self.source_unread:
            text += f"; {self.source_unread}"
        return text + (f"; {'; '.join(trouble)}" if trouble else "")

    @property
    def warnings(self):
        """What the migrations that moved guests warned about, each named by its guest."""
        return [f"{entry['name']}: {warning}" for entry in self.report() for warning in entry["warnings"]]

    def as_dict(self):
        return {"source": self.source, "ok": self.ok, "report": self.report(),
                "guests": {entry["name"]: entry for entry in self.report()}, "plan": self.plan,
                "remaining": self.remaining, "allowed_to_stay": self.allowed, "source_unread": self.source_unread,
                "summary": self.summary(),
                "warnings": self.warnings}


def new_entry(guest, source_name):
    return {"name": guest.name, "uuid": guest.uuid, "from": source_name, "to": None, "was": guest.state,
            "status": "pending", "why": None, "attempts": 0, "tried": [], "time_ms": None, "downtime_ms": None,
            "strategy": None, "started_at": None, "ended_at": None, "owner": source_name, "refusals": None,
            "warnings": []}


def utc_iso(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


@dataclass
class EvacuationHooks:
    """What the evacuation reaches beyond the source's libvirt through (replaced in tests).

    ``preflight(name, destination, running)`` returns the destination's failed findings (dicts) for the guest;
    ``migrate(name, destination, bandwidth_mib, on_progress)`` returns a migration result (dict) or raises
    MigrationError; None for either means the real engine. ``surroundings`` go to the real preflight.
    """

    board: ProgressBoard | None = None
    preflight: object = None
    migrate: object = None
    surroundings: object = None
    clock: object = time.monotonic
    wall_clock: object = time.time
    wait: object = None  # (seconds, event) -> None


class Evacuation:
    """Empties the hypervisor behind ``source`` (an open Hypervisor on ``source_uri``) onto the destinations."""

    def __init__(self, source, request, source_uri="qemu:///system", hooks=None):
        hooks = hooks or EvacuationHooks()
        self.source = source
        self.lv = source.lv
        self.request = request
        self.source_uri = source_uri
        self.board = hooks.board or ProgressBoard()
        self.preflight = hooks.preflight or self._preflight
        self.migrate = hooks.migrate or self._migrate
        self.surroundings = hooks.surroundings
        self.clock = hooks.clock
        self.wall_clock = hooks.wall_clock
        self.wait = hooks.wait or (lambda seconds, event: event.wait(seconds))
        self._to_place = {}
        self.source_name = None
        self.guests = {}
        self.memory_left = {}

    # -- public -----------------------------------------------------------------------------

    def run(self, check_mode=False):
        self.source_name = self.source.hostname()
        validate_evacuation(self.request, self.source_name)
        found, missing = self._select(self._read_guests())
        self.guests = {guest.name: guest for guest in found}
        result = EvacuationResult(self.source_name, check_mode=check_mode)
        result.entries = {guest.name: new_entry(guest, self.source_name) for guest in found}
        for name in missing:
            result.entries[name] = {**new_entry(SourceGuest(name, None, "absent", 0), self.source_name),
                                    "status": "not_found", "owner": None,
                                    "why": f"no guest matches {name!r} on {self.source_name}"}
        stopped = [guest for guest in found if guest.stopped]
        if stopped and self.request.stopped == "fail":
            raise MigrationError(f"guests defined on {self.source_name} but not running: "
                                 f"{', '.join(guest.name for guest in stopped)} (stopped=fail)",
                                 fix="start or undefine them, or set stopped: move (their definitions move) or "
                                     "leave (they stay)")
        movable = [guest for guest in found if guest.running or (guest.stopped and self.request.stopped == "move")]
        for guest in found:
            if guest.stopped and guest not in movable:
                self._end(result.entries[guest.name], "left", f"not running (state {guest.state}); stopped=leave "
                                                              f"keeps its definition on {self.source_name}",
                          self.source_name)
            elif guest not in movable:
                self._refuse_live_unmovable(result.entries[guest.name], guest, check_mode)
        plan = self._plan(movable)
        result.plan = plan.as_dict(movable)
        for name, reasons in plan.refused.items():
            result.entries[name]["refusals"] = reasons
        if check_mode:
            return self._would(result, plan)
        self.board.expect(len(movable))
        for guest in movable:
            self.board.update(guest.name, state="waiting", destination=plan.placements.get(guest.name))
        for guest in movable:
            if not guest.running and guest.name in plan.placements:
                self._move_definition(result.entries[guest.name], plan.placements[guest.name])
        self._migrate_running(result, {name: host for name, host in plan.placements.items()
                                       if self.guests[name].running})
        for name, reasons in plan.refused.items():
            result.entries[name]["why"] = refused_why(reasons)
        self._apply_unmovable_policy(result)
        self._check_source(result)
        return result

    # -- reading and planning --------------------------------------------------------------

    def _read_guests(self):
        with libvirt_errors(self.lv, f"listing the guests of {self.source_name}"):
            domains = self.source.conn.listAllDomains(0)
        guests = []
        for domain in domains:
            state = self.source.describe(domain)
            if state is not None:
                with libvirt_errors(self.lv, f"reading the memory of {state.name!r}"):
                    memory = domain.maxMemory() * KIB
                guests.append(SourceGuest(state.name, state.uuid, state.state, memory))
        return sorted(guests, key=lambda guest: guest.name)

    def _select(self, guests):
        """(the guests the patterns select, the plain names that match no guest)."""
        patterns = self.request.guests
        if patterns is None:
            return guests, []
        chosen = [guest for guest in guests
                  if any(fnmatch.fnmatchcase(guest.name, pattern) or guest.uuid == pattern for pattern in patterns)]
        plain = [pattern for pattern in patterns if not any(char in pattern for char in "*?[")]
        missing = [name for name in plain if not any(name in (guest.name, guest.uuid) for guest in guests)]
        return chosen, missing

    def _plan(self, movable):
        available = {host: self._available_memory(host) for host in self.request.destinations}
        to_place = [GuestToPlace(guest.name, guest.memory_bytes, guest.running,
                                 {host: self.preflight(guest.name, host, guest.running)
                                  for host in self.request.destinations}) for guest in movable]
        self._to_place = {guest.name: guest for guest in to_place}
        plan = plan_placement(to_place, available, self.request.memory_reserve_mib * MIB)
        self.memory_left = dict(plan.memory_left)
        return plan

    def _available_memory(self, host):
        """Bytes the destination can give guests; 0 when it cannot be read (preflight then says why)."""
        try:
            with Hypervisor(ssh_uri(host), self.lv) as destination:
                return destination.memory()["available_bytes"]
        except MigrationError:
            return 0

    def _preflight(self, name, host, running):
        request = PreflightRequest(**{**dataclasses.asdict(self.request.migration), "name": name,
                                      "dest_uri": ssh_uri(host), "memory_margin_mib": 0,
                                      "measure_dirty_rate": False})
        findings = Preflight(self.source, request, self.surroundings).run().as_dict()["findings"]
        if not running:
            findings = [finding for finding in findings if finding["check"] in COLD_MOVE_CHECKS]
        return failed_findings(findings)

    def _would(self, result, plan):
        for name, host in plan.placements.items():
            entry = result.entries[name]
            entry["to"] = host
            entry["status"] = "would_migrate" if self.guests[name].running else "would_move"
            entry["why"] = f"{host} passes preflight and has the most memory left"
        for name in plan.refused:
            entry = result.entries[name]
            entry["status"] = f"would_{self._unmovable_outcome()}" if self.guests[name].running else "would_leave"
            entry["why"] = refused_why(plan.refused[name])
        return result

    def _refuse_live_unmovable(self, entry, guest, check_mode):
        """A live QEMU that is not running: it stays (unmovable=leave) or fails the evacuation; never a move."""
        how = LIVE_BUT_UNMOVABLE.get(guest.state, f"in state {guest.state}; make it run or shut it off")
        leave = self.request.unmovable == "leave"
        outcome = (f"left on {self.source_name} (unmovable=leave)" if leave
                   else f"it keeps {self.source_name} from being empty")
        why = f"a live guest that no migration takes: {how.format(name=guest.name)}, then run this again; {outcome}"
        status = ("would_be_left" if leave else "would_fail") if check_mode else ("left" if leave else "failed")
        self._end(entry, status, why, self.source_name)

    def _unmovable_outcome(self):
        return {"fail": "fail", "leave": "be_left", "shutdown": "shut_down"}[self.request.unmovable]

    # -- stopped guests --------------------------------------------------------------------

    def _move_definition(self, entry, host):
        """Define the stopped guest on ``host`` and undefine it here; never two definitions at the end."""
        name, lv = entry["name"], self.lv
        self._begin(entry, host)
        try:
            with Hypervisor(ssh_uri(host), lv) as destination:
                domain = self.source.find_domain(name)
                state = None if domain is None else self.source.describe(domain)
                if state is None or state.state != "shutoff":
                    self._end(entry, "failed", f"{name} changed on {self.source_name} while it was being moved "
                                               f"({'gone' if state is None else state.state})", self.source_name)
                    return
                flags = lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE | lv.VIR_DOMAIN_XML_MIGRATABLE
                with libvirt_errors(lv, f"defining {name} on {host}"):
                    destination.conn.defineXML(domain.XMLDesc(flags))
                try:
                    with libvirt_errors(lv, f"undefining {name} on {self.source_name}"):
                        domain.undefineFlags(getattr(lv, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM", 0))
                except MigrationError as refused:
                    try:
                        with libvirt_errors(lv, f"removing the new definition of {name} on {host} again"):
                            destination.find_domain(name).undefineFlags(
                                getattr(lv, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM", 0))
                    except MigrationError as kept:
                        self._end(entry, "failed", f"{name} is now defined on both {self.source_name} and {host}: "
                                                   f"{refused}; then {kept}. Undefine it on {host} ('virsh undefine "
                                                   f"{name}' there, keeping its NVRAM with --keep-nvram) before "
                                                   "starting it anywhere", "unknown")
                        return
                    raise
        except MigrationError as error:
            self._end(entry, "left", f"moving the definition failed, so it stays on {self.source_name}: {error}",
                      self.source_name)
            return
        self._end(entry, "moved", f"defined on {host} (not running), undefined on {self.source_name}", host)

    # -- running guests --------------------------------------------------------------------

    def _migrate_running(self, result, placements):
        share = self._bandwidth_share(len(placements))
        waiting = deque(placements.items())
        finished = queue.Queue()
        active = {}  # guest -> destination
        while waiting or active:
            while len(active) < self.request.concurrency:
                picked = self._next_to_start(waiting, active)
                if picked is None:
                    break
                name, host = picked
                active[name] = host
                self._begin(result.entries[name], host)
                self._start(name, host, share, finished)
            name, outcome = finished.get()  # each migration is bounded by its own time and data budgets
            host = active.pop(name)
            retry = self._settle(result.entries[name], host, outcome)
            if retry is not None:
                waiting.append((name, retry))

    def _bandwidth_share(self, count):
        """Each migration's cap: the total split among those that run at once (0: none)."""
        if not self.request.bandwidth_mib or count == 0:
            return 0
        return max(1, self.request.bandwidth_mib // min(self.request.concurrency, count))

    def _next_to_start(self, waiting, active):
        for index, (name, host) in enumerate(waiting):
            if sum(1 for other in active.values() if other == host) < self.request.per_destination:
                del waiting[index]
                return name, host
        return None

    def _start(self, name, host, share, finished):
        def progress(fields):
            self.board.update(name, state="migrating", destination=host, **fields)

        def run():
            try:
                outcome = self.migrate(name, host, share, progress)
            except MigrationError as error:
                outcome = error
            except Exception as error:  # one guest's surprise must not stop the others' bookkeeping
                outcome = MigrationError(f"migrating {name} raised {type(error).__name__}: {error}",
                                         fix="report this as a bug of kvm.live_migration, with the versions",
                                         result={"status": "failed", "owner": "unknown"})  # at any point
            finished.put((name, outcome))

        self.board.update(name, state="migrating", destination=host, **{"pass": None})
        threading.Thread(target=run, name=f"kvmlm-evacuate-{name}", daemon=True).start()

    def _migrate(self, name, host, bandwidth_mib, on_progress):
        request = replace(self.request.migration, name=name, dest_uri=ssh_uri(host), bandwidth_mib=bandwidth_mib,
                          persistent=True, undefine_source=True)
        return migrate_guest(self.source_uri, request, on_progress=on_progress, libvirt_module=self.lv).as_dict()

    def _settle(self, entry, host, outcome):
        """Record one attempt; the destination to try next, or None when the guest is done with."""
        migration = outcome.result if isinstance(outcome, MigrationError) else outcome
        migration = migration or {}
        entry.update(time_ms=migration.get("total_time_ms"), downtime_ms=migration.get("downtime_ms"),
                     strategy=migration.get("strategy"), warnings=warnings_of(migration.get("actions", [])))
        owner = migration.get("owner")
        if isinstance(outcome, MigrationError) and outcome.result is None and self._still_here(entry["name"]):
            owner = migration.get("source", self.source_name)  # refused before anything started: untouched here
        # The engine names hosts as their libvirt does; the report names them as the user gave them.
        if migration.get("status") in ("completed", "already_migrated") and owner == migration.get("destination"):
            self._end(entry, "migrated", migration_why(migration), host)
            return None
        why = failure_why(outcome, migration)
        if owner != migration.get("source", self.source_name):
            # Not proven to run on the source again: never start a second copy elsewhere.
            self._end(entry, "failed", f"{why}; the guest runs on {owner or 'an unknown host'}: see the "
                                       "migration's hosts in this entry and check both hosts before acting",
                      owner)
            entry["hosts"] = migration.get("hosts")
            return None
        self.memory_left[host] = self.memory_left.get(host, 0) + self.guests[entry["name"]].memory_bytes
        unread = [side for side, shown in (migration.get("hosts") or {}).items() if shown == UNREACHABLE]
        if unread:
            # What an unread host holds is not known: a second destination could make a second running copy.
            self._end(entry, "failed", f"{why}; it runs on {self.source_name}, but {host} did not answer at the end, "
                                       "so it is not tried on another host: once "
                                       f"{host} answers, check it with 'virsh list --all' and run this again",
                      self.source_name, final=False)
            entry["hosts"] = migration.get("hosts")
            return None
        retry = self._retry_destination(entry) if entry["attempts"] <= self.request.retries else None
        if retry is None:
            tried_all = entry["attempts"] <= self.request.retries
            self._end(entry, "failed", f"{why}; {'no other destination takes it' if tried_all else 'no retry left'}"
                                       f"; it runs on {self.source_name}", self.source_name, final=False)
            return None
        self.memory_left[retry] -= self.guests[entry["name"]].memory_bytes
        entry["why"] = f"{why} (on {host}); retrying on {retry}"
        self.board.update(entry["name"], state="waiting", destination=retry)
        return retry

    def _still_here(self, name):
        """Whether the source reads the guest live there, outside post-copy (False when it cannot tell)."""
        try:
            domain = self.source.find_domain(name)
            state = None if domain is None else self.source.describe(domain)
        except MigrationError:
            return False
        return state is not None and state.state != "shutoff" and not state.post_copy

    def _retry_destination(self, entry):
        guest = self._to_place[entry["name"]]
        return choose_destination(guest, self.memory_left, excluded=entry["tried"])

    # -- after the moves -------------------------------------------------------------------

    def _apply_unmovable_policy(self, result):
        for entry in result.entries.values():
            if entry["status"] not in ("pending", "failed") or entry["owner"] != self.source_name:
                continue
            guest = self.guests.get(entry["name"])
            if guest is None:
                continue
            if not guest.running:
                if guest.stopped:
                    entry["status"] = "left"
                    entry["why"] = f"{entry['why']}; its definition stays on {self.source_name}"
                continue  # a live guest no migration takes was judged when it was found
            if entry["status"] == "pending":
                entry["status"] = "failed"
            if self.request.unmovable == "leave":
                entry["status"] = "left"
                entry["why"] = f"{entry['why']}; left running on {self.source_name} (unmovable=leave)"
            elif self.request.unmovable == "shutdown":
                self._shut_down(entry)
            else:
                entry["why"] = f"{entry['why']} (unmovable=fail)"
            self.board.update(entry["name"], state="done", outcome=entry["status"])

    def _shut_down(self, entry):
        name = entry["name"]
        domain = self.source.find_domain(name)
        if domain is None:
            entry["why"] = (f"{entry['why']}; it vanished from {self.source_name} before its shutdown: check where it "
                            "runs with 'virsh list --all' on each host")
            entry["owner"] = "unknown"
            return
        try:
            with libvirt_errors(self.lv, f"shutting {name} down on {self.source_name}"):
                domain.shutdown()
        except MigrationError as error:
            entry["why"] = f"{entry['why']}; the shutdown was refused: {error}"
            return
        deadline = self.clock() + self.request.shutdown_timeout_s
        never = threading.Event()
        while self.clock() < deadline:
            state = self.source.describe(domain)
            if state is None or not state.running:
                entry["status"] = "shut_down"
                entry["why"] = f"{entry['why']}; shut down on {self.source_name} (unmovable=shutdown)"
                return
            self.wait(SHUTDOWN_POLL_S, never)
        entry["why"] = (f"{entry['why']}; it did not shut down within {self.request.shutdown_timeout_s} s and still "
                        f"runs on {self.source_name} (stop it inside the guest, or 'virsh destroy {name}')")

    def _check_source(self, result):
        """Read the source again: which guests run there now, and may they? A source that cannot be read keeps the
        report of what moved, and the evacuation fails on it."""
        try:
            guests = self._read_guests()
        except MigrationError as error:
            result.source_unread = (f"{self.source_name} could not be read after the moves ({error}): which guests "
                                    "still run there is unknown; read it with 'virsh list --all' before any "
                                    "maintenance")
            return
        running = {guest.name for guest in guests if not guest.stopped}
        watched = running if self.request.guests is None else running & set(self.guests)
        allowed = {entry["name"] for entry in result.entries.values() if entry["status"] == "left"}
        result.remaining = sorted(watched - allowed)
        result.allowed = sorted(watched & allowed)
        for name in result.remaining:
            entry = result.entries.get(name)
            if entry is None:  # started on the source during the evacuation
                result.entries[name] = {**new_entry(SourceGuest(name, None, "running", 0), self.source_name),
                                        "status": "failed", "why": f"started on {self.source_name} during the "
                                                                   "evacuation; run it again"}

    # -- bookkeeping -----------------------------------------------------------------------

    def _begin(self, entry, host):
        entry["attempts"] += 1
        entry["tried"].append(host)
        entry["to"] = host
        entry["started_at"] = entry["started_at"] or utc_iso(self.wall_clock())

    def _end(self, entry, status, why, owner, final=True):
        entry["status"], entry["why"], entry["owner"] = status, why, owner
        entry["ended_at"] = utc_iso(self.wall_clock())
        if entry["started_at"] is None:
            entry["started_at"] = entry["ended_at"]
        if final or status != "failed":
            self.board.update(entry["name"], state="done", outcome=status)


def refused_why(reasons):
    return "no destination takes it: " + "; ".join(f"{host}: {', '.join(why)}" for host, why in reasons.items())


def migration_why(migration):
    downtime = migration.get("downtime_ms")
    over = any(action["what"] == "downtime_over_budget" for action in migration.get("actions", []))
    return (f"{migration.get('strategy')} in {migration.get('total_time_ms')} ms, {migration.get('passes')} passes, "
            f"downtime {'unknown' if downtime is None else f'{downtime} ms'}"
            f"{', over the downtime budget (downtime_over_budget)' if over else ''}")


def failure_why(outcome, migration):
    if isinstance(outcome, MigrationError):
        return str(outcome)
    error = migration.get("error") or {}
    abort = next((action["why"] for action in migration.get("actions", []) if action["what"] == "abort"), None)
    return f"{migration.get('status')}: {error.get('message') or abort or 'the migration did not complete'}"
