"""The changelog rule CI enforces (tests/changelog.py): every change to plugins/, roles/ or playbooks/ since
fragments began brings a fragment, and CHANGELOG.md is what the fragments generate."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
changelog = importlib.import_module("changelog")


def commit(repo, message, files):
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=repo,
                   check=True)


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    commit(tmp_path, "before fragments", {"plugins/modules/a.py": "1"})  # not checked: fragments came later
    commit(tmp_path, "fragments begin", {"changelogs/config.yaml": "x", "changelogs/fragments/.keep": ""})
    return tmp_path


def test_a_change_to_what_users_run_without_a_fragment_is_named(repo):
    commit(repo, "with a fragment", {"plugins/modules/a.py": "2", "changelogs/fragments/a.yml": "bugfixes: []"})
    commit(repo, "tests only", {"tests/unit/test_a.py": "1"})
    commit(repo, "role change alone", {"roles/r/tasks/main.yml": "1"})
    (repo / "playbooks").mkdir()
    (repo / "playbooks" / "p.yml").write_text("uncommitted")
    missing = changelog.commits_without_fragment(repo)
    assert [line.split(" ", 1)[1] for line in missing] == ["role change alone", "tree (uncommitted changes)"]


def test_no_fragment_needed_when_every_change_has_one(repo):
    commit(repo, "with a fragment", {"roles/r/tasks/main.yml": "1", "changelogs/fragments/r.yml": "trivial: []"})
    assert changelog.commits_without_fragment(repo) == []


def test_the_committed_changelog_is_what_the_fragments_generate():
    assert (changelog.REPO_ROOT / "CHANGELOG.md").read_text() == changelog.rendered_changelog()
