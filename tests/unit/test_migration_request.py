"""migration: request validation, flags and parameters, budgets."""

from __future__ import annotations

import dataclasses

import pytest
from fake_libvirt import GIB, MIB, FakeCloud

from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.jobstats import JobSample
from ansible_collections.kvm.live_migration.plugins.module_utils.migration import budget_exceeded
from ansible_collections.kvm.live_migration.plugins.module_utils.module_support import build_request
from ansible_collections.kvm.live_migration.plugins.module_utils.request import (
    MigrationRequest,
    default_timeout_s,
    migration_flags,
    migration_params,
    validate_request,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.result import MigrationResult

LV = FakeCloud().libvirt
REQUEST = MigrationRequest(name="web01", dest_uri="qemu+ssh://hv2/system")
BASE_FLAGS = LV.VIR_MIGRATE_LIVE | LV.VIR_MIGRATE_PEER2PEER | LV.VIR_MIGRATE_ABORT_ON_ERROR


def request(**changes):
    return dataclasses.replace(REQUEST, **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transport": "udp"}, "transport='udp' is not one of tls, ssh, tcp"),
        ({"transport": "tcp"}, "transport=tcp sends the guest's memory across the network unencrypted"),
        ({"max_downtime_ms": 0}, "max_downtime_ms=0 is outside 1-2000000"),
        ({"max_downtime_ms": -5}, "max_downtime_ms=-5 is outside 1-2000000"),
        ({"max_downtime_ms": 2**64}, "max_downtime_ms=18446744073709551616 is outside 1-2000000"),
        ({"bandwidth_mib": -1}, "bandwidth=-1 must be 0 (no cap) or a positive MiB/s"),
        ({"timeout_s": 0}, "timeout=0 must be a positive number of seconds"),
        ({"progress_timeout_s": 0}, "progress_timeout=0 must be at least 1 second"),
        ({"max_data_factor": 0.5}, "max_data_factor=0.5 is below 1: nothing could complete"),
        ({"poll_interval_s": 0.01}, "poll_interval=0.01 is outside 0.05-1 s"),
        ({"poll_interval_s": 2.0}, "poll_interval=2.0 is outside 0.05-1 s"),
        ({"transport": "ssh", "dest_uri": "qemu+tls://hv2/system"},
         "transport=ssh tunnels through the libvirt connection, but dest_uri='qemu+tls://hv2/system' is not a "
         "qemu+ssh:// URI"),
        # NaN and infinity pass every comparison: each float option refuses them by name.
        ({"max_data_factor": float("nan")}, "max_data_factor=nan is not a finite number"),
        ({"max_data_factor": float("inf")}, "max_data_factor=inf is not a finite number"),
        ({"poll_interval_s": float("nan")}, "poll_interval=nan is not a finite number"),
        ({"convergence_threshold": float("nan")}, "convergence_threshold=nan is not a finite number"),
        ({"convergence_threshold": float("-inf")}, "convergence_threshold=-inf is not a finite number"),
        # dest_uri: a libvirt URI of QEMU with a host; its query parameters are the operator's to give.
        ({"dest_uri": ""}, "dest_uri is empty"),
        ({"dest_uri": "hv2"}, "dest_uri='hv2' is not a libvirt URI of QEMU (qemu, qemu+ssh, qemu+libssh, "
                              "qemu+libssh2, qemu+tls, qemu+tcp, qemu+unix)"),
        ({"dest_uri": "xen+ssh://hv2/system"}, "dest_uri='xen+ssh://hv2/system' is not a libvirt URI of QEMU "
                                               "(qemu, qemu+ssh, qemu+libssh, qemu+libssh2, qemu+tls, qemu+tcp, "
                                               "qemu+unix)"),
        ({"dest_uri": "qemu+ssh://hv2/"}, "dest_uri='qemu+ssh://hv2/' names neither /system nor /session"),
        ({"dest_uri": "qemu+ssh:///system"}, "dest_uri='qemu+ssh:///system' has no valid host name"),
        ({"dest_uri": "qemu+ssh://hv_2!/system"}, "dest_uri='qemu+ssh://hv_2!/system' has no valid host name"),
        # migrate_uri: where QEMU sends the memory, nothing more.
        ({"migrate_uri": "tcp://10.0.0.2:abc"}, "migrate_uri='tcp://10.0.0.2:abc' is not tcp://HOST[:PORT] (or "
                                                "rdma://HOST[:PORT], unix://PATH)"),
        ({"migrate_uri": "http://10.0.0.2"}, "migrate_uri='http://10.0.0.2' is not tcp://HOST[:PORT] (or "
                                             "rdma://HOST[:PORT], unix://PATH)"),
        ({"migrate_uri": "tcp://10.0.0.2?x=1"}, "migrate_uri='tcp://10.0.0.2?x=1' is not tcp://HOST[:PORT] (or "
                                                "rdma://HOST[:PORT], unix://PATH)"),
        # migrate_disks: disk target names, not paths or lists.
        ({"copy_storage": "all", "migrate_disks": ("vda", "/dev/sdb")},
         "migrate_disks=/dev/sdb is not a disk target name"),
        ({"copy_storage": "all", "migrate_disks": ("vda,vdb",)}, "migrate_disks=vda,vdb is not a disk target name"),
        ({"name": ""}, "name='' is empty"),
        ({"name": "  "}, "name='  ' is empty"),
        ({"listen_address": "garbage ;$(x)"}, "listen_address='garbage ;$(x)' is not an IP address"),
        ({"listen_address": ""}, "listen_address='' is not an IP address"),
        ({"listen_address": "hv2.example.com"}, "listen_address='hv2.example.com' is not an IP address"),
        ({"dest_uri": "qemu+tcp://hv2/system"},
         "dest_uri='qemu+tcp://hv2/system' opens the libvirt connection in cleartext while transport=tls asks for "
         "encryption: the guest's definition and every command would cross the network unencrypted"),
        ({"persistent": False},
         "undefine_source=true with persistent=false leaves the guest defined on neither host: it would live only as "
         "long as it runs on the destination"),
    ],
    ids=["transport", "tcp-without-allow-insecure", "downtime-zero", "downtime-negative", "downtime-overflow",
         "bandwidth",
         "timeout", "progress-timeout", "max-data-factor", "poll-too-fast", "poll-too-slow", "ssh-needs-ssh-uri",
         "max-data-factor-nan", "max-data-factor-inf", "poll-nan", "threshold-nan", "threshold-minus-inf",
         "dest-uri-empty", "dest-uri-schemeless", "dest-uri-not-qemu", "dest-uri-no-path", "dest-uri-no-host",
         "dest-uri-bad-host", "migrate-uri-port", "migrate-uri-scheme", "migrate-uri-query", "disk-path",
         "disk-list", "name-empty", "name-blank", "listen-address-garbage", "listen-address-empty",
         "listen-address-name", "cleartext-control-channel-under-tls", "transient-and-undefined"],
)
def test_validate_request_refuses(changes, message):
    with pytest.raises(MigrationError) as caught:
        validate_request(request(**changes))
    assert caught.value.message == message
    assert caught.value.fix


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"transport": "tcp", "allow_insecure": True},
        {"transport": "ssh"},
        {"bandwidth_mib": 0, "timeout_s": None, "max_data_factor": 1.0, "poll_interval_s": 0.05},
        {"bandwidth_mib": 1024, "timeout_s": 1, "max_downtime_ms": 1, "poll_interval_s": 1.0},
    ],
    ids=["defaults", "tcp-allowed", "ssh", "lower-bounds", "upper-bounds"],
)
def test_validate_request_accepts(changes):
    valid = request(**changes)
    assert validate_request(valid) is valid


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, BASE_FLAGS | LV.VIR_MIGRATE_PERSIST_DEST | LV.VIR_MIGRATE_UNDEFINE_SOURCE | LV.VIR_MIGRATE_TLS),
        ({"transport": "ssh"},
         BASE_FLAGS | LV.VIR_MIGRATE_PERSIST_DEST | LV.VIR_MIGRATE_UNDEFINE_SOURCE | LV.VIR_MIGRATE_TUNNELLED),
        ({"transport": "tcp", "allow_insecure": True},
         BASE_FLAGS | LV.VIR_MIGRATE_PERSIST_DEST | LV.VIR_MIGRATE_UNDEFINE_SOURCE),
        ({"persistent": False}, BASE_FLAGS | LV.VIR_MIGRATE_UNDEFINE_SOURCE | LV.VIR_MIGRATE_TLS),
        ({"undefine_source": False}, BASE_FLAGS | LV.VIR_MIGRATE_PERSIST_DEST | LV.VIR_MIGRATE_TLS),
        ({"persistent": False, "undefine_source": False, "transport": "tcp"}, BASE_FLAGS),
    ],
    ids=["defaults-tls", "ssh-tunnelled", "tcp-plain", "not-persistent", "keep-source", "minimal"],
)
def test_migration_flags(changes, expected):
    assert migration_flags(LV, request(**changes)) == expected


