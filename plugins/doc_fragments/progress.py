# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Progress shown while a long module runs (migrate, evacuate).

    Mirrors ``module_utils/module_support.py``'s PROGRESS_ARGUMENT_SPEC.
    """

    DOCUMENTATION = r"""
options:
  progress_interval:
    description:
      - Seconds between two progress lines in the playbook's output while the module runs (guest, pass, percent,
        remaining memory, convergence ratio, ETA; for an evacuation also how many guests are done).
      - The collection's action plugin runs the module in the background and polls it; V(0) runs it in the
        foreground, without progress lines.
      - Ignored when the task sets C(async) itself (then poll M(kvm.live_migration.migration_info)) and in check mode.
      - Between 1 and 10.
    type: float
    default: 5
  progress_path:
    description:
      - File on the host running the module that receives a JSON snapshot of the progress, at most once a second,
        and is removed when the module ends.
      - Set by the action plugin; give it only to read the progress another way.
    type: path
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on
      the controller.
    support: full
    details:
      - The action plugin runs the module in the background and prints its progress every O(progress_interval) s.
  async:
    description: Supports being used with the C(async) keyword.
    support: full
    details:
      - With C(async) and C(poll=0) the task returns at once; poll M(kvm.live_migration.migration_info) with its
        O(kvm.live_migration.migration_info#module:async_job_id) until it reports it finished.
"""
