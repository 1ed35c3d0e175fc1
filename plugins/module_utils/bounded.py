# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Calls into libvirt that may never return, bounded in time.

A daemon that still answers keepalive can hold a call for ever when the worker that serves it waits on a hung
QEMU monitor: keepalive ends calls on a dead connection, not on a live one whose answer never comes. The runner
makes its statistics and abort calls through a ``BoundedCall``, so its clock, its budgets and its final check go
on. libvirt offers no way to cancel a call: one that outlives its bound is left to its thread, and no second call
of the same kind is made until it returns, so a hung monitor never piles up threads.
"""

from __future__ import annotations

import threading


class CallTimedOut(Exception):
    """The call did not return within its bound (it may still, later, in its own thread)."""


class BoundedCall:
    """Runs one kind of call at a time in a daemon thread, waiting at most ``timeout_s`` for it."""

    def __init__(self, name, timeout_s):
        self.name = name
        self.timeout_s = timeout_s
        self._pending = None  # the thread of a call that outlived its bound, while it has not returned

    @property
    def stalled(self):
        return self._pending is not None and self._pending.is_alive()

    def __call__(self, function, *args):
        """``function(*args)``'s result or exception; CallTimedOut when it outlives the bound, or when an earlier
        call still has not returned."""
        if self.stalled:
            raise CallTimedOut(f"{self.name} has not returned from an earlier call")
        outcome = {}

        def call():
            try:
                outcome["value"] = function(*args)
            except Exception as error:  # handed to the caller's thread
                outcome["error"] = error

        thread = threading.Thread(target=call, name=f"kvmlm-{self.name}", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            self._pending = thread
            raise CallTimedOut(f"{self.name} did not return within {self.timeout_s:g} s")
        self._pending = None
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")
