# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the guest runs, read from both hypervisors: before a migration (may it start?) and after it
(make sure exactly one host runs the guest, and name it).

Nothing here trusts what the runner believes it did: every answer comes from the guest's state on
each host as libvirt reports it.
"""

from __future__ import annotations

from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError, libvirt_errors

UNREACHABLE = "unreachable"
# What to do about the copy an unreachable destination may hold: measured, its libvirtd kills that QEMU when it
# starts again (an incoming migration it did not finish); the check stays with the operator.
LEFTOVER_COPY = ("A copy of {name} that QEMU may still hold on {host} is out of date: its libvirtd removes it when it "
                 "answers again (an incoming migration it did not finish); check there with 'virsh list --all', and "
                 "'virsh destroy {name}' there if it runs; never let both run")


# The source resumed its copy after the switch-over had begun (libvirt's Confirm3 of a migration whose Finish3 did
# not return): the destination may have received all the memory and resumed its own copy before the link broke
# (qemuMigrationSrcPerformPeer2Peer3: the destination domain "could in fact be running").
SWITCHED_OVER_AND_RESUMED = ("running", "migration_canceled")
SWITCHED_OVER_UNREAD = ("{name} was paused for the switch-over on {source} and resumed there after the migration "
                        "{status}, while {destination} did not answer: {destination} may have received all of its "
                        "memory and resumed its own copy before the link broke, so where it runs is unknown")
SWITCHED_OVER_FIX = ("as soon as {destination} answers, run 'virsh list --all' there: if {name} runs on both hosts, "
                     "both copies have run since the switch-over and write the same disks; pause the one on "
                     "{destination} at once ('virsh suspend {name}' there), keep the guest's clients in mind to choose "
                     "the copy to keep, and 'virsh destroy {name}' on the other host; if it runs only on {source}, the "
                     "other copy is gone and nothing is to do. Until then, start or migrate it nowhere else")


def describe(state):
    return "absent" if state is None else state.describe()


# placement(): the guest's post-copy broke before this run and libvirt keeps it for a resume.
BROKEN_POST_COPY = "broken_post_copy"


def recovery_command(name, dest_uri, options=""):
    """The command that resumes, by hand on the source, a post-copy whose stream QEMU gave up."""
    options = f" {options}" if options else ""
    return f"virsh migrate --live --p2p --postcopy --postcopy-resume{options} {name} {dest_uri}"


class Ownership:
    """Reads the guest ``name`` on the source (``source``) and the destination (``destination``)."""

    def __init__(self, name, source, destination, record, source_fallback=None, resume_options=""):
        """``record(what, why)`` adds an action to the result (the destination copy stopped, a resume).
        ``source_fallback``: a second connection to the source, asked when ``source``'s has died.
        ``resume_options``: what the manual recovery command needs besides the defaults (``--tls``)."""
        self.name = name
        self.source = source
        self.destination = destination
        self.record = record
        self.source_fallback = source_fallback
        self.resume_options = resume_options
        self.recovery_blocked = None  # why a broken post-copy cannot be resumed on these hosts, when it cannot
        self.shown = {}  # what each host showed at the last look: {"source": state, "destination": state}

    def placement(self):
        """'source', 'destination', or a message explaining why neither can be acted on."""
        source, destination = self.source, self.destination
        on_source, on_destination = self.look(strict=True)
        host_uuid = source.host_uuid()
        if host_uuid == destination.host_uuid():
            return (f"source {source.uri} and destination {destination.uri} report the same host UUID "
                    f"{host_uuid}: they are the same host, or host_uuid is duplicated; give each hypervisor a "
                    "unique host_uuid in libvirtd.conf")
        if on_source is not None and on_source.post_copy_failed:
            return BROKEN_POST_COPY
        return self._in_flight(on_source, on_destination) or self._side_that_runs(on_source, on_destination)

    def _side_that_runs(self, on_source, on_destination):
        name, source, destination = self.name, self.source, self.destination
        if on_source and on_source.running:
            if on_destination and on_destination.running:
                return (f"guest {name!r} runs on both {source.hostname()} and {destination.hostname()}; "
                        "stop the copy that must not run before migrating")
            return "source"
        if on_destination and on_destination.running:
            return "destination"
        if on_source:
            return (f"guest {name!r} is {on_source.state} on {source.hostname()}; a live migration needs a "
                    "running guest (start or resume it first)")
        return (f"guest {name!r} was found on neither {source.hostname()} nor "
                f"{destination.hostname()}; check the name or UUID with 'virsh list --all'")

    def _state_from(self, hypervisors):
        """The guest's state from the first of ``hypervisors`` (connections to one host) that answers."""
        answering = [hypervisor for hypervisor in hypervisors if hypervisor is not None]
        for hypervisor in answering[:-1]:
            try:
                return self._read(hypervisor)
            except MigrationError:
                continue
        return self._read(answering[-1])

    def _read(self, hypervisor):
        # A connection that died during the run (keepalive gave up on a cut link) is opened again; while the host
        # does not answer, reading raises.
        hypervisor.revive()
        return hypervisor.guest_state(self.name)

    def _in_flight(self, on_source, on_destination):
        """Why a migration of this guest must not start now (another one is under way or broke half-way), or None."""
        name = self.name
        for host, state in ((self.source, on_source), (self.destination, on_destination)):
            if state is not None and state.post_copy:
                return (f"guest {name!r} is {state.describe()} on {host.hostname()}: a post-copy migration of it is "
                        "under way or failed half-way, and neither host may hold all of its memory; watch it with "
                        f"kvm.live_migration.migration_info on {self.source.hostname()}; once libvirt there shows it "
                        "failed (paused, postcopy_failed), run this task again to resume it, and never resume the "
                        "source's copy")
        job = None if on_source is None else self.source.active_job(self.source.find_domain(name))
        if job or (on_destination is not None and on_destination.migrating):
            return (f"guest {name!r} already has an active job on {self.source.hostname()} (job type {job}; on "
                    f"{self.destination.hostname()}: {describe(on_destination)}): another run or client is "
                    f"migrating it; watch it with kvm.live_migration.migration_info (name: {name}) on "
                    f"{self.source.hostname()}, or abort it with 'virsh domjobabort {name}' there")
        return None

    def settle(self, result, post_copy):
        """Make sure exactly one hypervisor runs the guest and return its host name.

        ``post_copy``: the runner switched to post-copy. Either host showing a post-copy state says so too,
        whoever started it: then the source's memory is out of date and is never resumed.
        Raises MigrationError, with what each host showed in ``self.shown``, when it cannot.
        """
        on_source, on_destination = self.look()
        post_copy = post_copy or any(state not in (None, UNREACHABLE) and state.post_copy
                                     for state in (on_source, on_destination))
        if UNREACHABLE in (on_source, on_destination):
            readable = None if on_destination == UNREACHABLE else on_destination
            if post_copy and result.status != "completed":
                self._refuse_failed_post_copy(result, bool(readable and readable.running), readable)
            return self._one_side_unreachable(result, on_source, on_destination)
        source_runs = bool(on_source and on_source.running)
        destination_runs = bool(on_destination and on_destination.running)
        if source_runs and destination_runs and (post_copy or result.status == "completed"):
            raise MigrationError(f"guest {self.name!r} runs on both hosts after "
                                 f"{'post-copy' if post_copy else 'a completed migration'}",
                                 fix=f"the copy on {result.destination} is current: stop the one on {result.source} "
                                     f"('virsh destroy {self.name}' there)")
        if post_copy and result.status != "completed":
            self._refuse_failed_post_copy(result, destination_runs, on_destination)
        if source_runs and destination_runs:
            self._pause_both(result)
        if source_runs:
            return result.source
        if destination_runs:
            return result.destination
        return self._resume_paused(result, on_source, on_destination)

    def _refuse_failed_post_copy(self, result, destination_runs, on_destination):
        """A post-copy that did not complete: no host holds all of the memory, whatever a state says."""
        shown = on_destination.describe() if on_destination is not None else "absent"
        raise MigrationError(
            f"post-copy of {self.name!r} failed after the switch ({self.shown_text()}): the destination "
            f"{'runs' if destination_runs else 'held'} the guest ({shown}) but lacks the pages still on the source, "
            "so neither host holds all of its memory",
            fix=self._recovery_fix(result))

    def _recovery_fix(self, result):
        never = (f"never resume the source's copy (its memory is out of date), never destroy either copy, and do not "
                 f"decommission {result.source} before the guest completed on {result.destination}")
        itself = ("once both hosts reach each other again, QEMU's stream usually carries on by itself and libvirt "
                  "completes the migration (run this task again: it waits for that")
        if self.recovery_blocked:
            return (f"{itself}). If QEMU gave the stream up instead, this post-copy cannot be resumed as the hosts "
                    f"are: {self.recovery_blocked}. Upgrade libvirt there and restart its libvirtd (running guests "
                    f"keep running), then run this task again: it resumes the post-copy; {never}")
        command = recovery_command(self.name, self.destination.uri, self.resume_options)
        return (f"{itself}, or resumes the post-copy if QEMU gave its stream up; by hand: '{command}' on "
                f"{result.source}); {never}")

    def _pause_both(self, result):
        """Both hosts run the guest after a failed migration and nothing proves which copy is current: stop both
        copies from changing, touch nothing else, and say what to do."""
        for hypervisor in (self.source, self.destination):
            domain = hypervisor.find_domain(self.name)
            with libvirt_errors(self.source.lv, f"pausing {self.name!r} on {hypervisor.hostname()}"):
                domain.suspend()
        self.record("pause_both", "both hosts ran the guest after a failed migration; which copy is current cannot "
                                  "be proven from libvirt, so both are paused")
        self.look()
        raise MigrationError(
            f"guest {self.name!r} ran on both {result.source} and {result.destination} after the migration "
            f"{result.status}; which copy is current cannot be proven, so both are paused now ({self.shown_text()})",
            fix=f"find the current copy (the guest's own logs, its clients' last writes); then 'virsh destroy "
                f"{self.name}' on the other host and 'virsh resume {self.name}' on the current one")

    def _one_side_unreachable(self, result, on_source, on_destination):
        """One host did not answer (a failed post-copy was refused before): name the host that provably runs the
        guest, or fail with what is known."""
        if switched_over(on_source):  # read, so the destination is the host that did not answer
            self._refuse_unread_switch_over(result.source, result.destination, result.status)
        if on_source not in (None, UNREACHABLE) and on_source.running and result.status != "completed":
            self.record("destination_unreachable", f"{result.destination} did not answer after the migration "
                                                   f"{result.status}; the guest runs on {result.source}. "
                                                   f"{LEFTOVER_COPY.format(name=self.name, host=result.destination)}")
            return result.source
        if on_destination not in (None, UNREACHABLE) and on_destination.running and result.status == "completed":
            self.record("source_unreachable", f"{result.source} did not answer after the migration completed; the "
                                              f"guest runs on {result.destination}")
            return result.destination
        raise MigrationError(f"cannot tell where guest {self.name!r} runs: {self.shown_text()}",
                             fix="once both hosts answer, run 'virsh list --all' on both; start nothing before "
                                 "that, and never run the guest on both")

    def _refuse_unread_switch_over(self, source, destination, status):
        self.record("destination_unread_after_switch_over",
                    SWITCHED_OVER_UNREAD.format(name=self.name, source=source, destination=destination, status=status))
        raise MigrationError(f"cannot tell where guest {self.name!r} runs: "
                             + SWITCHED_OVER_UNREAD.format(name=self.name, source=source, destination=destination,
                                                           status=status)
                             + f" ({self.shown_text()})",
                             fix=SWITCHED_OVER_FIX.format(name=self.name, source=source, destination=destination))

    def runs_only_on_source(self):
        """Whether libvirt shows the guest running on the source, outside post-copy, and not on the destination.

        A destination that does not answer (its link or its libvirtd is down) cannot have taken over a pre-copy whose
        source still runs: the source is named, and the copy QEMU may have left there is recorded as to be removed.
        """
        on_source, on_destination = self.look()
        if on_source in (None, UNREACHABLE) or not on_source.running or on_source.post_copy:
            return False
        if on_destination == UNREACHABLE and switched_over(on_source):
            self.record("destination_unread_after_switch_over",
                        SWITCHED_OVER_UNREAD.format(name=self.name, source="the source", destination="the destination",
                                                    status="did not end"))
            return False
        if on_destination == UNREACHABLE:
            self.record("destination_unreachable", f"the destination did not answer; the guest runs on the source. "
                                                   f"{LEFTOVER_COPY.format(name=self.name, host='the destination')}")
            return True
        return not (on_destination and on_destination.running)

    def shown_text(self):
        source, destination = (self.shown.get(side, "not read") for side in ("source", "destination"))
        return f"source: {source}, destination: {destination}"

    def look(self, strict=False):
        """(state on the source, state on the destination), kept in ``shown`` as text. A host that does not answer
        is UNREACHABLE (``strict``: its error is raised instead, as before a migration)."""
        self.shown = {}
        states = []
        sides = (("source", (self.source, self.source_fallback)), ("destination", (self.destination,)))
        for side, hypervisors in sides:
            try:
                state = self._state_from(hypervisors)
            except MigrationError:
                if strict:
                    raise
                state = UNREACHABLE
            self.shown[side] = state if state == UNREACHABLE else describe(state)
            states.append(state)
        return tuple(states)

    def _resume_paused(self, result, on_source, on_destination):
        """Neither side runs the guest: resume the side that holds the complete copy."""
        completed = result.status == "completed"
        hypervisor, state, host = ((self.destination, on_destination, result.destination) if completed
                                   else (self.source, on_source, result.source))
        if state is None or not state.paused:
            raise MigrationError(f"guest {self.name!r} runs on neither host after the migration ({self.shown_text()})",
                                 fix=f"start it on {host}, where its last complete copy is")
        self.record("resume", f"the guest was left paused on {host}")
        with libvirt_errors(self.source.lv, f"resuming {self.name!r} on {host}"):
            hypervisor.find_domain(self.name).resume()
        return host


def switched_over(state):
    """Whether libvirt shows the source resumed after a migration's switch-over began (see SWITCHED_OVER_UNREAD)."""
    return state not in (None, UNREACHABLE) and (state.state, state.reason) == SWITCHED_OVER_AND_RESUMED
