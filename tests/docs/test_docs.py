"""The documentation a reader acts on, checked against the collection as it is built and installed.

- every relative link (and its #anchor) in the Markdown resolves;
- every YAML example in docs/, README and the modules' EXAMPLES passes ``ansible-playbook --syntax-check``
  against the built collection (a task list inside a play); other YAML examples parse;
- every filter the examples, roles and playbooks use is Jinja's, ansible.builtin's, or from a collection
  galaxy.yml declares (a short name like ``json_query`` works only through a redirect to a collection
  that may not be installed);
- ``ansible-doc`` renders every module, filter and role without a warning.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jinja2
import jinja2.filters
import jinja2.nodes
import pytest
import yaml
from examples import REPO_ROOT, all_examples

BIN = Path(sys.executable).parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...
CONDITIONAL_KEYS = frozenset({"when", "that", "until", "changed_when", "failed_when"})
OWN_COLLECTIONS = frozenset({"ansible.builtin", "kvm.live_migration"})
EXAMPLES = list(all_examples())


# -- links ----------------------------------------------------------------------------------------


def markdown_documents():
    """The Markdown files of the repository (tracked, or new and not ignored), not those of tools' caches."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return sorted(REPO_ROOT / name for name in listed if not name.startswith("tests/") and (REPO_ROOT / name).exists())


def github_anchors(markdown):
    """The anchors GitHub gives a document's headings (lower case, punctuation dropped, spaces to '-')."""
    anchors, seen = set(), {}
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if in_fence or not line.startswith("#"):
            continue
        title = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", line.lstrip("#").strip())
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors.update(re.findall(r'<a id="([^"]+)"', markdown))
    return anchors


def broken_links(document):
    text = document.read_text()
    text_without_code = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for match in LINK.finditer(text_without_code):
        target = re.sub(r"\\(.)", r"\1", match.group(1) or match.group(2))  # CommonMark's backslash escapes
        if EXTERNAL.match(target):
            continue
        path_part, anchor = [*target.split("#", 1), ""][:2]
        resolved = (document.parent / path_part).resolve() if path_part else document
        if not resolved.exists():
            yield f"{target}: no such file ({resolved})"
        elif anchor and resolved.suffix == ".md" and anchor not in github_anchors(resolved.read_text()):
            yield f"{target}: {resolved.name} has no heading with the anchor #{anchor}"


