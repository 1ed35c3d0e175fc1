# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Progress while a module runs: a snapshot file the module keeps up to date, and the lines shown from it.

The module (``migrate``, ``evacuate``) writes a JSON snapshot, at most once a second and atomically
(write, then rename), to ``progress_path``; the collection's action plugin reads it between polls
of the background job and prints one line per guest in motion. Every number comes from libvirt's
job statistics as the runner reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time

from ansible_collections.kvm.live_migration.plugins.module_utils.units import MIB

WRITE_EVERY_S = 1.0
MIN_PROGRESS_INTERVAL_S, MAX_PROGRESS_INTERVAL_S = 1, 10  # seconds between two progress lines (0: none)


class ProgressBoard:
    """What every guest of a run is doing now; thread-safe. Without a path it only keeps the snapshot."""

    def __init__(self, path=None, clock=time.monotonic, wall_clock=time.time):
        self.path = path
        self.clock = clock
        self.wall_clock = wall_clock
        self._lock = threading.Lock()
        self._guests = {}
        self._total = 0
        self._written = None
        self.write_error = None  # why the snapshot could not be written, the first time (a full disk, a bad path)

    def expect(self, total):
        with self._lock:
            self._total = total
        self.write(force=True)

    def update(self, name, **fields):
        with self._lock:
            self._guests[name] = {**self._guests.get(name, {}), **fields}
        self.write()

    def snapshot(self):
        with self._lock:
            guests = {name: dict(entry) for name, entry in self._guests.items()}
            done = sum(1 for entry in guests.values() if entry.get("state") == "done")
            return {"updated": round(self.wall_clock(), 3), "total": self._total, "done": done, "guests": guests}

    def write(self, force=False):
        if not self.path:
            return
        now = self.clock()
        with self._lock:
            if not force and self._written is not None and now - self._written < WRITE_EVERY_S:
                return
            self._written = now
        try:
            write_atomically(self.path, json.dumps(self.snapshot()))
        except OSError as error:
            # Progress is for the eyes: a write that fails must never end the watch of a migration.
            self.write_error = self.write_error or (f"the progress snapshot could not be written to {self.path} "
                                                    f"({error}); the migration was watched all the same")

    def remove(self):
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def write_atomically(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".kvmlm-progress-")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def progress_lines(snapshot, host):
    """The lines to print for one snapshot: one per guest migrating now, and a count for several guests."""
    guests = snapshot.get("guests", {})
    lines = [guest_line(host, name, entry) for name, entry in sorted(guests.items())
             if entry.get("state") == "migrating"]
    if snapshot.get("total", 0) > 1:
        waiting = sum(1 for entry in guests.values() if entry.get("state") == "waiting")
        lines.append(f"{host}: {snapshot.get('done', 0)} of {snapshot['total']} guests done, "
                     f"{len(lines)} migrating, {waiting} waiting")
    return lines


def guest_line(host, name, entry):
    destination = entry.get("destination") or "?"
    if not entry.get("pass"):  # no pass yet: QEMU is setting the migration up
        return f"{host}: {name} -> {destination}: starting"
    remaining = entry.get("remaining_bytes")
    ratio, eta = entry.get("ratio"), entry.get("eta_s")
    return (f"{host}: {name} -> {destination}: pass {entry['pass']}, {entry.get('percent', 0):.1f} %, "
            f"{'?' if remaining is None else remaining // MIB} MiB left, "
            f"ratio {'-' if ratio is None else f'{ratio:.2f}'}, "
            f"ETA {'none (not converging)' if eta is None else f'{eta:.0f} s'}"
            + (f", throttle {entry['throttle_pct']} %" if entry.get("throttle_pct") else "")
            + (f", {entry['strategy']}" if entry.get("strategy") not in (None, "precopy") else ""))
