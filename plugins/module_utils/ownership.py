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


def describe(state):
    return "absent" if state is None else state.state


class Ownership:
    """Reads the guest ``name`` on the source (``source``) and the destination (``destination``)."""

    def __init__(self, name, source, destination, record):
        """``record(what, why)`` adds an action to the result (the destination copy stopped, a resume)."""
        self.name = name
        self.source = source
        self.destination = destination
        self.record = record
        self.shown = {}  # what each host showed at the last look: {"source": state, "destination": state}

    def placement(self):
        """'source', 'destination', or a message explaining why neither can be acted on."""
        name, source, destination = self.name, self.source, self.destination
        host_uuid = source.host_uuid()
        if host_uuid == destination.host_uuid():
            return (f"source {source.uri} and destination {destination.uri} report the same host UUID "
                    f"{host_uuid}: they are the same host, or host_uuid is duplicated; give each hypervisor a "
                    "unique host_uuid in libvirtd.conf")
        on_source, on_destination = self.look()
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

    def settle(self, result, post_copy):
        """Make sure exactly one hypervisor runs the guest and return its host name.

        ``post_copy``: the migration switched to post-copy, so the source's memory is out of date.
        Raises MigrationError, with what each host showed in ``self.shown``, when it cannot.
        """
        on_source, on_destination = self.look()
        source_runs = bool(on_source and on_source.running)
        destination_runs = bool(on_destination and on_destination.running)
        if post_copy and result.status != "completed" and not destination_runs:
            raise MigrationError(
                f"post-copy of {self.name!r} failed after the switch: the destination ran the guest, so "
                f"neither host holds all of its memory ({self.shown_text()})",
                fix="once both hosts reach each other again, recover with 'virsh migrate --postcopy "
                    "--postcopy-resume' on the source; do not resume the source copy, its memory is out of date")
        if source_runs and destination_runs and post_copy:
            raise MigrationError(f"guest {self.name!r} runs on both hosts after post-copy",
                                 fix=f"the copy on {result.destination} is current: stop the one on {result.source}")
        if source_runs and destination_runs:
            if result.status == "completed":
                raise MigrationError(f"guest {self.name!r} runs on both hosts after a completed migration",
                                     fix=f"stop the copy on {result.source} by hand after checking which is current")
            self._destroy_incomplete_copy()
            destination_runs = False
        if source_runs:
            return result.source
        if destination_runs:
            return result.destination
        return self._resume_paused(result, on_source, on_destination)

    def shown_text(self):
        source, destination = (self.shown.get(side, "not read") for side in ("source", "destination"))
        return f"source: {source}, destination: {destination}"

    def look(self):
        """(state on the source, state on the destination), kept in ``shown`` as text."""
        self.shown = {}
        on_source = self.source.guest_state(self.name)
        self.shown["source"] = describe(on_source)
        on_destination = self.destination.guest_state(self.name)
        self.shown["destination"] = describe(on_destination)
        return on_source, on_destination

    def _destroy_incomplete_copy(self):
        domain = self.destination.find_domain(self.name)
        self.record("destroy_destination_copy", "the migration did not complete but a copy runs on the destination")
        with libvirt_errors(self.source.lv, f"stopping the incomplete copy of {self.name!r} on the destination"):
            domain.destroy()

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
