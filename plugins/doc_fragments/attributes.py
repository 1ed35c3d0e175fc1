# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Attributes shared by the modules of kvm.live_migration.

    Use as ``extends_documentation_fragment: [kvm.live_migration.attributes,
    kvm.live_migration.attributes.actiongroups]`` and add
    ``kvm.live_migration.attributes.info_module`` for read-only modules.
    """

    # Common to every module of the collection. A module still has to
    # document the support level of check_mode and diff_mode itself.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
"""

    # For modules listed in the action group of meta/runtime.yml.
    ACTIONGROUPS = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/kvm.live_migration.live_migration) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - kvm.live_migration.live_migration
"""

    # For modules that only read state and never change it.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
"""
