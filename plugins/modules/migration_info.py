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
author:
  - kvm.live_migration maintainers (@kvm-live-migration)
options:
  name:
    description:
      - Name or UUID of the guest whose migration job to read, on the source hypervisor.
    type: str
    required: true
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

- name: Show its progress until it ends
  kvm.live_migration.migration_info:
    name: db01
  register: progress
  until: not progress.job.active
  retries: 720
  delay: 5
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
completed:
  description: Statistics of the last completed job (time_elapsed, downtime, data_processed, ...) when no job runs.
  returned: when the hypervisor still holds them
  type: dict
  sample: {"time_elapsed": 7146, "downtime": 42, "data_processed": 436083010, "memory_iteration": 5}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import LIBVIRT_IMPORT_ERROR, Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.jobs import read_job
from ansible_collections.kvm.live_migration.plugins.module_utils.module_support import run_engine

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "source_uri": {"type": "str", "default": "qemu:///system"},
}


def read_progress(params):
    with Hypervisor(params["source_uri"]) as hypervisor:
        return read_job(hypervisor, params["name"])


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    job, completed = run_engine(module, lambda: read_progress(module.params), LIBVIRT_IMPORT_ERROR)
    result = {"changed": False, "job": job}
    if completed is not None:
        result["completed"] = completed
    module.exit_json(**result)


if __name__ == "__main__":
    main()
