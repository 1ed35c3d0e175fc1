"""The YAML examples a reader can copy: fenced ```yaml blocks of the Markdown docs and README, and the
EXAMPLES of every module. Each is classified by its shape, so that a test can check it the way Ansible
would read it: a list of plays, a list of tasks (checked inside a play), or other YAML (an inventory,
variables, a specification), which must at least parse.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKDOWN_WITH_EXAMPLES = ("README.md", "docs/*.md")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
YAML_LANGUAGES = ("yaml", "yml")
PLAY_KEYS = frozenset({"hosts", "import_playbook", "ansible.builtin.import_playbook"})


@dataclass(frozen=True)
class Example:
    source: str  # "docs/quickstart.md:42" or "plugins/modules/migrate.py EXAMPLES"
    text: str

    @cached_property
    def data(self):
        return yaml.safe_load(self.text)

    @property
    def kind(self):
        """"playbook", "tasks" or "yaml"."""
        data = self.data
        if not isinstance(data, list) or not data or not all(isinstance(item, dict) for item in data):
            return "yaml"
        if all(PLAY_KEYS & item.keys() for item in data):
            return "playbook"
        return "tasks"

    def as_playbook(self):
        """The example as a playbook: itself, or its tasks in one play on all hosts."""
        if self.kind == "playbook":
            return self.text
        play = [{"name": f"Example from {self.source}", "hosts": "all", "gather_facts": False,
                 "tasks": self.data}]
        return yaml.safe_dump(play, sort_keys=False)


def markdown_files(root=REPO_ROOT):
    for pattern in MARKDOWN_WITH_EXAMPLES:
        yield from sorted(root.glob(pattern))


def markdown_examples(path, root=REPO_ROOT):
    text = path.read_text()
    for match in FENCE.finditer(text):
        if match.group("lang").lower() in YAML_LANGUAGES:
            line = text.count("\n", 0, match.start()) + 1
            yield Example(f"{path.relative_to(root)}:{line}", textwrap.dedent(match.group("body")))


def module_examples(root=REPO_ROOT):
    for path in sorted((root / "plugins" / "modules").glob("*.py")):
        examples = module_string(path, "EXAMPLES")
        if examples is not None:
            yield Example(f"{path.relative_to(root)} EXAMPLES", examples)


def module_string(path, name):
    """The module-level string ``name`` (DOCUMENTATION, EXAMPLES, RETURN) of a Python file, or None."""
    for node in ast.parse(path.read_text()).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == name and isinstance(node.value, ast.Constant)):
            return node.value.value
    return None


def all_examples(root=REPO_ROOT):
    for path in markdown_files(root):
        yield from markdown_examples(path, root)
    yield from module_examples(root)
