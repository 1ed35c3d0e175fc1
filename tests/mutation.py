"""Mutation testing of one engine file: every condition flipped in turn must make a unit test fail.

    python tests/mutation.py plugins/module_utils/ownership.py [--tests tests/unit/test_migration_runner.py ...]

Each mutant changes one place of the file's syntax tree: a comparison negated (== and !=, in and not in, is and
is not, < and >=, > and <=), ``and`` swapped with ``or``, one operand dropped from an ``and``/``or``, a ``not``
removed, a True/False constant flipped. The mutant is written into a copy of the checkout (the working tree is
never touched) and the given unit tests run against it, stopping at the first failure. A mutant no test kills
survives: the script lists each with its line and exits 1. A mutant that makes the tests outlast five times the
unmutated run (plus 30 s) counts as killed. ``ast.unparse`` rewrites the whole file, so every
mutant is compared with the unparsed original, not with the text (comments and layout do not count).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = ("tests/unit/test_ownership.py", "tests/unit/test_migration_runner.py", "tests/unit/test_evacuation.py",
                 "tests/unit/test_migrate_module.py")
NEGATED = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
           ast.IsNot: ast.Is, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt}


def mutation_sites(tree):
    """(node index in ast.walk order, kind, what) of every place a mutant changes."""
    sites = []
    for index, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in NEGATED:
            sites.append((index, "negate", type(node.ops[0]).__name__))
        elif isinstance(node, ast.BoolOp):
            sites.append((index, "swap", type(node.op).__name__))
            sites.extend((index, "drop", position) for position in range(len(node.values)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append((index, "unnot", "not"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            sites.append((index, "flip", str(node.value)))
    return sites


def mutate(tree, site):
    """A copy of ``tree`` with the one change ``site`` names; the changed node's line."""
    mutant = copy.deepcopy(tree)
    index, kind, what = site
    node = list(ast.walk(mutant))[index]
    if kind == "negate":
        node.ops = [NEGATED[type(node.ops[0])]()]
    elif kind == "swap":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "drop":
        node.values = [value for position, value in enumerate(node.values) if position != what]
        if len(node.values) == 1:  # a BoolOp needs two operands: keep the survivor as a BoolOp with itself
            node.values = node.values * 2
    elif kind == "unnot":
        mutant = _Replace(node, node.operand).visit(mutant)
    elif kind == "flip":
        node.value = not node.value
    return ast.fix_missing_locations(mutant), getattr(node, "lineno", 0)


class _Replace(ast.NodeTransformer):
    """Puts ``new`` where ``old`` (a node of the tree, by identity) was."""

    def __init__(self, old, new):
        self.old, self.new = old, new

    def generic_visit(self, node):
        if node is self.old:
            return self.new
        return super().generic_visit(node)


def copy_checkout(destination):
    for name in ("plugins", "tests", "pyproject.toml", "galaxy.yml", "meta"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, destination / name)


def run_tests(checkout, tests, environment, timeout_s):
    """pytest's exit code; a mutant that makes the tests hang (a loop that never ends) is killed by the timeout."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        completed = subprocess.run(command, cwd=checkout, env=environment, capture_output=True, text=True,
                                   check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return -1
    return completed.returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="the file to mutate, relative to the repository")
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS))
    parser.add_argument("--jobs", type=int, default=4, help="mutants tested at once (the tests mostly wait)")
    options = parser.parse_args()
    tree = ast.parse((REPO / options.target).read_text())
    original = ast.unparse(tree)
    mutants = {}  # text -> (line, the mutated code), one per distinct mutant
    original_lines = original.splitlines()
    for site in mutation_sites(tree):
        mutant, line = mutate(tree, site)
        text = ast.unparse(mutant)
        if text != original:
            changed = next((new for old, new in zip(original_lines, text.splitlines(), strict=True) if old != new), "")
            mutants.setdefault(text, (line, changed.strip()))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvmlm-mutation-") as scratch:
        workers = queue.Queue()
        for number in range(options.jobs):
            workers.put(Worker(Path(scratch) / f"worker{number}", options.target, options.tests))
        baseline = workers.get()
        baseline_started = time.monotonic()
        if baseline.survives(original, timeout_s=None) is False:
            print(f"mutation: the tests fail on the unmutated {options.target}; fix them first", file=sys.stderr)
            return 2
        timeout_s = 5 * (time.monotonic() - baseline_started) + 30
        workers.put(baseline)

        def test(text):
            worker = workers.get()
            try:
                return worker.survives(text, timeout_s)
            finally:
                workers.put(worker)

        with concurrent.futures.ThreadPoolExecutor(options.jobs) as pool:
            outcomes = dict(zip(mutants, pool.map(test, mutants), strict=True))
    survivors = sorted(mutants[text] for text, survived in outcomes.items() if survived)
    elapsed = time.monotonic() - started
    print(f"mutation: {len(mutants)} mutants of {options.target}, {len(mutants) - len(survivors)} killed, "
          f"{len(survivors)} survived ({elapsed:.0f} s)")
    for line, code in survivors:
        print(f"  survived: {options.target}:{line}: {code}")
    return 1 if survivors else 0


class Worker:
    """A copy of the checkout, with its own temporary directory (so its own collection farm, tests/conftest.py)."""

    def __init__(self, root, target, tests):
        self.checkout = root / "checkout"
        self.checkout.mkdir(parents=True)
        copy_checkout(self.checkout)
        self.target = self.checkout / target
        self.tests = tests
        self.environment = {**os.environ, "TMPDIR": str(root), "PYTHONDONTWRITEBYTECODE": "1"}

    def survives(self, text, timeout_s):
        """Whether every test passes with ``text`` as the target file (within ``timeout_s``)."""
        self.target.write_text(text + "\n")
        return run_tests(self.checkout, self.tests, self.environment, timeout_s) == 0


if __name__ == "__main__":
    sys.exit(main())
