# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError

MIB = 1024 * 1024


def _mib(value):
    return "?" if value is None else f"{value / MIB:.1f} MiB"


def _ms(value):
    return "?" if value is None else f"{value} ms"


def migration_summary(migration):
    """Lines a person reads: outcome, where the guest runs, time, downtime, data, and each action."""
    if not isinstance(migration, dict) or "status" not in migration:
        raise AnsibleFilterError(
            "migration_summary expects the 'migration' dict returned by kvm.live_migration.migrate"
        )
    lines = [
        f"{migration['status']}: {migration.get('source')} -> {migration.get('destination')}, "
        f"guest runs on {migration.get('owner')}",
        f"time {_ms(migration.get('total_time_ms'))}, downtime {_ms(migration.get('downtime_ms'))}, "
        f"passes {migration.get('passes')}, strategy {migration.get('strategy')}",
        f"sent {_mib(migration.get('data_sent_bytes'))} of {_mib(migration.get('data_total_bytes'))}, "
        f"final ratio {migration.get('final_ratio')}",
    ]
    prediction = migration.get("prediction")
    if prediction:
        lines.append(f"predicted: {prediction.get('strategy')} ({prediction.get('why')})")
    lines.extend(_action_line(action) for action in migration.get("actions") or [])
    return lines


def _action_line(action):
    value = "" if action.get("value") is None else f" {action['value']}"
    helped = {True: ", helped", False: ", did not help"}.get(action.get("helped"), "")
    return f"pass {action['pass']} at {action['time_ms']} ms: {action['what']}{value} ({action['why']}{helped})"


class FilterModule:
    def filters(self):
        return {"migration_summary": migration_summary}