def test_migration_flag_values():
    """The defaults are LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE|ABORT_ON_ERROR|TLS, by value."""
    assert migration_flags(LV, REQUEST) == 1 + 2 + 8 + 16 + 4096 + 65536


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {}),
        ({"bandwidth_mib": 512}, {"bandwidth": 512}),
        ({"migrate_uri": "tcp://192.0.2.2"}, {"migrate_uri": "tcp://192.0.2.2"}),
        ({"listen_address": "192.0.2.2"}, {"listen_address": "192.0.2.2"}),
        ({"bandwidth_mib": 64, "migrate_uri": "tcp://[2001:db8::2]:49152", "listen_address": "::"},
         {"bandwidth": 64, "migrate_uri": "tcp://[2001:db8::2]:49152", "listen_address": "::"}),
    ],
    ids=["none", "bandwidth", "migrate-uri", "listen-address", "all"],
)
def test_migration_params(changes, expected):
    assert migration_params(LV, request(**changes)) == expected


@pytest.mark.parametrize(
    ("memory_bytes", "expected"),
    [(0, 60), (256 * MIB, 60), (409 * MIB, 60), (420 * MIB, 61), (512 * MIB, 75), (GIB, 150),
     (3 * GIB // 2, 225), (4 * GIB, 600)],
    ids=["zero", "256MiB", "409MiB", "420MiB", "512MiB", "1GiB", "1.5GiB", "4GiB"],
)
def test_default_timeout_s(memory_bytes, expected):
    assert default_timeout_s(memory_bytes) == expected


@pytest.mark.parametrize(
    ("time_ms", "processed", "expected"),
    [
        (60_000, 5 * GIB, None),  # exactly at both budgets is still within them
        (60_001, 0, "the migration ran longer than its timeout of 60 s"),
        (1000, 5 * GIB + 1,
         f"{5 * GIB + 1} bytes sent, more than max_data_factor=5.0 times the guest's memory"),
        (60_001, 5 * GIB + 1, "the migration ran longer than its timeout of 60 s"),  # time is checked first
    ],
    ids=["within", "time", "data", "both"],
)
def test_budget_exceeded(time_ms, processed, expected):
    sample = JobSample(time_ms=time_ms, iteration=3, processed_bytes=processed)
    assert budget_exceeded(sample, 60, 5.0 * GIB, 5.0) == expected


@pytest.mark.parametrize(
    ("status", "changed"),
    [("completed", True), ("aborted", True), ("failed", True), ("would_migrate", True),
     ("already_migrated", False)],
)
def test_result_changed(status, changed):
    assert MigrationResult(status=status, owner="hv1", source="hv1", destination="hv2").changed is changed


def test_result_as_dict_keys():
    assert list(MigrationResult(status="completed", owner="hv2", source="hv1", destination="hv2").as_dict()) == [
        "status", "owner", "source", "destination", "strategy", "actions", "total_time_ms", "downtime_ms",
        "downtime_net_ms", "setup_time_ms", "data_sent_bytes", "data_total_bytes", "passes", "final_ratio",
        "prediction", "timeline", "error", "hosts", "transport"]


@pytest.mark.parametrize(
    "uri",
    ["qemu+ssh://hv2/system", "qemu+ssh://root@hv2.example.com:2222/system",
     "qemu+ssh://hv2/system?keyfile=/root/.ssh/migrate&no_verify=1", "qemu+tls://[2001:db8::2]/system",
     "qemu:///system", "qemu+tcp://192.0.2.12/system"],
    ids=["ssh", "user-and-port", "documented-parameters", "ipv6", "local", "tcp"],
)
def test_dest_uri_accepts_libvirt_uris_with_their_parameters(uri):
    insecure = {"transport": "tcp", "allow_insecure": True} if uri.startswith("qemu+tcp:") else {}
    assert validate_request(request(dest_uri=uri, **insecure)).dest_uri == uri


@pytest.mark.parametrize(
    ("host", "accepted"),
    [("hv2", True), ("hv2.example.com", True), ("192.0.2.12", True), ("2001:db8::2", True),
     ("hv2/system?command=/bin/sh", False), ("hv2?no_verify=1", False), ("root@hv2", False), ("", False),
     ("-hv2", False), ("hv2 hv3", False)],
    ids=["short", "fqdn", "ipv4", "ipv6", "uri-injection", "parameter-injection", "user", "empty", "leading-dash",
         "space"],
)
def test_dest_host_must_be_a_host_name_or_an_address(host, accepted):
    params = {"name": "web01", "dest_uri": None, "dest_host": host, "source_uri": "qemu:///system"}
    if accepted:
        assert build_request(MigrationRequest, params).dest_uri == f"qemu+ssh://{host}/system"
    else:
        with pytest.raises(MigrationError, match=r"dest_host=.* is not a host name or address"):
            build_request(MigrationRequest, params)


@pytest.mark.parametrize("uri", ["", "hv1", "qemu+ssh://hv1?x=/system", "lxc:///system"],
                         ids=["empty", "schemeless", "no-path", "not-qemu"])
def test_source_uri_must_be_a_libvirt_uri(uri):
    params = {"name": "web01", "dest_uri": None, "dest_host": "hv2", "source_uri": uri}
    with pytest.raises(MigrationError, match="source_uri"):
        build_request(MigrationRequest, params)
