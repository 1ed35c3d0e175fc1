# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kvm.live_migration.evacuate's action: the module in the background, its progress printed meanwhile."""

from __future__ import annotations

from ansible_collections.kvm.live_migration.plugins.plugin_utils.background import BackgroundAction as ActionModule

__all__ = ["ActionModule"]
