# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Preflight's findings: one check's verdict (ok, warn or fail), what was found and the fix."""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.kvm.live_migration.plugins.module_utils.units import MIB

STATUSES = ("ok", "warn", "fail")
CHECKS = ("host_identity", "transport", "tls", "ports", "versions", "architecture", "machine_type", "cpu", "memory",
          "storage", "network", "devices", "guest_state", "migration_job", "destination_name", "convergence")


@dataclass(frozen=True)
class Finding:
    check: str
    status: str
    message: str
    fix: str | None = None

    def as_dict(self):
        return {"check": self.check, "status": self.status, "message": self.message, "fix": self.fix}


def ok(check, message):
    return Finding(check, "ok", message)


def warn(check, message, fix):
    return Finding(check, "warn", message, fix)


def fail(check, message, fix):
    return Finding(check, "fail", message, fix)


def mib(value):
    return f"{value / MIB:,.0f} MiB"
