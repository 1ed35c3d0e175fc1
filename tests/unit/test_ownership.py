"""Ownership: which host runs the guest, read from both hypervisors of the fake cloud (hv1 the source, hv2 the
destination), before a migration and after it. Each row puts the guest in a state on each host (or takes a host
away) and says what the settlement must answer: a host, or a failure naming what is known, and what it recorded.

tests/mutation.py flips every condition of ownership.py in turn; each must make one of these rows fail."""

from __future__ import annotations

import pytest
from conftest import DEST_URI, SOURCE_URI
from fake_libvirt import C

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import GuestState, Hypervisor
from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError
from ansible_collections.kvm.live_migration.plugins.module_utils.ownership import (
    UNREACHABLE,
    Ownership,
    switched_over,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.result import MigrationResult

# (state, reason) on a host; None: the guest is not defined there; UNREACHABLE: the host does not answer.
RUNNING = (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_BOOTED)
ARRIVED = (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_MIGRATED)
RESUMED_AFTER_SWITCH_OVER = (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED)
PAUSED = (C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_USER)
PAUSED_BY_MIGRATION = (C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_MIGRATION)
POST_COPY_FAILED_SOURCE = (C.VIR_DOMAIN_PAUSED, C.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED)
POST_COPY_FAILED_DESTINATION = (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED)
RUNNING_IN_POST_COPY = (C.VIR_DOMAIN_RUNNING, C.VIR_DOMAIN_RUNNING_POSTCOPY)


def place(cloud, host, state):
    if state not in (None, UNREACHABLE):
        cloud.add_guest(host, "web01", state=state[0], reason=state[1])


def take_down(hosts_and_states):
    """After the connections opened: the hosts whose state is UNREACHABLE stop answering."""
    for host, state in hosts_and_states:
        host.down = state == UNREACHABLE


@pytest.fixture
def settle(cloud, hv1, hv2):
    """settle(on_source, on_destination, status, post_copy=False) -> (owner or the MigrationError, recorded, hosts)."""

    def run(on_source, on_destination, status, post_copy=False):
        place(cloud, hv1, on_source)
        place(cloud, hv2, on_destination)
        recorded = []
        result = MigrationResult(status=status, owner=None, source="hv1", destination="hv2")
        with Hypervisor(SOURCE_URI, cloud.libvirt) as source, Hypervisor(DEST_URI, cloud.libvirt) as destination:
            take_down([(hv1, on_source), (hv2, on_destination)])
            ownership = Ownership("web01", source, destination, lambda what, why: recorded.append(what))
            try:
                owner = ownership.settle(result, post_copy)
            except MigrationError as error:
                owner = error
        return owner, recorded, {name: host.guests.get("web01") for name, host in (("hv1", hv1), ("hv2", hv2))}

    return run


@pytest.mark.parametrize(("on_source", "on_destination", "status", "owner", "recorded"), [
    pytest.param(None, ARRIVED, "completed", "hv2", [], id="completed"),
    pytest.param(RUNNING, None, "failed", "hv1", [], id="failed-before-the-destination-had-it"),
    pytest.param(RUNNING, PAUSED_BY_MIGRATION, "failed", "hv1", [], id="failed-with-an-incoming-copy-left"),
    # libvirt's state is the truth, whatever the status said.
    pytest.param(RUNNING, None, "completed", "hv1", [], id="completed-but-only-the-source-runs"),
    pytest.param(RUNNING, UNREACHABLE, "failed", "hv1", ["destination_unreachable"],
                 id="destination-down-before-the-switch-over"),
    pytest.param(UNREACHABLE, ARRIVED, "completed", "hv2", ["source_unreachable"], id="source-down-after-completion"),
    pytest.param(PAUSED_BY_MIGRATION, None, "failed", "hv1", ["resume"], id="source-left-paused"),
    pytest.param(None, PAUSED, "completed", "hv2", ["resume"], id="destination-left-paused"),
])
def test_the_host_libvirt_shows_running_the_guest_is_its_owner(
        settle, on_source, on_destination, status, owner, recorded):
    found, actions, hosts = settle(on_source, on_destination, status)
    assert (found, actions) == (owner, recorded)
    assert hosts[owner].state == C.VIR_DOMAIN_RUNNING


@pytest.mark.parametrize(("on_source", "on_destination", "status", "post_copy", "message", "recorded"), [
    # The source was paused for the switch-over and resumed, the destination unread: it may run a copy too.
    pytest.param(RESUMED_AFTER_SWITCH_OVER, UNREACHABLE, "failed", False, "may have received all of its memory",
                 ["destination_unread_after_switch_over"], id="switched-over-and-destination-unread"),
    pytest.param(RESUMED_AFTER_SWITCH_OVER, UNREACHABLE, "completed", False, "may have received all of its memory",
                 ["destination_unread_after_switch_over"], id="switched-over-completed-and-destination-unread"),
    pytest.param(PAUSED, UNREACHABLE, "failed", False, "cannot tell where guest 'web01' runs", [],
                 id="source-paused-destination-unread"),
    pytest.param(RUNNING, UNREACHABLE, "completed", False, "cannot tell where guest 'web01' runs", [],
                 id="completed-yet-the-source-runs-and-the-destination-is-unread"),
    pytest.param(None, UNREACHABLE, "failed", False, "cannot tell where guest 'web01' runs", [],
                 id="gone-from-the-source-destination-unread"),
    pytest.param(UNREACHABLE, None, "completed", False, "cannot tell where guest 'web01' runs", [],
                 id="source-unread-destination-without-it"),
    pytest.param(UNREACHABLE, PAUSED, "completed", False, "cannot tell where guest 'web01' runs", [],
                 id="source-unread-destination-paused"),
    pytest.param(UNREACHABLE, RUNNING, "failed", False, "cannot tell where guest 'web01' runs", [],
                 id="failed-source-unread-destination-runs"),
    pytest.param(UNREACHABLE, UNREACHABLE, "failed", False, "cannot tell where guest 'web01' runs", [],
                 id="neither-answers"),
    pytest.param(None, UNREACHABLE, "completed", True, "cannot tell where guest 'web01' runs", [],
                 id="completed-post-copy-destination-unread"),
    pytest.param(RUNNING, ARRIVED, "completed", False, "runs on both hosts after a completed migration", [],
                 id="both-run-after-completion"),
    pytest.param(POST_COPY_FAILED_SOURCE, UNREACHABLE, "failed", True, "the destination held the guest (absent)", [],
                 id="post-copy-broke-destination-unread"),
    pytest.param(UNREACHABLE, POST_COPY_FAILED_DESTINATION, "failed", True,
                 "the destination runs the guest (running (postcopy_failed))", [], id="post-copy-broke-source-unread"),
    pytest.param(UNREACHABLE, POST_COPY_FAILED_SOURCE, "failed", True,
                 "the destination held the guest (paused (postcopy_failed))", [],
                 id="post-copy-broke-source-unread-destination-paused"),
    # Post-copy seen on the hosts counts as post-copy, whoever started it: the source's copy is never resumed.
    pytest.param(POST_COPY_FAILED_SOURCE, POST_COPY_FAILED_DESTINATION, "failed", False,
                 "post-copy of 'web01' failed after the switch", [], id="post-copy-started-by-someone-else"),
    pytest.param(POST_COPY_FAILED_SOURCE, None, "failed", False, "post-copy of 'web01' failed after the switch", [],
                 id="post-copy-failed-on-the-source-only"),
    pytest.param(None, None, "failed", False, "runs on neither host", [], id="nowhere"),
])
def test_what_cannot_be_proven_fails_with_what_is_known(settle, on_source, on_destination, status, post_copy,
                                                        message, recorded):
    found, actions, hosts = settle(on_source, on_destination, status, post_copy)
    assert isinstance(found, MigrationError), found
    assert message in found.message, found.message
    assert actions == recorded
    if on_source == POST_COPY_FAILED_SOURCE:
        assert hosts["hv1"].state == C.VIR_DOMAIN_PAUSED  # the stale copy is never resumed


@pytest.mark.parametrize(("on_source", "on_destination", "expected", "recorded"), [
    pytest.param(RUNNING, None, True, [], id="only-the-source"),
    pytest.param(RUNNING, PAUSED_BY_MIGRATION, True, [], id="the-destination-holds-an-unfinished-copy"),
    pytest.param(RUNNING, UNREACHABLE, True, ["destination_unreachable"], id="destination-unread"),
    pytest.param(RESUMED_AFTER_SWITCH_OVER, None, True, [], id="resumed-and-the-destination-has-none"),
    pytest.param(RESUMED_AFTER_SWITCH_OVER, UNREACHABLE, False, ["destination_unread_after_switch_over"],
                 id="resumed-after-the-switch-over-and-destination-unread"),
    pytest.param(RUNNING, ARRIVED, False, [], id="both"),
    pytest.param(None, ARRIVED, False, [], id="only-the-destination"),
    pytest.param(PAUSED, None, False, [], id="source-paused"),
    pytest.param(RUNNING_IN_POST_COPY, None, False, [], id="source-in-post-copy"),
    pytest.param(UNREACHABLE, None, False, [], id="source-unread"),
])
def test_runs_only_on_source(cloud, hv1, hv2, on_source, on_destination, expected, recorded):
    place(cloud, hv1, on_source)
    place(cloud, hv2, on_destination)
    actions = []
    with Hypervisor(SOURCE_URI, cloud.libvirt) as source, Hypervisor(DEST_URI, cloud.libvirt) as destination:
        take_down([(hv1, on_source), (hv2, on_destination)])
        found = Ownership("web01", source, destination, lambda what, why: actions.append(what)).runs_only_on_source()
    assert (found, actions) == (expected, recorded)


def test_before_a_migration_a_host_that_does_not_answer_is_an_error_naming_it(cloud, hv1, hv2):
    place(cloud, hv1, RUNNING)
    with Hypervisor(SOURCE_URI, cloud.libvirt) as source, Hypervisor(DEST_URI, cloud.libvirt) as destination:
        hv2.down = True
        with pytest.raises(MigrationError, match=r"^looking up guest 'web01' on qemu\+ssh://hv2/system failed"):
            Ownership("web01", source, destination, lambda what, why: None).placement()


@pytest.mark.parametrize(("state", "expected"), [
    (None, False), (UNREACHABLE, False), (GuestState("web01", "u", "running", True, "migration_canceled"), True),
    (GuestState("web01", "u", "running", True, "booted"), False),
    (GuestState("web01", "u", "paused", True, "migration_canceled"), False),
])
def test_switched_over_is_the_source_resumed_after_a_switch_over(state, expected):
    assert switched_over(state) is expected