@pytest.mark.parametrize("document", markdown_documents(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(document):
    assert list(broken_links(document)) == []


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# A title\n")
    page.write_text("[ok](other.md#a-title) [gone](missing.md) [anchor](other.md#no-such) [web](https://x.org)\n")
    assert [problem.split(":")[0] for problem in broken_links(page)] == ["missing.md", "other.md#no-such"]


# Where the shipped documents send readers for what the tarball leaves out (benchmarks/, DEVELOPERS.md, tests/).
REPOSITORY_URLS = re.compile(r"https://(?:github\.com/kvm-live-migration/kvm\.live_migration/(?:blob|tree)/main|"
                             r"raw\.githubusercontent\.com/kvm-live-migration/kvm\.live_migration/main)/([^)#\s]+)"
                             r"(?:#([^)\s]+))?")


def broken_repository_links(document):
    """Links to files of this repository by URL (the shipped documents' way to name unshipped files) that name no
    file of the checkout, or no heading of it."""
    for path, anchor in REPOSITORY_URLS.findall(document.read_text()):
        target = REPO_ROOT / path
        if not target.exists():
            yield f"{path}: no such file in the repository"
        elif anchor and target.suffix == ".md" and anchor not in github_anchors(target.read_text()):
            yield f"{path}#{anchor}: {target.name} has no heading with that anchor"


@pytest.mark.parametrize("document", markdown_documents(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_link_to_the_repository_names_one_of_its_files(document):
    assert list(broken_repository_links(document)) == []


def test_the_shipped_documents_link_only_to_what_is_shipped(installed_collection):
    """Installed from the tarball, the README, the changelog and docs/ resolve every relative link there."""
    root = installed_collection / "ansible_collections" / "kvm" / "live_migration"
    documents = sorted(root.rglob("*.md"))
    assert root / "README.md" in documents and len(documents) > 5
    assert {str(document.relative_to(root)): list(broken_links(document)) for document in documents
            if list(broken_links(document))} == {}


def test_the_readme_indexes_every_guide():
    readme = (REPO_ROOT / "README.md").read_text()
    guides = sorted(path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "docs").glob("*.md"))
    assert [guide for guide in guides if f"]({guide})" not in readme] == []


# -- YAML examples --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def installed_collection(tmp_path_factory):
    """ANSIBLE_COLLECTIONS_PATH with the collection as built (tests/build.sh) and installed from its tarball."""
    built = tmp_path_factory.mktemp("build")
    subprocess.run(["bash", str(REPO_ROOT / "tests" / "build.sh"), str(built)], check=True, capture_output=True)
    (tarball,) = built.glob("kvm-live_migration-*.tar.gz")
    collections = tmp_path_factory.mktemp("collections")
    target = collections / "ansible_collections" / "kvm" / "live_migration"
    target.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(target, filter="data")
    return collections


def ansible_env(collections):
    # the collection under test first; the dependencies come with the ansible package (site-packages)
    return {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_DEPRECATION_WARNINGS": "0", "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}


def syntax_check(example, collections, directory):
    playbook = directory / (re.sub(r"\W+", "_", example.source) + ".yml")
    playbook.write_text(example.as_playbook())
    run = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", str(playbook)],
                         capture_output=True, text=True, env=ansible_env(collections), cwd=directory, check=False)
    return None if run.returncode == 0 else f"{example.source}:\n{run.stdout}{run.stderr}"


def test_every_yaml_example_parses():
    problems = []
    for example in EXAMPLES:
        try:
            yaml.safe_load(example.text)
        except yaml.YAMLError as error:
            problems.append(f"{example.source}: {error}")
    assert problems == []


def test_every_playbook_and_task_example_passes_the_syntax_check(installed_collection, tmp_path):
    runnable = [example for example in EXAMPLES if example.kind != "yaml"]
    assert len(runnable) >= 10, [example.source for example in EXAMPLES]  # the collector found the examples

    def check(example):
        return syntax_check(example, installed_collection, tmp_path)

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [failure for failure in pool.map(check, runnable) if failure]
    assert failures == [], "\n".join(failures)


def test_the_syntax_check_can_fail(installed_collection, tmp_path):
    from examples import Example

    wrong = Example("made up", "- name: A module the collection does not have\n  kvm.live_migration.teleport: {}\n")
    assert "teleport" in syntax_check(wrong, installed_collection, tmp_path)


# -- filters --------------------------------------------------------------------------------------


def builtin_filters():
    names = set(jinja2.filters.FILTERS)
    import ansible.plugins.filter as ansible_filters

    for module in pkgutil.iter_modules(ansible_filters.__path__):
        loaded = importlib.import_module(f"ansible.plugins.filter.{module.name}")
        if hasattr(loaded, "FilterModule"):
            names.update(loaded.FilterModule().filters())
    return names


def declared_collections():
    galaxy = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())
    return OWN_COLLECTIONS | set(galaxy.get("dependencies") or {})


def templates(data, key=None):
    """Every Jinja template in loaded YAML; a bare conditional (when, that, ...) is an expression."""
    if isinstance(data, dict):
        for item_key, value in data.items():
            yield from templates(value, item_key)
    elif isinstance(data, list):
        for value in data:
            yield from templates(value, key)
    elif isinstance(data, str):
        if key in CONDITIONAL_KEYS and "{{" not in data:
            yield "{{ " + data + " }}"
        elif "{{" in data or "{%" in data:
            yield data


def filters_used(template):
    return {node.name for node in jinja2.Environment().parse(template).find_all(jinja2.nodes.Filter)}


def undeclared_filters(sources, builtins, declared):
    problems = []
    for source, data in sources:
        for template in templates(data):
            for name in sorted(filters_used(template)):
                collection = name.rpartition(".")[0]
                if (collection and collection not in declared) or (not collection and name not in builtins):
                    problems.append(f"{source}: filter {name!r}" + (
                        f" needs {collection} in galaxy.yml dependencies" if collection else
                        " is not Jinja's or ansible.builtin's: write its fully qualified name and declare "
                        "its collection in galaxy.yml"))
    return problems


def collection_yaml():
    for directory in ("roles", "playbooks", "extensions"):
        for path in sorted((REPO_ROOT / directory).rglob("*.yml")):
            yield str(path.relative_to(REPO_ROOT)), yaml.safe_load(path.read_text())


def test_every_filter_used_is_declared():
    sources = [(example.source, example.data) for example in EXAMPLES] + list(collection_yaml())
    assert undeclared_filters(sources, builtin_filters(), declared_collections()) == []


def test_the_filter_check_can_fail():
    sources = [("made up", [{"debug": {"msg": "{{ x | json_query('a') | other.coll.f | kvm.live_migration.s }}"}},
                            {"when": "y | community.general.to_x"}])]
    problems = undeclared_filters(sources, builtin_filters(), OWN_COLLECTIONS | {"community.general"})
    assert len(problems) == 2 and "'json_query'" in problems[0] and "other.coll" in problems[1], problems


# -- ansible-doc ----------------------------------------------------------------------------------


def plugin_names(kind):
    directory = {"module": "plugins/modules", "filter": "plugins/filter", "role": "roles"}[kind]
    if kind == "role":
        return sorted(path.name for path in (REPO_ROOT / directory).iterdir() if (path / "meta").is_dir())
    pattern = "*.py" if kind == "module" else "*.yml"
    return sorted(path.stem for path in (REPO_ROOT / directory).glob(pattern))


@pytest.mark.parametrize("kind", ["module", "filter", "role"])
def test_ansible_doc_renders_everything_without_a_warning(installed_collection, kind):
    names = [f"kvm.live_migration.{name}" for name in plugin_names(kind)]
    assert names
    run = subprocess.run([str(BIN / "ansible-doc"), "-t", kind, *names], capture_output=True, text=True,
                         env={**ansible_env(installed_collection), "ANSIBLE_DEPRECATION_WARNINGS": "1"}, check=False)
    assert run.returncode == 0, run.stderr
    assert not re.search(r"\[(WARNING|ERROR|DEPRECATION WARNING)\]", run.stderr + run.stdout), run.stderr
    for name in names:
        assert name in run.stdout or name.rpartition(".")[2] in run.stdout


def test_the_playbooks_page_is_what_their_specs_render():
    """docs/playbooks.md renders meta/argument_specs.yml (tests/playbook_docs.py), which ansible-doc cannot show."""
    run = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "playbook_docs.py"), "check"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    for playbook in sorted(path.stem for path in (REPO_ROOT / "playbooks").glob("*.yml")):
        assert f"\n## {playbook}\n" in (REPO_ROOT / "docs" / "playbooks.md").read_text(), playbook
