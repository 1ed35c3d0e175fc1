"""The migrate module: request building, failure messages, and main() with AnsibleModule patched."""

from __future__ import annotations

import pytest
from ansible.module_utils import basic
from conftest import DEST_URI
from fake_libvirt import GIB, MIB, C, Migration, completed_stats, libvirtError, sample

from ansible_collections.kvm.live_migration.plugins.module_utils.module_support import build_request
from ansible_collections.kvm.live_migration.plugins.module_utils.request import MigrationRequest
from ansible_collections.kvm.live_migration.plugins.module_utils.result import MigrationResult
from ansible_collections.kvm.live_migration.plugins.modules import migrate


@pytest.fixture
def module(module_runner):
    """Run migrate.main() with these args against the fake cloud; return ('exit'|'fail', result)."""
    return module_runner(migrate)


def params(**changes):
    values = {key: spec.get("default") for key, spec in migrate.ARGUMENT_SPEC.items()}
    values.update(name="web01", **changes)
    return values


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"dest_host": "hv2.example.com"},
         MigrationRequest(name="web01", dest_uri="qemu+ssh://hv2.example.com/system")),
        ({"dest_uri": "qemu+tls://hv2/system"}, MigrationRequest(name="web01", dest_uri="qemu+tls://hv2/system")),
        ({"dest_host": "hv2", "transport": "tcp", "allow_insecure": True, "bandwidth": 512, "max_downtime_ms": 100,
          "persistent": False, "undefine_source": False, "migrate_uri": "tcp://192.0.2.2",
          "listen_address": "0.0.0.0", "timeout": 90, "max_data_factor": 2.5, "poll_interval": 0.1},
         MigrationRequest(name="web01", dest_uri="qemu+ssh://hv2/system", transport="tcp", allow_insecure=True,
                          bandwidth_mib=512, max_downtime_ms=100, persistent=False, undefine_source=False,
                          migrate_uri="tcp://192.0.2.2", listen_address="0.0.0.0", timeout_s=90,
                          max_data_factor=2.5, poll_interval_s=0.1)),
    ],
    ids=["dest-host", "dest-uri", "every-option"],
)
def test_build_request(changes, expected):
    assert build_request(MigrationRequest, params(**changes)) == expected


def result(**fields):
    return MigrationResult(**{"status": "failed", "owner": "hv1", "source": "hv1", "destination": "hv2", **fields})


@pytest.mark.parametrize(
    ("migration", "expected"),
    [
        (result(error={"message": "the migration failed: boom"},
                actions=[{"what": "abort", "why": "too slow"}]),
         "migration of the guest from hv1 to hv2 failed: the migration failed: boom; the guest runs on hv1"),
        (result(status="aborted", actions=[{"what": "abort_retry", "why": "busy"}, {"what": "abort", "why": "slow"}]),
         "migration of the guest from hv1 to hv2 aborted: slow; the guest runs on hv1"),
        (result(), "migration of the guest from hv1 to hv2 failed: the migration did not complete; "
                   "the guest runs on hv1"),
        (result(owner="hv2", error={"message": None}),
         "migration of the guest from hv1 to hv2 failed: the migration did not complete; the guest runs on hv2"),
    ],
    ids=["error-message", "abort-reason", "no-reason", "empty-error"],
)
def test_failure_message(migration, expected):
    assert migrate.failure_message(migration) == expected


def test_main_completes(module, cloud):
    job = Migration(samples=[sample(1, remaining=GIB, processed=64 * MIB)])
    cloud.add_guest(cloud.hosts["qemu:///system"], "web01", migration=job)

    outcome, returned = module({"name": "web01", "dest_host": "hv2", "poll_interval": 0.05, "bandwidth": 128})

    assert outcome == "exit"
    assert returned["changed"] is True
    migration = returned["migration"]
    assert {key: migration[key] for key in ("status", "owner", "source", "destination", "passes", "total_time_ms",
                                            "downtime_ms", "error")} == {
        "status": "completed", "owner": "hv2", "source": "hv1", "destination": "hv2", "passes": 4,
        "total_time_ms": 1712, "downtime_ms": 31, "error": None}
    # One entry per pass: pass 1 was sampled; passes 2-4 (the completed statistics count 4) went by unseen.
    assert [(entry["pass"], entry["sampled"]) for entry in migration["timeline"]] == [
        (1, True), (2, False), (3, False), (4, False)]
    throttle = {"auto_converge.initial": 97, "auto_converge.increment": 1}
    assert (job.dconnuri, job.params) == (DEST_URI, {"bandwidth": 128, **throttle})
    assert [conn.closed for conn in cloud.connections] == [True, True, True]


