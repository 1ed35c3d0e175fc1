#!/usr/bin/python
# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_info
short_description: Read the live progress of a guest's migration job
version_added: 0.1.0
description:
  - Reads the job statistics of a guest on the source hypervisor and reports the migration's progress
    (percent, pass, remaining bytes, dirty and transfer rates, convergence ratio, expected downtime, ETA).
  - Meant to be polled while M(kvm.live_migration.migrate) runs with C(async) and C(poll=0), for example to show
    progress in AWX.
  - When no job runs, reports the statistics of the last completed job the hypervisor still holds.
  - A guest the hypervisor no longer has (it migrated away and the source undefined it) is not an error; the job is
    reported inactive and RV(present) false.
  - With O(async_job_id) (the C(ansible_job_id) of a M(kvm.live_migration.migrate) task started with C(async) and
    C(poll=0)) it also reports whether that task has ended (RV(finished)) and, once it has, its result
    (RV(migration), RV(job_failed), RV(job_msg)). Poll C(until) RV(finished) - the job may not have begun at the
    first poll, and the guest leaves the source before the task ends.
author:
  - kvm.live_migration maintainers (@kvm-live-migration)
options:
  name:
    description:
      - Name or UUID of the guest whose migration job to read, on the source hypervisor.
    type: str
    required: true
  async_job_id:
    description:
      - The C(ansible_job_id) of the background M(kvm.live_migration.migrate) task on this host.
    type: str
  async_dir:
    description:
      - Where Ansible keeps the results of background tasks on this host (the shell plugin's C(async_dir)).
    type: path
    default: ~/.ansible_async
extends_documentation_fragment:
  - kvm.live_migration.libvirt
  - kvm.live_migration.attributes
  - kvm.live_migration.attributes.actiongroups
  - kvm.live_migration.attributes.info_module
"""

EXAMPLES = r"""
- name: Start a long migration in the background
  kvm.live_migration.migrate:
    name: db01
    dest_host: hv2
  async: 3600
  poll: 0
  register: started

- name: Show its progress until the migrate task has ended
  kvm.live_migration.migration_info:
    name: db01
    async_job_id: "{{ started.ansible_job_id }}"
  register: progress
  until: progress.finished
  retries: 720
  delay: 5

- name: Fail unless the guest moved
  ansible.builtin.assert:
    that: not progress.job_failed and progress.migration.owner == 'hv2'
    fail_msg: "{{ progress.job_msg }}"

- name: Forget the background job's result file
  ansible.builtin.async_status:
    jid: "{{ started.ansible_job_id }}"
    mode: cleanup
"""

RETURN = r"""
job:
  description: The guest's migration job as the hypervisor sees it now.
  returned: always
  type: dict
  contains:
    active:
      description: Whether a job runs now.
      type: bool
      sample: true
    percent:
      description: Share of the guest's memory already sent in the current state, 0 to 100.
      type: float
      sample: 87.5
    pass:
      description: Current pre-copy pass over guest memory.
      type: int
      sample: 3
    elapsed_ms:
      description: Time since the job started, in milliseconds.
      type: int
      sample: 12034
    remaining_bytes:
      description: Bytes left to send.
      type: int
      sample: 40497152
    processed_bytes:
      description: Bytes sent so far.
      type: int
      sample: 825832445
    total_bytes:
      description: Bytes to migrate.
      type: int
      sample: 537264128
    dirty_rate_bps:
      description: Rate at which the guest dirties memory, in bytes per second.
      type: int
      sample: 53649408
    transfer_rate_bps:
      description: Rate at which memory is sent, in bytes per second.
      type: int
      sample: 67141619
    ratio:
      description: Dirty rate divided by transfer rate; near or above 1 the migration does not converge.
      type: float
      sample: 0.799
    expected_downtime_ms:
      description: Downtime QEMU expects if it switched over now, in milliseconds.
      type: int
      sample: 5802
    throttle_pct:
      description: Auto-converge CPU throttle of the guest, in percent.
      type: int
      sample: 0
    eta_s:
      description: Seconds until the remaining data is sent if the current rates hold; null when not converging.
      type: float
      sample: 3.0
present:
  description: Whether this hypervisor still has the guest (false once it migrated away and was undefined here).
  returned: always
  type: bool
  sample: true
finished:
  description: Whether the background task of O(async_job_id) has ended.
  returned: when O(async_job_id) is given
  type: bool
  sample: false
migration:
  description: The ended task's RV(kvm.live_migration.migrate#module:migration) result.
  returned: when the task of O(async_job_id) has ended and returned one
  type: dict
  sample: {"status": "completed", "owner": "hv2", "source": "hv1", "destination": "hv2"}
job_failed:
  description: Whether the ended task failed.
  returned: when the task of O(async_job_id) has ended
  type: bool
  sample: false
job_msg:
  description: The ended task's message when it failed.
  returned: when the task of O(async_job_id) has ended
  type: str
  sample: null
completed:
  description: Statistics of the last completed job (time_elapsed, downtime, data_processed, ...) when no job runs.
  returned: when the hypervisor still holds them
  type: dict
  sample: {"time_elapsed": 7146, "downtime": 42, "data_processed": 436083010, "memory_iteration": 5}
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import LIBVIRT_IMPORT_ERROR, Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.jobs import read_job
from ansible_collections.kvm.live_migration.plugins.module_utils.module_support import run_engine
from ansible_collections.kvm.live_migration.plugins.module_utils.request import validate_libvirt_uri

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "source_uri": {"type": "str", "default": "qemu:///system"},
    "async_job_id": {"type": "str"},
    "async_dir": {"type": "path", "default": "~/.ansible_async"},
}


def read_progress(params):
    validate_libvirt_uri(params["source_uri"], "source_uri")
    with Hypervisor(params["source_uri"]) as hypervisor:
        job, completed, present = read_job(hypervisor, params["name"])
    result = {"changed": False, "job": job, "present": present}
    if completed is not None:
        result["completed"] = completed
    if params["async_job_id"]:
        result.update(background_task(params["async_dir"], params["async_job_id"]))
    return result


def background_task(async_dir, job_id):
    """finished, and the ended task's migration, job_failed and job_msg, from Ansible's async result file."""
    if os.path.sep in job_id or job_id in ("", ".", ".."):
        raise MigrationError(f"async_job_id={job_id!r} is not a job id", fix="pass the task's ansible_job_id")
    path = os.path.join(async_dir, job_id)
    try:
        with open(path) as stream:
            text = stream.read()
    except FileNotFoundError:
        raise MigrationError(f"no background task {job_id} in {async_dir}",
                             fix="run migration_info on the host (and as the user) the migrate task runs on, with "
                                 "that task's ansible_job_id; async_status mode=cleanup removes the file") from None
    try:
        task = json.loads(text)
    except ValueError:
        return {"finished": False}  # the wrapper is writing the file at this very moment
    if "started" in task and not task.get("finished"):  # the wrapper's note while the task runs; the end has none
        return {"finished": False}
    return {"finished": True, "migration": task.get("migration"), "job_failed": bool(task.get("failed")),
            "job_msg": task.get("msg") if task.get("failed") else None}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.exit_json(**run_engine(module, lambda: read_progress(module.params), LIBVIRT_IMPORT_ERROR))


if __name__ == "__main__":
    main()
