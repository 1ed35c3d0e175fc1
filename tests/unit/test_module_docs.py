"""The migrate module's RETURN documents every key the engine returns, and nothing it does not: a reader of
``ansible-doc kvm.live_migration.migrate`` sees each key of ``actions``, ``timeline`` and ``prediction``."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import yaml
from fake_libvirt import Migration
from test_migration_runner import THROTTLED, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
examples = importlib.import_module("examples")  # the docs tests' reader of module strings, beside them

MODULE_UTILS = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"
MIGRATE = MODULE_UTILS.parent / "modules" / "migrate.py"


def returned_migration():
    return yaml.safe_load(examples.module_string(MIGRATE, "RETURN"))["migration"]["contains"]


def test_every_key_of_the_result_is_documented(cloud, hv1, clock):
    cloud.add_guest(hv1, "web01", migration=Migration(samples=THROTTLED))
    result = run(cloud, clock).as_dict()
    documented = returned_migration()
    assert set(documented) == set(result)
    for key in ("actions", "timeline", "prediction"):
        entries = result[key] if isinstance(result[key], list) else [result[key]]
        assert entries, key
        for entry in entries:
            assert set(documented[key]["contains"]) == set(entry), key
    assert set(documented["error"]["contains"]) == {"message", "fix", "code", "code_name"}
    assert set(documented["hosts"]["contains"]) == set(result["hosts"])


def test_every_action_the_engine_records_is_named_in_the_docs():
    recorded = set()
    for path in MODULE_UTILS.glob("*.py"):
        recorded |= set(re.findall(r'record\(\s*"([a-z_]+)"', path.read_text()))  # runner and ownership
    recorded |= set(re.findall(r'Step\(\s*"([a-z_]+)"', (MODULE_UTILS / "policy.py").read_text()))
    recorded |= {f"{feature}_unavailable" for feature in ("post_copy", "auto_converge")}  # _record(f"{feature}_...")
    assert {"abort", "set_downtime", "auto_converge", "post_copy", "wait", "post_copy_found_broken", "pause_both",
            "resume", "source_unreachable"} <= recorded
    described = " ".join(returned_migration()["actions"]["contains"]["what"]["description"])
    assert sorted(what for what in recorded if f"V({what})" not in described) == []
