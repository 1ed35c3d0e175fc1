"""The evacuate role's defaults, its argument specs and the evacuate module agree; so do the migrate playbook's
documented defaults and the migrate module."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.kvm.live_migration.plugins.modules import evacuate, migrate

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "evacuate"
# Role variables whose 0 or [] stands for the module's unset option (a survey cannot send "unset").
UNSET_IN_ROLE = {"max_per_destination": 0, "timeout": 0, "parallel_connections": 0, "compression": []}
ROLE_ONLY = {"target", "group", "destinations", "guests", "guests_query", "report_path", "set_stats",
             "return_report_path"}


def load(path):
    return yaml.safe_load(path.read_text())


def role_specs():
    return load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]


def test_every_default_is_documented_with_the_same_value():
    defaults = load(ROLE / "defaults" / "main.yml")
    documented = role_specs()["return"]["options"]
    assert set(defaults) == set(documented)
    for name, value in defaults.items():
        assert documented[name]["default"] == value or (isinstance(value, str) and "{{" in value), name


def test_the_main_entry_point_documents_everything_but_the_return_report():
    specs = role_specs()
    assert set(specs["return"]["options"]) - set(specs["main"]["options"]) == {"evacuate_return_report_path"}


@pytest.mark.parametrize("name", [name for name in load(ROLE / "defaults" / "main.yml")
                                  if name.removeprefix("evacuate_") not in ROLE_ONLY])
def test_each_role_default_is_the_module_default(name):
    option = name.removeprefix("evacuate_")
    spec = evacuate.ARGUMENT_SPEC[option]
    role_default = load(ROLE / "defaults" / "main.yml")[name]
    if option in UNSET_IN_ROLE:
        assert (role_default, spec.get("default")) == (UNSET_IN_ROLE[option], None)
    else:
        assert role_default == spec["default"]
        assert role_specs()["main"]["options"][name]["type"] == spec["type"]
        assert role_specs()["main"]["options"][name].get("choices") == spec.get("choices")


def test_the_migrate_playbook_documents_the_module_defaults():
    options = load(REPO / "meta" / "argument_specs.yml")["argument_specs"]["migrate"]["options"]
    mapped = {name.removeprefix("migrate_"): spec for name, spec in options.items()
              if name.removeprefix("migrate_") in migrate.ARGUMENT_SPEC}
    assert set(mapped) == {"transport", "allow_insecure", "bandwidth", "max_downtime_ms", "allow_auto_converge",
                           "allow_post_copy", "convergence_threshold", "timeout"}
    for option, spec in mapped.items():
        assert spec.get("default") == migrate.ARGUMENT_SPEC[option].get("default"), option
        assert spec["type"] == migrate.ARGUMENT_SPEC[option]["type"], option
