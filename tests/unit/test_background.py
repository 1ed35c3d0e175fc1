"""The action plugins' background run: start the module like async does, poll it, print its progress, return the
module's own result. Ansible's side (the action's module execution) is played by a script of replies."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest

from ansible_collections.kvm.live_migration.plugins.plugin_utils import background

SNAPSHOT = {"total": 1, "done": 0, "guests": {"web01": {
    "state": "migrating", "destination": "hv2", "pass": 2, "percent": 40.0, "remaining_bytes": 300 * 2**20,
    "ratio": 0.3, "eta_s": 5.0}}}
RESULT = {"changed": True, "migration": {"status": "completed", "owner": "hv2"}}


class Action:
    """What run_with_progress uses of an ActionBase, answering each module execution from ``replies``."""

    def __init__(self, args, replies, async_val=0, check_mode=False):
        self._task = SimpleNamespace(args=args, async_val=async_val, check_mode=check_mode, delegate_to=None)
        self._connection = SimpleNamespace(has_native_async=False, _shell=SimpleNamespace(tmpdir="/tmp/x"))
        self.replies = replies
        self.calls = []
        self.async_during_start = None

    def get_shell_option(self, name, default=None):
        return "~/.ansible_async" if name == "async_dir" else default

    def _execute_module(self, module_name=None, module_args=None, task_vars=None, wrap_async=False):
        self.calls.append((module_name, module_args, wrap_async))
        if module_name is None and wrap_async:
            self.async_during_start = self._task.async_val
        return self.replies[module_name].pop(0)

    def _remove_tmp_path(self, path):
        self.calls.append(("remove_tmp", path, False))


def slurped(snapshot):
    return {"content": base64.b64encode(json.dumps(snapshot).encode()).decode(), "encoding": "base64"}


@pytest.fixture
def printed(monkeypatch):
    lines = []

    def display(message, stderr=False, **_):
        assert stderr, "progress goes to stderr: stdout belongs to the stdout callback (ansible.posix.json)"
        lines.append(message)

    monkeypatch.setattr(background.display, "display", display)
    return lines


def test_the_module_runs_in_the_background_and_its_progress_is_printed(printed):
    replies = {
        None: [{"ansible_job_id": "j42", "started": 1, "finished": 0, "results_file": "/root/.ansible_async/j42"}],
        "ansible.legacy.async_status": [{"started": 1, "finished": 0}, {"started": 1, "finished": 0},
                                        {**RESULT, "finished": 1, "ansible_job_id": "j42", "stdout": "", "stderr": ""},
                                        {"erased": "/root/.ansible_async/j42"}],
        "ansible.legacy.slurp": [{"failed": True, "msg": "file not found"}, slurped(SNAPSHOT)],
    }
    action = Action({"name": "web01", "dest_host": "hv2", "progress_interval": 2}, replies)
    slept = []
    result = background.run_with_progress(action, {"inventory_hostname": "hv1"}, sleep=slept.append)

    assert result == RESULT
    assert printed == ["hv1: web01 -> hv2: pass 2, 40.0 %, 300 MiB left, ratio 0.30, ETA 5 s"]
    assert slept == [2.0, 2.0, 2.0]
    started_args, wrapped = action.calls[0][1:]
    assert wrapped is True and action.async_during_start == background.BACKGROUND_LIMIT_S
    assert started_args["progress_path"].startswith("~/.ansible_async/kvmlm-progress-")
    assert action._task.async_val == 0  # the task executor must not poll it again
    assert ("ansible.legacy.async_status", {"jid": "j42", "mode": "cleanup", "_async_dir": "~/.ansible_async"},
            False) in action.calls


@pytest.mark.parametrize(
    ("args", "async_val", "check_mode"),
    [({"progress_interval": 0}, 0, False), ({}, 3600, False), ({}, 0, True),
     # Out of range: the module refuses it at once in the foreground, never after a sleep of that length.
     ({"progress_interval": 1e9}, 0, False), ({"progress_interval": "nan"}, 0, False),
     ({"progress_interval": float("inf")}, 0, False), ({"progress_interval": -1}, 0, False),
     ({"progress_interval": "soon"}, 0, False)],
    ids=["progress-off", "user-async", "check-mode", "decades", "nan", "inf", "negative", "not-a-number"],
)
def test_otherwise_the_module_runs_as_any_other(printed, args, async_val, check_mode):
    action = Action({"name": "web01", **args}, {None: [RESULT]}, async_val=async_val, check_mode=check_mode)
    assert background.run_with_progress(action, {}) == RESULT
    assert action.calls[0] == (None, None, bool(async_val))
    assert printed == []


def test_a_start_that_failed_is_returned_as_it_is(printed):
    failure = {"failed": True, "msg": "could not start"}
    action = Action({"name": "web01"}, {None: [failure]})
    assert background.run_with_progress(action, {}, sleep=lambda _s: None) == failure
