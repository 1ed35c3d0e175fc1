"""docs/troubleshooting.md lists every message the code raises, with its fix (tests/troubleshooting.py)."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
troubleshooting = importlib.import_module("troubleshooting")


def test_the_reference_is_what_the_code_raises():
    assert troubleshooting.main(["check"]) == 0


def test_a_new_message_in_the_code_shows_in_the_reference(tmp_path):
    plugins = tmp_path / "plugins"
    shutil.copytree(troubleshooting.PLUGINS, plugins)
    with (plugins / "module_utils" / "request.py").open("a") as code:
        code.write('\n\ndef _made_up(value):\n    raise MigrationError(f"frobnicate={value} is not a frob", '
                   'fix="give a frob")\n')
    assert "| frobnicate={value} is not a frob | give a frob | `request.py:_made_up` |" in \
        troubleshooting.generated(plugins)
    assert "frobnicate" not in troubleshooting.generated()


def test_every_kind_of_message_is_collected():
    reference = troubleshooting.generated()
    for expected in ("max_data_factor={max_data_factor} is below 1",  # a MigrationError
                     "retries={retries} is outside 0-{MAX_RETRIES}",  # evacuation's validation table
                     "runs on both {hostname} and {hostname}",  # Ownership's refusal, raised as it is
                     "fail cpu: {dest_name}'s CPU lacks features",  # a preflight finding
                     "`Unable to resolve address`", "`VIR_ERR_CPU_INCOMPATIBLE`"):  # libvirt's, by message and code
        assert expected in reference
