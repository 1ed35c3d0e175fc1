"""Progress snapshots (written by the modules) and the lines the action plugin prints from them."""

from __future__ import annotations

import json

from fake_libvirt import MIB

from ansible_collections.kvm.live_migration.plugins.module_utils.progress import ProgressBoard, progress_lines

MIGRATING = {"state": "migrating", "destination": "hv2", "pass": 3, "percent": 87.5, "remaining_bytes": 64 * MIB,
             "ratio": 0.41, "eta_s": 2.4, "throttle_pct": 0, "strategy": "precopy"}


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_board_writes_at_most_once_a_second_and_atomically(tmp_path):
    clock, path = Clock(), tmp_path / "progress.json"
    board = ProgressBoard(str(path), clock=clock, wall_clock=lambda: 1.5e9)
    board.expect(2)
    assert json.loads(path.read_text()) == {"updated": 1.5e9, "total": 2, "done": 0, "guests": {}}
    board.update("web01", **MIGRATING)
    assert json.loads(path.read_text())["guests"] == {}  # within the second since the last write
    clock.now += 1.0
    board.update("web02", state="done", outcome="migrated")
    written = json.loads(path.read_text())
    assert (written["done"], sorted(written["guests"])) == (1, ["web01", "web02"])
    assert [entry.name for entry in tmp_path.iterdir()] == ["progress.json"]  # no temporary file left
    board.remove()
    assert not path.exists()


def test_lines_for_one_migration():
    assert progress_lines({"total": 1, "done": 0, "guests": {"web01": MIGRATING}}, "hv1") == [
        "hv1: web01 -> hv2: pass 3, 87.5 %, 64 MiB left, ratio 0.41, ETA 2 s"]


def test_lines_for_an_evacuation_count_the_guests_done():
    snapshot = {"total": 4, "done": 1, "guests": {
        "a": {"state": "done", "outcome": "migrated"},
        "b": {**MIGRATING, "ratio": 1.2, "eta_s": None, "throttle_pct": 85, "strategy": "auto_converge"},
        "c": {"state": "migrating", "destination": "hv3", "pass": None},
        "d": {"state": "waiting", "destination": "hv2"}}}
    assert progress_lines(snapshot, "hv1") == [
        "hv1: b -> hv2: pass 3, 87.5 %, 64 MiB left, ratio 1.20, ETA none (not converging), throttle 85 %, "
        "auto_converge",
        "hv1: c -> hv3: starting",
        "hv1: 1 of 4 guests done, 2 migrating, 1 waiting"]


def test_a_snapshot_that_cannot_be_written_is_a_note_never_an_exception(tmp_path):
    """A full disk or a path that cannot be made must not end the watch of the migration it reports on."""
    (tmp_path / "file").write_text("")
    board = ProgressBoard(str(tmp_path / "file" / "kvmlm-progress-x.json"))
    board.expect(1)
    board.update("web01", state="migrating", **{"pass": 1})
    board.remove()
    assert board.write_error.startswith(f"the progress snapshot could not be written to {tmp_path}/file/")
    assert board.write_error.endswith("the migration was watched all the same")
