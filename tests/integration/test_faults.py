"""Faults injected in the lab while a guest migrates: each test ends with the guest running on exactly one host,
its memory verified intact there (its counter continuous), and the module's result naming that host.

The one exception is named where it happens: a post-copy that broke cannot be resumed with libvirt 11.3.0 on the
destination (its daemon dies on every resume), so on the backports stack that test proves that the module sends no
resume, resumes no stale copy and names the upgrade, and the guest is lost with the post-copy, as libvirt leaves it.
docs/reliability.md lists every fault and its test.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import cannot_resume_post_copy, lab

BANDWIDTH_MIB = 32  # 512 MiB at 32 MiB/s: the first pass alone takes 16 s, time enough to inject a fault


def faulty_guest(running_lab, dirty_mib, pages_per_s):
    """Start guest "faulty" (512 MiB) on hv1; once the test is done, restore the link and remove it."""
    running_lab.start_guest("hv1", "faulty", memory_mib=512, dirty_mib=dirty_mib, pages_per_s=pages_per_s)
    yield "faulty"
    lab("link", "up", "hv2", check=False)
    running_lab.remove_guest("faulty")


@pytest.fixture
def guest(running_lab):
    """Rewrites 500 random pages/s of a 128 MiB working set (pre-copy converges)."""
    yield from faulty_guest(running_lab, 128, 500)


@pytest.fixture
def hot_guest(running_lab):
    """Rewrites 40,000 random pages/s of 384 MiB: pre-copy cannot finish at 32 MiB/s."""
    yield from faulty_guest(running_lab, 384, 40000)


def migrate_args(**changes):
    return {"name": "faulty", "dest_host": "hv2", "bandwidth": BANDWIDTH_MIB, "progress_interval": 0, **changes}


def only_on(running_lab, host, name):
    other = "hv2" if host == "hv1" else "hv1"
    assert name in running_lab.running_guests(host)
    assert name not in running_lab.running_guests(other)


@pytest.mark.parametrize(("cut_s", "timeout_s", "status", "owner"), [(8, 180, "completed", "hv2"),
                                                                     (60, 25, "aborted|failed", "hv1")],
                         ids=["shorter-than-the-budget", "longer-than-the-budget"])
def test_link_cut_during_precopy(running_lab, guest, tmp_path, cut_s, timeout_s, status, owner):
    before = running_lab.console("hv1", guest)
    finish = running_lab.start_module("hv1", migrate_args(timeout=timeout_s), tmp_path)
    running_lab.wait_for_job("hv1", guest)
    lab("link", "down", "hv2")
    if cut_s < timeout_s:
        time.sleep(cut_s)
        lab("link", "up", "hv2")
        _code, output, result = finish()
    else:
        _code, output, result = finish()  # the budget ends it while the link is still down
        lab("link", "up", "hv2")
    migration = result["migration"]
    # Aborted, or failed when libvirt's own end of the job outlived the bounded abort: the guest's host is named.
    assert (migration["status"] in status.split("|"), migration["owner"]) == (True, owner), output
    time.sleep(2)
    only_on(running_lab, owner, guest)
    running_lab.assert_intact(owner, guest, before)


def test_destination_qemu_killed_before_the_switchover(running_lab, guest, tmp_path):
    before = running_lab.console("hv1", guest)
    finish = running_lab.start_module("hv1", migrate_args(), tmp_path)
    running_lab.wait_for_job("hv1", guest)
    lab("kill-qemu", "hv2", guest)
    _code, output, result = finish()
    migration = result["migration"]
    assert (migration["status"], migration["owner"]) == ("failed", "hv1"), output
    only_on(running_lab, "hv1", guest)
    running_lab.assert_intact("hv1", guest, before)


def test_a_second_run_refuses_while_the_first_migrates_and_a_rerun_after_a_killed_run_reports_the_truth(
        running_lab, guest, tmp_path):
    before = running_lab.console("hv1", guest)
    first = running_lab.start_module("hv1", migrate_args(bandwidth=16), tmp_path, label="first")
    running_lab.wait_for_job("hv1", guest)
    # Two runs at once for one guest: the second refuses, and leaves the first one's job alone.
    second = running_lab.module("hv1", migrate_args(bandwidth=16), tmp_path)
    assert second["failed"] and "already has an active job on hv1" in second["msg"], second
    assert "migration_info" in second["msg"]
    # The first run's controller dies mid-migration; the job goes on in libvirt, unsteered.
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()
    rerun = running_lab.module("hv1", migrate_args(bandwidth=16), tmp_path)
    assert rerun["failed"] and "already has an active job on hv1" in rerun["msg"], rerun
    deadline = time.monotonic() + 180
    while guest not in running_lab.running_guests("hv2") or guest in running_lab.defined_guests("hv1"):
        assert time.monotonic() < deadline, "the orphaned job did not end"
        time.sleep(1)
    # After the job ended, a re-run reports the truth.
    truth = running_lab.module("hv1", migrate_args(), tmp_path)
    assert (truth["changed"], truth["migration"]["status"], truth["migration"]["owner"]) == (
        False, "already_migrated", "hv2"), truth
    only_on(running_lab, "hv2", guest)
    running_lab.assert_intact("hv2", guest, before)


@pytest.mark.parametrize("passes", [1, 2], ids=["in-the-first-pass", "in-the-second-pass"])
def test_destination_libvirtd_killed_during_precopy(running_lab, guest, tmp_path, passes):
    before = running_lab.console("hv1", guest)
    finish = running_lab.start_module("hv1", migrate_args(), tmp_path)
    running_lab.wait_for_job("hv1", guest, passes=passes)
    lab("kill-libvirtd", "hv2")
    try:
        _code, output, result = finish()
    finally:
        lab("restart-libvirtd", "hv2")
    migration = result["migration"]
    assert (migration["status"], migration["owner"]) == ("failed", "hv1"), output
    time.sleep(3)
    only_on(running_lab, "hv1", guest)
    running_lab.assert_intact("hv1", guest, before)


KEEPALIVE_OUTLASTED_S = 45  # libvirt's keepalive on its peer connection fails a job after about 30 s of silence
BROKEN_RESUME = "libvirt 11.3.0 crashes its libvirtd on every post-copy resume"


def wait_for_post_copy(running_lab, name, timeout=90):
    deadline = time.monotonic() + timeout
    while running_lab.state_reason("hv2", name) != "running (post-copy)":
        assert time.monotonic() < deadline, f"{name} never ran in post-copy on hv2"
        time.sleep(0.2)


def libvirtd_pid(running_lab, host):
    return (running_lab.state / host / "run" / "libvirtd.pid").read_text().strip()


def start_post_copy_and_cut_the_link(running_lab, guest, tmp_path, **changes):
    before = running_lab.console("hv1", guest)
    finish = running_lab.start_module("hv1", migrate_args(allow_post_copy=True, **changes), tmp_path)
    wait_for_post_copy(running_lab, guest)
    lab("link", "down", "hv2")
    return before, finish


def assert_left_for_a_fixed_libvirt(running_lab, guest, result, daemon):
    """libvirt 11.3.0 on the destination: no resume was sent (its daemon still runs), the source's stale copy was
    not resumed, and the failure names the upgrade; the guest is lost with the post-copy, as libvirt leaves it."""
    migration = result["migration"]
    assert (result["failed"], migration["status"], migration["owner"]) == (True, "failed", "unknown"), result
    assert BROKEN_RESUME in result["msg"] and "Upgrade libvirt there" in result["msg"], result["msg"]
    assert "post_copy_recovery_unavailable" in [action["what"] for action in migration["actions"]]
    assert libvirtd_pid(running_lab, "hv2") == daemon
    assert running_lab.state_reason("hv1", guest) == "paused (post-copy failed)"


def test_link_cut_during_post_copy_with_a_destination_libvirt_that_cannot_resume(running_lab, hot_guest, tmp_path):
    """The backports stack's libvirt 11.3.0 on hv2 dies on every post-copy resume. After a cut link broke the
    post-copy, the module sends no resume (hv2's libvirtd keeps its pid), resumes no stale copy, and fails naming
    the upgrade. (The resume itself, on the stock stack, is not yet reliable in this lab: docs/reliability.md.)"""
    assert cannot_resume_post_copy("hv2"), "this test needs libvirt 11.3 on hv2: it runs in the backports stage"
    guest = hot_guest
    _before, finish = start_post_copy_and_cut_the_link(running_lab, guest, tmp_path)
    daemon = libvirtd_pid(running_lab, "hv2")
    time.sleep(KEEPALIVE_OUTLASTED_S)  # the source's libvirt has called the post-copy failed
    lab("link", "up", "hv2")
    _code, _output, result = finish()
    assert_left_for_a_fixed_libvirt(running_lab, guest, result, daemon)
