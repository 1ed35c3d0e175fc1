"""Prints, at the end of a playbook, how long each host was busy: the sum of its tasks' times.

For tests/machines: the hosts of a play run side by side and each task waits for the slowest host (the
linear strategy), so neither the playbook's time nor a host's last result says what one generation takes;
the time its own tasks took does.
"""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: host_times
    type: aggregate
    short_description: each host's busy time, the sum of its tasks' times
    description: Prints one line per host at the end of the playbook, "host_times HOST SECONDS".
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "host_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._started = {}
        self._busy = {}

    def v2_runner_on_start(self, host, task):
        self._started[(host.get_name(), task._uuid)] = time.monotonic()

    def _done(self, result):
        host = result._host.get_name()
        started = self._started.pop((host, result._task._uuid), None)
        if started is not None:
            self._busy[host] = self._busy.get(host, 0.0) + time.monotonic() - started

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_skipped = v2_runner_on_unreachable = _done

    def v2_playbook_on_stats(self, stats):
        for host, seconds in sorted(self._busy.items()):
            self._display.display(f"host_times {host} {seconds:.0f}")
