# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a long module in the background on its host and print its progress on the controller meanwhile.

The action plugins of ``migrate`` and ``evacuate`` use it: the module is started the way ``async``
starts one, with a ``progress_path`` in the host's async directory; every ``progress_interval``
seconds one ``async_status`` call says whether it ended and one ``slurp`` reads the snapshot the
module wrote, whose lines go to the playbook's standard error (its standard output belongs to the
stdout callback). The result is the module's own, as if it had run in the foreground. With
``async`` set on the task, in check mode or with ``progress_interval: 0`` the module runs as any
other.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible.utils.vars import merge_hash

from ansible_collections.kvm.live_migration.plugins.module_utils.progress import (
    MAX_PROGRESS_INTERVAL_S,
    MIN_PROGRESS_INTERVAL_S,
    progress_lines,
)

DEFAULT_INTERVAL_S = 5.0
# How long the background job may live; the module's own time budgets end every migration long before.
BACKGROUND_LIMIT_S = 24 * 3600
# What async_status adds to the module's own result.
_JOB_KEYS = ("ansible_job_id", "started", "finished", "results_file", "stdout", "stderr", "stdout_lines",
             "stderr_lines")

display = Display()


class BackgroundAction(ActionBase):
    """The action of a module that runs long (``migrate``, ``evacuate``): in the background, its progress printed."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        return merge_hash(result, run_with_progress(self, task_vars or {}))


def run_with_progress(action, task_vars, sleep=time.sleep):
    """The module's result; its progress printed every progress_interval seconds while it runs."""
    task = action._task
    interval = _interval(task.args.get("progress_interval", DEFAULT_INTERVAL_S))
    if task.async_val or task.check_mode or interval is None:
        return _in_foreground(action, task_vars)
    async_dir = action.get_shell_option("async_dir", default="~/.ansible_async")
    args = {**task.args, "progress_path": task.args.get("progress_path") or
            f"{async_dir}/kvmlm-progress-{uuid.uuid4().hex}.json"}
    task.async_val = BACKGROUND_LIMIT_S
    try:
        started = action._execute_module(module_args=args, task_vars=task_vars, wrap_async=True)
    finally:
        task.async_val = 0
    if started.get("failed") or "ansible_job_id" not in started:
        return started
    host = task.delegate_to or task_vars.get("inventory_hostname")
    status = _follow(action, task_vars, started["ansible_job_id"], async_dir, args["progress_path"],
                     (interval, sleep, host))
    return {key: value for key, value in status.items()
            if key not in _JOB_KEYS or (key in ("stdout", "stderr") and value)}  # a module that crashed


def _interval(value):
    """The seconds between polls, or None to run the module in the foreground: for 0, and for a value outside
    the documented range (NaN and infinity too), which the module then refuses with its message at once instead
    of being polled after a sleep of that length."""
    try:
        interval = float(value)
    except (TypeError, ValueError):
        return None
    if not MIN_PROGRESS_INTERVAL_S <= interval <= MAX_PROGRESS_INTERVAL_S:  # false for NaN
        return None
    return interval


def _in_foreground(action, task_vars):
    wrap_async = bool(action._task.async_val) and not action._connection.has_native_async
    result = action._execute_module(task_vars=task_vars, wrap_async=wrap_async)
    if not wrap_async:
        action._remove_tmp_path(action._connection._shell.tmpdir)
    return result


def _follow(action, task_vars, job_id, async_dir, progress_path, pacing):
    """Poll the background job until it ends, printing its progress; the job's final status."""
    interval, sleep, host = pacing
    while True:
        sleep(interval)
        status = action._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                        module_args={"jid": job_id, "_async_dir": async_dir})
        if status.get("finished") or "finished" not in status:  # ended, or async_status itself failed
            break
        snapshot = _read_snapshot(action, task_vars, progress_path)
        for line in progress_lines(snapshot, host) if snapshot else ():
            # stderr: stdout belongs to the stdout callback, which may be a document (ansible.posix.json).
            display.display(line, stderr=True)
    action._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                           module_args={"jid": job_id, "mode": "cleanup", "_async_dir": async_dir})
    action._remove_tmp_path(action._connection._shell.tmpdir)
    return status


def _read_snapshot(action, task_vars, path):
    """The progress snapshot the module wrote last, or None before its first."""
    read = action._execute_module(module_name="ansible.legacy.slurp", module_args={"src": path},
                                  task_vars=task_vars)
    if read.get("failed") or "content" not in read:
        return None
    try:
        return json.loads(base64.b64decode(read["content"]))
    except ValueError:
        return None  # caught between two writes of a non-atomic file system: the next poll reads it