def test_main_warns_of_a_stop_longer_than_the_budget(module, cloud, monkeypatch):
    warned = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda _module, message: warned.append(message))
    job = Migration(samples=[sample(1, remaining=GIB, processed=64 * MIB)],
                    completed=completed_stats(downtime=620, downtime_net=120))
    cloud.add_guest(cloud.hosts["qemu:///system"], "web01", migration=job)

    outcome, returned = module({"name": "web01", "dest_host": "hv2", "poll_interval": 0.05, "max_downtime_ms": 500})

    migration = returned["migration"]
    assert (outcome, migration["status"], migration["downtime_ms"]) == ("exit", "completed", 620)
    [over] = [action for action in migration["actions"] if action["what"] == "downtime_over_budget"]
    assert warned == [over["why"]]


def test_main_completes_and_warns_when_the_progress_cannot_be_written(module, cloud, monkeypatch, tmp_path):
    warned = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda _module, message: warned.append(message))
    cloud.add_guest(cloud.hosts["qemu:///system"], "web01",
                    migration=Migration(samples=[sample(1, remaining=GIB, processed=64 * MIB)]))
    (tmp_path / "full").write_text("")  # a directory that cannot be made stands for a full disk
    outcome, returned = module({"name": "web01", "dest_host": "hv2", "poll_interval": 0.05,
                                "progress_path": str(tmp_path / "full" / "kvmlm-progress-web01.json")})
    assert (outcome, returned["migration"]["status"], returned["migration"]["owner"]) == ("exit", "completed", "hv2")
    assert len(warned) == 1 and "the migration was watched all the same" in warned[0]


@pytest.mark.parametrize(
    ("args", "outcome", "changed", "status"),
    [
        ({"_ansible_check_mode": True}, "exit", True, "would_migrate"),
        ({"name": "db01"}, "exit", False, "already_migrated"),
    ],
    ids=["check-mode", "already-migrated"],
)
def test_main_without_migrating(module, cloud, args, outcome, changed, status):
    cloud.add_guest(cloud.hosts["qemu:///system"], "web01")
    cloud.add_guest(cloud.hosts[DEST_URI], "db01")

    result_outcome, returned = module({"name": "web01", "dest_uri": DEST_URI, **args})

    assert (result_outcome, returned["changed"], returned["migration"]["status"]) == (outcome, changed, status)
    assert cloud.hosts["qemu:///system"].guests["web01"].migration.flags is None


def test_main_reports_a_failed_migration(module, cloud):
    error = libvirtError("unable to connect to server at 'hv2:49152': No route to host", C.VIR_ERR_SYSTEM_ERROR)
    cloud.add_guest(cloud.hosts["qemu:///system"], "web01", migration=Migration(failure=error))

    outcome, returned = module({"name": "web01", "dest_host": "hv2", "poll_interval": 0.05})

    assert outcome == "fail"
    assert returned["msg"] == (
        "migration of the guest from hv1 to hv2 failed: the migration failed: unable to connect to server at "
        "'hv2:49152': No route to host; the guest runs on hv1")
    assert returned["changed"] is True
    assert returned["migration"]["status"] == "failed"
    assert returned["migration"]["error"]["code_name"] == "VIR_ERR_SYSTEM_ERROR"
    assert returned["migration"]["error"]["fix"].startswith("check that the source reaches the destination over SSH")


