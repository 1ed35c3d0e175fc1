"""The migration_summary filter."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.kvm.live_migration.plugins.filter.migration_summary import FilterModule, migration_summary

COMPLETED = {
    "status": "completed", "owner": "hv2", "source": "hv1", "destination": "hv2", "strategy": "precopy",
    "actions": [], "total_time_ms": 1712, "downtime_ms": 31, "data_sent_bytes": 1_200_000_000,
    "data_total_bytes": 1024**3, "passes": 4, "final_ratio": 0.125,
}
ABORTED = {
    "status": "aborted", "owner": "hv1", "source": "hv1", "destination": "hv2", "strategy": "precopy",
    "total_time_ms": 6500, "downtime_ms": None, "data_sent_bytes": 629145600, "data_total_bytes": None,
    "passes": 6, "final_ratio": 2.0,
    "actions": [
        {"pass": 6, "time_ms": 2500, "what": "abort", "why": "the migration ran longer than its timeout of 2 s"},
        {"pass": 6, "time_ms": 2500, "what": "abort_retry", "why": "abortJob failed: busy"},
    ],
}
STEERED = {
    "status": "completed", "owner": "hv2", "source": "hv1", "destination": "hv2", "strategy": "auto_converge",
    "total_time_ms": 21000, "downtime_ms": 180, "data_sent_bytes": 1536 * 1024**2, "data_total_bytes": 512 * 1024**2,
    "passes": 5, "final_ratio": 0.2,
    "prediction": {"strategy": "auto_converge",
                   "why": "pre-copy would finish never (ratio 1.90); QEMU may throttle the guest at 90 %, then 99 %"},
    "actions": [
        {"pass": 3, "time_ms": 13200, "what": "auto_converge", "value": 90, "helped": True,
         "why": "ratio 0.95 >= 0.8 for 2 passes; QEMU throttles the guest at 90 %"},
        {"pass": 5, "time_ms": 20100, "what": "set_downtime", "value": 200, "helped": False,
         "why": "10 MiB remain at 64 MiB/s: a 200 ms stop sends them (budget 500 ms)"},
    ],
}


@pytest.mark.parametrize(
    ("migration", "expected"),
    [
        (COMPLETED, [
            "completed: hv1 -> hv2, guest runs on hv2",
            "time 1712 ms, downtime 31 ms, passes 4, strategy precopy",
            "sent 1144.4 MiB of 1024.0 MiB, final ratio 0.125",
        ]),
        (ABORTED, [
            "aborted: hv1 -> hv2, guest runs on hv1",
            "time 6500 ms, downtime ?, passes 6, strategy precopy",
            "sent 600.0 MiB of ?, final ratio 2.0",
            "pass 6 at 2500 ms: abort (the migration ran longer than its timeout of 2 s)",
            "pass 6 at 2500 ms: abort_retry (abortJob failed: busy)",
        ]),
        (STEERED, [
            "completed: hv1 -> hv2, guest runs on hv2",
            "time 21000 ms, downtime 180 ms, passes 5, strategy auto_converge",
            "sent 1536.0 MiB of 512.0 MiB, final ratio 0.2",
            "predicted: auto_converge (pre-copy would finish never (ratio 1.90); QEMU may throttle the guest at 90 %, "
            "then 99 %)",
            "pass 3 at 13200 ms: auto_converge 90 (ratio 0.95 >= 0.8 for 2 passes; QEMU throttles the guest at 90 %, "
            "helped)",
            "pass 5 at 20100 ms: set_downtime 200 (10 MiB remain at 64 MiB/s: a 200 ms stop sends them (budget 500 "
            "ms), did not help)",
        ]),
        ({"status": "would_migrate", "actions": None}, [
            "would_migrate: None -> None, guest runs on None",
            "time ?, downtime ?, passes None, strategy None",
            "sent ? of ?, final ratio None",
        ]),
    ],
    ids=["completed", "aborted-with-actions", "steered-with-prediction", "minimal"],
)
def test_migration_summary(migration, expected):
    assert migration_summary(migration) == expected


@pytest.mark.parametrize(
    "value",
    [None, "completed", ["status"], {"owner": "hv2"}],
    ids=["none", "string", "list", "dict-without-status"],
)
def test_migration_summary_refuses_other_input(value):
    with pytest.raises(AnsibleFilterError) as caught:
        migration_summary(value)
    assert caught.value.message == (
        "migration_summary expects the 'migration' dict returned by kvm.live_migration.migrate")


def test_filter_module_exports_the_filter():
    assert FilterModule().filters() == {"migration_summary": migration_summary}
