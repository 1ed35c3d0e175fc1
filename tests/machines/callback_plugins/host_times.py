"""Prints, at the end of a playbook, how long each host took: from its first task to its last result.

For tests/machines: the hosts of a play run side by side, so the playbook's time says nothing of one
generation's; this says when each host was done.
"""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: host_times
    type: aggregate
    short_description: each host's time from its first task to its last result
    description: Prints one line per host at the end of the playbook, "host_times HOST SECONDS".
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "host_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._first = {}
        self._last = {}

    def v2_runner_on_start(self, host, task):
        self._first.setdefault(host.get_name(), time.monotonic())

    def _done(self, result):
        self._last[result._host.get_name()] = time.monotonic()

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_skipped = v2_runner_on_unreachable = _done

    def v2_playbook_on_stats(self, stats):
        for host, first in sorted(self._first.items()):
            self._display.display(f"host_times {host} {self._last.get(host, first) - first:.0f}")