@pytest.mark.parametrize(
    ("args", "msg", "error"),
    [
        ({"transport": "udp"}, "value of transport must be one of: tls, ssh, tcp, got: udp", None),
        ({"transport": "tcp"},
         "transport=tcp sends the guest's memory across the network unencrypted. Fix: use transport: tls or ssh, or "
         "set allow_insecure: true on a trusted, isolated migration network",
         {"message": "transport=tcp sends the guest's memory across the network unencrypted",
          "fix": "use transport: tls or ssh, or set allow_insecure: true on a trusted, isolated migration network",
          "code": None, "code_name": None}),
        ({"transport": "ssh", "dest_host": None, "dest_uri": "qemu+tls://hv9/system"},
         "transport=ssh tunnels through the libvirt connection, but dest_uri='qemu+tls://hv9/system' is not a "
         "qemu+ssh:// URI. Fix: use a qemu+ssh:// dest_uri, or transport: tls", {
             "message": "transport=ssh tunnels through the libvirt connection, but dest_uri='qemu+tls://hv9/system' "
                        "is not a qemu+ssh:// URI",
             "fix": "use a qemu+ssh:// dest_uri, or transport: tls", "code": None, "code_name": None}),
        ({"dest_uri": DEST_URI}, "parameters are mutually exclusive: dest_uri|dest_host", None),
        ({"dest_host": None}, "one of the following is required: dest_uri, dest_host", None),
        ({"progress_path": "/etc/passwd"},
         "progress_path='/etc/passwd' is not named kvmlm-progress-NAME.json: the module replaces that file and "
         "removes it when it ends. Fix: name a new file such as /run/kvmlm-progress-web01.json, or leave "
         "progress_path to the action plugin", {
             "message": "progress_path='/etc/passwd' is not named kvmlm-progress-NAME.json: the module replaces "
                        "that file and removes it when it ends",
             "fix": "name a new file such as /run/kvmlm-progress-web01.json, or leave progress_path to the action "
                    "plugin", "code": None, "code_name": None}),
        ({"bandwidth": -1},
         "bandwidth=-1 must be 0 (no cap) or a positive MiB/s. Fix: set bandwidth to the MiB/s the migration may "
         "use, or 0", {"message": "bandwidth=-1 must be 0 (no cap) or a positive MiB/s",
                       "fix": "set bandwidth to the MiB/s the migration may use, or 0", "code": None,
                       "code_name": None}),
    ],
    ids=["unknown-transport", "tcp-not-allowed", "ssh-needs-ssh-uri", "dest-uri-and-host", "no-destination",
         "progress-path-not-a-progress-file", "negative-bandwidth"],
)
def test_main_refuses_bad_options_before_connecting(module, cloud, args, msg, error):
    cloud.add_guest(cloud.hosts["qemu:///system"], "web01")
    module_args = {key: value for key, value in {"name": "web01", "dest_host": "hv2", **args}.items()
                   if value is not None}

    outcome, returned = module(module_args)

    assert (outcome, returned["msg"], returned.get("error")) == ("fail", msg, error)
    if error is not None:  # a MigrationError: reported with the client's versions
        assert returned["versions"]["libvirt_client"] == "9.0.0"
    assert cloud.connections == []


def test_main_unreachable_destination(module, cloud):
    cloud.add_guest(cloud.hosts["qemu:///system"], "web01")

    outcome, returned = module({"name": "web01", "dest_host": "hv9"})

    assert outcome == "fail"
    assert returned["msg"].startswith("connecting to libvirt at qemu+ssh://hv9/system failed: Cannot recv data")
    assert returned["error"]["code_name"] == "VIR_ERR_SYSTEM_ERROR"
    assert [conn.closed for conn in cloud.connections] == [True, True]


def test_main_without_the_binding(module, monkeypatch):
    monkeypatch.setattr(migrate, "LIBVIRT_IMPORT_ERROR", "Traceback: No module named 'libvirt'")

    outcome, returned = module({"name": "web01", "dest_host": "hv2"})

    assert outcome == "fail"
    assert "libvirt-python" in returned["msg"]
    assert returned["exception"] == "Traceback: No module named 'libvirt'"


def test_main_returns_the_migration_when_the_guest_is_left_nowhere(module, cloud):
    """The worst outcome keeps its result: status, owner unknown, what each host showed, actions, timeline."""
    failure = libvirtError("operation failed: migration out job: connection reset", C.VIR_ERR_OPERATION_FAILED)
    job = Migration(samples=[sample(1, remaining=GIB, processed=64 * MIB)], failure=failure,
                    states_after={"source": C.VIR_DOMAIN_SHUTOFF, "destination": None})
    cloud.add_guest(cloud.hosts["qemu:///system"], "web01", migration=job)

    outcome, returned = module({"name": "web01", "dest_host": "hv2", "poll_interval": 0.05})

    assert outcome == "fail"
    assert returned["msg"].startswith("guest 'web01' runs on neither host after the migration (source: shutoff, "
                                      "destination: absent)")
    migration = returned["migration"]
    assert (migration["status"], migration["owner"], migration["hosts"]) == (
        "failed", "unknown", {"source": "shutoff", "destination": "absent"})
    assert [entry["pass"] for entry in migration["timeline"]] == [1]
    assert migration["error"]["message"] == ("the migration failed: operation failed: migration out job: "
                                             "connection reset")
