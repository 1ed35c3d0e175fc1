# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a migration did, as the migrate module returns it (``migration`` in the task result)."""

from __future__ import annotations

from dataclasses import dataclass, field

# What a migration that completed records and the playbook should also see as a warning.
WARNED_ACTIONS = ("downtime_over_budget",)


def warnings_of(actions):
    """The ``why`` of each action in ``actions`` (a result's list of dicts) that the module warns about."""
    return [action["why"] for action in actions if action["what"] in WARNED_ACTIONS]


@dataclass
class MigrationResult:
    status: str
    owner: str | None
    source: str
    destination: str
    strategy: str = "precopy"
    actions: list = field(default_factory=list)
    total_time_ms: int | None = None
    downtime_ms: int | None = None
    downtime_net_ms: int | None = None
    setup_time_ms: int | None = None
    data_sent_bytes: int | None = None
    data_total_bytes: int | None = None
    passes: int | None = None
    final_ratio: float | None = None
    prediction: dict | None = None
    timeline: list = field(default_factory=list)
    error: dict | None = None
    hosts: dict = field(default_factory=dict)  # the guest's state on each host at the last look
    transport: str | None = None  # how the memory travelled: tls, ssh (tunnelled) or tcp

    @property
    def changed(self):
        return self.status != "already_migrated"

    def as_dict(self):
        return {key: getattr(self, key) for key in self.__dataclass_fields__}
