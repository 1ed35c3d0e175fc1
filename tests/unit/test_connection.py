"""connection.Hypervisor against the fake binding."""

from __future__ import annotations

import pytest
from conftest import DEST_URI, SOURCE_URI
from fake_libvirt import C

from ansible_collections.kvm.live_migration.plugins.module_utils import connection
from ansible_collections.kvm.live_migration.plugins.module_utils.connection import (
    KEEPALIVE_COUNT,
    KEEPALIVE_INTERVAL_S,
    GuestState,
    Hypervisor,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError


@pytest.fixture
def web01(cloud, hv1):
    return cloud.add_guest(hv1, "web01")


@pytest.fixture
def source(lv, web01):
    with Hypervisor(SOURCE_URI, lv) as hypervisor:
        yield hypervisor


@pytest.mark.parametrize(
    "spell",
    [lambda guest: guest.name, lambda guest: guest.uuid, lambda guest: guest.uuid.upper(),
     lambda guest: guest.uuid.replace("-", "")],
    ids=["name", "uuid", "uuid-upper-case", "uuid-without-dashes"],
)
def test_find_domain(source, web01, spell):
    domain = source.find_domain(spell(web01))
    assert (domain.name(), domain.UUIDString()) == ("web01", web01.uuid)


@pytest.mark.parametrize("key", ["db01", "0b4d1d8e-7bce-4c0e-9a54-000000000000"], ids=["name", "uuid"])
def test_find_domain_absent(source, key):
    assert source.find_domain(key) is None
    assert source.guest_state(key) is None


def test_find_domain_other_libvirt_error(source, hv1):
    hv1.down = True
    with pytest.raises(MigrationError, match=r"^looking up guest 'web01' on qemu:///system failed: Cannot write data"):
        source.find_domain("web01")


@pytest.mark.parametrize(
    ("state", "persistent", "expected", "running", "paused"),
    [
        (C.VIR_DOMAIN_NOSTATE, True, "nostate", False, False),
        (C.VIR_DOMAIN_RUNNING, True, "running", True, False),
        (C.VIR_DOMAIN_BLOCKED, False, "blocked", True, False),
        (C.VIR_DOMAIN_PAUSED, True, "paused", False, True),
        (C.VIR_DOMAIN_SHUTDOWN, True, "shutdown", False, False),
        (C.VIR_DOMAIN_SHUTOFF, True, "shutoff", False, False),
        (C.VIR_DOMAIN_CRASHED, True, "crashed", False, False),
        (C.VIR_DOMAIN_PMSUSPENDED, False, "pmsuspended", False, False),
        (99, True, "unknown(99)", False, False),
    ],
    ids=["nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended", "unknown"],
)
def test_guest_state(source, web01, state, persistent, expected, running, paused):
    web01.state, web01.persistent = state, persistent
    guest = source.guest_state("web01")
    assert {key: value for key, value in guest.as_dict().items() if key != "reason"} == {
        "name": "web01", "uuid": web01.uuid, "state": expected, "persistent": persistent}
    assert (guest.running, guest.paused) == (running, paused)


@pytest.mark.parametrize(
    ("state", "reason", "name", "post_copy", "migrating", "shown"),
    [
        (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_BOOTED, "booted", False, False, "running"),
        (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_POSTCOPY, "postcopy", True, False, "running (postcopy)"),
        (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED, "postcopy_failed", True, False,
         "running (postcopy_failed)"),
        (C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED, "postcopy_failed", True, False,
         "paused (postcopy_failed)"),
        (C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_MIGRATION, "migration", False, True, "paused (migration)"),
        (C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_USER, "user", False, False, "paused"),
        (C.VIR_DOMAIN_PAUSED, 77, "unknown(77)", False, False, "paused"),
    ],
    ids=["booted", "post-copy", "post-copy-failed-running", "post-copy-failed-paused", "incoming", "user-paused",
         "unknown-reason"],
)
def test_guest_state_reads_the_reason(source, web01, state, reason, name, post_copy, migrating, shown):
    web01.state, web01.reason = state, reason
    guest = source.guest_state("web01")
    assert (guest.reason, guest.post_copy, guest.migrating, guest.describe()) == (name, post_copy, migrating, shown)


def test_guest_state_gone_between_lookup_and_state(source, hv1, monkeypatch):
    domain = source.find_domain("web01")
    del hv1.guests["web01"]
    monkeypatch.setattr(source, "find_domain", lambda _key: domain)
    assert source.guest_state("web01") is None


def test_host_facts(lv, hv1):
    hv1.lib_version, hv1.qemu_version = 9_000_000, 10_002_003
    with Hypervisor(SOURCE_URI, lv) as hypervisor:
        assert hypervisor.hostname() == "hv1"
        assert hypervisor.host_uuid() == hv1.uuid
        assert hypervisor.versions() == {"libvirt": "9.0.0", "hypervisor": "10.2.3"}


def test_hostname_is_read_once(lv, hv1):
    with Hypervisor(SOURCE_URI, lv) as hypervisor:
        assert hypervisor.hostname() == "hv1"
        hv1.hostname = "renamed"
        assert hypervisor.hostname() == "hv1"


def test_open_registers_the_silent_error_handler(cloud, lv):
    with Hypervisor(DEST_URI, lv):
        pass
    handler, context = cloud.error_handler
    assert (handler, context) == (connection._discard_libvirt_error, None)


def test_every_connection_gets_keepalive_so_no_call_waits_forever_on_a_dead_peer(cloud, lv):
    with Hypervisor(SOURCE_URI, lv) as plain, Hypervisor(SOURCE_URI, lv, events=True) as watching:
        assert cloud.event_loop  # keepalive runs in libvirt's event loop
        assert plain.conn.keepalive == watching.conn.keepalive == (KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)


def test_opening_a_connection_to_a_host_that_drops_every_packet_is_bounded(cloud, hv1, lv, monkeypatch):
    """Keepalive only starts once a connection is open; before that, a silent link would hold the open for minutes."""
    monkeypatch.setattr(Hypervisor, "open_timeout_s", 0.05)
    hv1.silent = True
    hypervisor = Hypervisor(SOURCE_URI, lv)
    with pytest.raises(MigrationError, match=r"^connecting to libvirt at qemu:///system failed: opening the "
                                             r"connection did not return within 0.05 s"):
        hypervisor.open()
    assert hypervisor.revive() is False  # a second try is not stacked on the first, still waiting
    hv1.silent = False
    hv1.answering.set()


def test_a_connection_that_died_is_opened_again_once_its_host_answers(cloud, hv1, lv):
    """Keepalive closes the connection to a host behind a cut link; the end of a run reads that host again."""
    with Hypervisor(SOURCE_URI, lv) as hypervisor:
        first = hypervisor.conn
        assert (hypervisor.alive(), hypervisor.revive(), hypervisor.conn) == (True, True, first)
        first.dropped = True
        hv1.down = True
        assert (hypervisor.alive(), hypervisor.revive()) == (False, False)  # still unreachable: nothing to read
        hv1.down = False
        assert hypervisor.revive() and hypervisor.conn is not first and hypervisor.alive()
        assert hypervisor.conn.keepalive == (KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)  # a reopened one too
        assert hypervisor.conn.keepalive == (KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)


def test_open_unreachable_host(lv):
    with pytest.raises(MigrationError) as caught:
        Hypervisor("qemu+ssh://hv9/system", lv).open()
    assert caught.value.code_name == "VIR_ERR_SYSTEM_ERROR"
    assert caught.value.message.startswith("connecting to libvirt at qemu+ssh://hv9/system failed: Cannot recv data")


@pytest.mark.parametrize("close_error", [False, True], ids=["clean", "daemon-gone"])
def test_close(cloud, hv1, lv, close_error):
    hv1.close_error = close_error
    hypervisor = Hypervisor(SOURCE_URI, lv)
    hypervisor.open()
    hypervisor.close()
    hypervisor.close()  # a second close is a no-op
    assert [conn.closed for conn in cloud.connections] == [True]
    with pytest.raises(MigrationError, match="no open libvirt connection to qemu:///system"):
        hypervisor.conn  # noqa: B018 - the property raises


def test_missing_binding(monkeypatch):
    monkeypatch.setattr(connection, "libvirt", None)
    with pytest.raises(MigrationError) as caught:
        Hypervisor(SOURCE_URI).open()
    assert caught.value.message == "the Python libvirt binding is not installed on the host running this module"
    assert caught.value.fix.startswith("pip install libvirt-python")


def test_default_binding_is_the_module_global(monkeypatch, lv):
    monkeypatch.setattr(connection, "libvirt", lv)
    with Hypervisor(SOURCE_URI) as hypervisor:
        assert hypervisor.lv is lv
        assert hypervisor.hostname() == "hv1"


@pytest.mark.parametrize(
    ("state", "running", "paused"),
    [("running", True, False), ("blocked", True, False), ("paused", False, True), ("shutoff", False, False)],
    ids=["running", "blocked", "paused", "shutoff"],
)
def test_guest_state_predicates(state, running, paused):
    assert (GuestState("g", "u", state, True).running, GuestState("g", "u", state, True).paused) == (running, paused)


def test_client_versions(cloud, lv, monkeypatch):
    monkeypatch.setattr(connection.importlib.metadata, "version", lambda name: {"libvirt-python": "9.0.0"}[name])
    cloud.client_version = 9_010_002
    assert connection.client_versions(lv) == {"libvirt_python": "9.0.0", "libvirt_client": "9.10.2"}


def test_client_versions_without_pip_metadata(lv, monkeypatch):
    def not_installed(name):
        raise connection.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(connection.importlib.metadata, "version", not_installed)
    assert connection.client_versions(lv) == {"libvirt_python": None, "libvirt_client": "9.0.0"}


def test_client_versions_without_the_binding(monkeypatch):
    monkeypatch.setattr(connection, "libvirt", None)
    assert connection.client_versions() == {"libvirt_python": None, "libvirt_client": None}


def test_job_completed_events_need_an_event_connection(cloud, lv, hv1):
    cloud.add_guest(hv1, "web01")
    with Hypervisor(SOURCE_URI, lv) as hypervisor, pytest.raises(MigrationError, match="opened without events"):
        hypervisor.watch_job_completed(hypervisor.find_domain("web01"), print)
    assert cloud.event_callbacks == {}  # the loop runs for keepalive, but nothing watches this connection


def test_event_connection_starts_the_loop_once(cloud, lv, hv1):
    cloud.add_guest(hv1, "web01")
    with Hypervisor(SOURCE_URI, lv, events=True) as first, Hypervisor(SOURCE_URI, lv, events=True):
        stop = first.watch_job_completed(first.find_domain("web01"), print)
        assert cloud.event_loop is True
        assert len(cloud.event_callbacks) == 1
        stop()
        stop()  # a second stop is harmless
    assert cloud.event_callbacks == {}
    assert connection._EVENT_LOOPS[id(lv)].is_alive()
