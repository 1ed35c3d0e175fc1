"""The changelog: fragments in changelogs/fragments (antsibull-changelog), CHANGELOG.md generated from them.

    python tests/changelog.py generate   # write CHANGELOG.md from changelogs/ (the next release, unreleased)
    python tests/changelog.py check      # CI: fragments lint, CHANGELOG.md is what they generate, and every
                                         # commit (and the uncommitted change) that touches plugins/, roles/ or
                                         # playbooks/ adds or edits a fragment

A change with nothing to tell users still gets a fragment, in the ``trivial`` section (not rendered):

    # changelogs/fragments/tidy-runner.yml
    trivial:
      - migrate - the runner's abort helper moved to its own function.

At a release, ``antsibull-changelog release --version X`` moves the fragments into changelogs/changelog.yaml;
then ``generate`` renders the released history. Until then, ``generate`` renders the unreleased version
from a copy of the tree, so nothing in changelogs/ changes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
WATCHED = ("plugins/", "roles/", "playbooks/")
FRAGMENTS = "changelogs/fragments/"
CHANGELOG_FILES = (FRAGMENTS, "changelogs/changelog.yaml")
BASE_FILE = "changelogs/config.yaml"  # fragments are required from the commit that added it on
COPY_IGNORED = (".git", "lab-state", ".venv", ".ansible", "__pycache__", ".pytest_cache", ".ruff_cache")
CLI = str(Path(sys.executable).parent / "antsibull-changelog")


def git(*args, repo=REPO_ROOT):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


# -- one fragment per change ----------------------------------------------------------------------


def needs_fragment(paths):
    paths = list(paths)
    return any(path.startswith(WATCHED) for path in paths) and not any(path.startswith(CHANGELOG_FILES)
                                                                       for path in paths)


def commits_without_fragment(repo=REPO_ROOT):
    """Commits since fragments began (and the uncommitted change, as "working tree") that change what users
    run, plugins/, roles/ or playbooks/, and add or edit no fragment."""
    base = git("log", "--diff-filter=A", "--format=%H", "--", BASE_FILE, repo=repo).split()
    if not base:
        return ["changelogs/config.yaml is not committed: nothing marks where fragments begin"]
    missing = []
    for line in git("log", "--format=%H %s", f"{base[-1]}..HEAD", repo=repo).splitlines():
        commit, subject = line.split(" ", 1)
        if needs_fragment(git("diff-tree", "--no-commit-id", "--name-only", "-r", commit, repo=repo).split()):
            missing.append(f"{commit[:10]} {subject[:100]}")
    uncommitted = git("status", "--porcelain", "--untracked-files=all", repo=repo).splitlines()
    if needs_fragment(line[3:].split(" -> ")[-1] for line in uncommitted):
        missing.append("working tree (uncommitted changes)")
    return missing


# -- CHANGELOG.md ---------------------------------------------------------------------------------


def galaxy_version(root=REPO_ROOT):
    return yaml.safe_load((root / "galaxy.yml").read_text())["version"]


def has_unreleased_fragments(root):
    return any(path.suffix in (".yml", ".yaml") for path in (root / FRAGMENTS).iterdir())


def rendered_changelog(root=REPO_ROOT):
    """CHANGELOG.md as antsibull-changelog renders it; fragments not yet released appear as the version
    galaxy.yml names, marked unreleased (rendered from a copy, so the real changelogs/ keeps its fragments)."""
    with tempfile.TemporaryDirectory(prefix="kvmlm-changelog-") as scratch:
        copy = Path(scratch) / "collection"
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns(*COPY_IGNORED), symlinks=True)
        version = galaxy_version(copy)
        unreleased = has_unreleased_fragments(copy)
        command = ["release", "--version", version, "--date", "2000-01-01"] if unreleased else ["generate"]
        run = subprocess.run([CLI, *command], cwd=copy, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise SystemExit(f"antsibull-changelog {' '.join(command)} failed:\n{run.stdout}{run.stderr}")
        text = (copy / "CHANGELOG.md").read_text()
    if unreleased:
        escaped = re.escape("v" + version.replace(".", "\\."))
        text = re.sub(rf"^(## {escaped})$", r"\1 \\(unreleased\\)", text, count=1, flags=re.MULTILINE)
    return text


# -- commands -------------------------------------------------------------------------------------


def generate():
    (REPO_ROOT / "CHANGELOG.md").write_text(rendered_changelog())
    print("changelog.py: wrote CHANGELOG.md")
    return 0


def check():
    problems = []
    lint = subprocess.run([CLI, "lint"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if lint.returncode != 0 or lint.stdout.strip():
        problems.append(f"antsibull-changelog lint:\n{lint.stdout}{lint.stderr}")
    if (REPO_ROOT / "CHANGELOG.md").read_text() != rendered_changelog():
        problems.append("CHANGELOG.md is not what changelogs/ generates: run python tests/changelog.py generate")
    missing = commits_without_fragment()
    if missing:
        problems.append("changes to plugins/, roles/ or playbooks/ without a changelog fragment in "
                        f"{FRAGMENTS} (add one; a change users do not see goes under 'trivial'):\n  "
                        + "\n  ".join(missing))
    for problem in problems:
        print(f"changelog.py: {problem}", file=sys.stderr)
    if not problems:
        print("changelog.py: fragments lint clean, CHANGELOG.md generated from them, every change has a fragment")
    return 1 if problems else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("generate", "check"))
    return {"generate": generate, "check": check}[parser.parse_args(argv).command]()


if __name__ == "__main__":
    sys.exit(main())
