"""What AWX / Automation Controller runs: surveys against the argument specs, job templates, the execution
environment (ansible-builder's build context and the collection's dependency metadata)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bindep.depends import Depends
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
AWX = REPO / "docs" / "awx"
TEMPLATES = ("evacuate_host", "rolling_maintenance", "migrate")
# The argument specs a playbook's variables are checked against: its own (meta/argument_specs.yml), and the roles
# it runs.
ROLE_SPECS = {"evacuate_host": ["evacuate"], "rolling_maintenance": ["evacuate"], "migrate": []}
BOOLEAN_CHOICES = ["true", "false"]


def load_yaml(path):
    return yaml.safe_load(path.read_text())


def specs_of(playbook):
    options = dict(load_yaml(REPO / "meta" / "argument_specs.yml")["argument_specs"][playbook]["options"])
    for role in ROLE_SPECS[playbook]:
        options.update(load_yaml(REPO / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]
                       ["options"])
    return options


def questions():
    for template in TEMPLATES:
        for question in json.loads((AWX / f"{template}.survey.json").read_text())["spec"]:
            yield pytest.param(template, question, id=f"{template}:{question['variable']}")


@pytest.mark.parametrize(("template", "question"), list(questions()))
def test_each_survey_question_matches_its_argument_spec(template, question):
    spec = specs_of(template).get(question["variable"])
    assert spec is not None, f"{question['variable']} is in no argument spec {template} runs with"
    kind, default = spec.get("type", "str"), spec.get("default")
    assert question["required"] == spec.get("required", False)
    if kind == "bool":
        assert (question["type"], question["choices"], question["default"]) == (
            "multiplechoice", BOOLEAN_CHOICES, str(default).lower())
    elif "choices" in spec:
        assert (question["type"], question["choices"], question["default"]) == ("multiplechoice", spec["choices"],
                                                                                default)
    else:
        expected_type = {"int": "integer", "float": "float", "str": "text"}[kind]
        assert question["type"] == expected_type
        assert question["default"] == ("" if default is None else default)
        if kind in ("int", "float") and default is not None:
            assert question["min"] <= default <= question["max"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_job_template_runs_the_collection_playbook_through_the_project(template):
    job_template = json.loads((AWX / f"{template}.job_template.json").read_text())
    assert job_template["survey_enabled"] is True
    wrapper = load_yaml(AWX / "project" / job_template["playbook"])
    assert wrapper == [{"name": f"Run kvm.live_migration.{template}",
                        "ansible.builtin.import_playbook": f"kvm.live_migration.{template}"}]
    assert (REPO / "playbooks" / f"{template}.yml").exists()
    assert json.loads((AWX / f"{template}.survey.json").read_text())["spec"]


def test_the_project_installs_the_collections_the_execution_environment_has():
    assert (AWX / "project" / "collections" / "requirements.yml").read_text() == (AWX / "requirements.yml").read_text()
    galaxy = load_yaml(REPO / "galaxy.yml")
    entries = load_yaml(AWX / "requirements.yml")["collections"]
    from_galaxy = {entry["name"] for entry in entries if "type" not in entry}
    assert from_galaxy == set(galaxy["dependencies"])
    # This collection is not on Galaxy: it comes from its repository, at the tag of the version galaxy.yml says.
    (own,) = [entry for entry in entries if entry.get("type") == "git"]
    assert own["name"] == f"{galaxy['repository']}.git" and own["version"] == galaxy["version"]


def test_ansible_builder_creates_the_build_context(tmp_path):
    builder = shutil.which("ansible-builder", path=str(Path(sys.executable).parent))
    assert builder, "ansible-builder is in test-requirements.txt"
    context = tmp_path / "context"
    subprocess.run([builder, "create", "-f", str(AWX / "execution-environment.yml"), "-c", str(context),
                    "--output-filename", "Containerfile"], check=True, capture_output=True, text=True)
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert "dnf config-manager --set-enabled crb" in containerfile  # libvirt-devel's repository
    assert "ansible-galaxy collection install" in containerfile
    assert "introspect" in containerfile  # the collections' own dependencies are read at build time
    assert (context / "_build" / "requirements.yml").read_text() == (AWX / "requirements.yml").read_text()


def test_the_collection_metadata_gives_ansible_builder_its_python_and_system_packages(tmp_path):
    root = tmp_path / "ansible_collections" / "kvm" / "live_migration"
    (root / "meta").mkdir(parents=True)
    for name in ("galaxy.yml", "requirements.txt", "requirements-controller.txt", "bindep.txt",
                 "meta/execution-environment.yml", "meta/ee-requirements.txt"):
        shutil.copy(REPO / name, root / name)
    introspected = subprocess.run(
        [sys.executable, "-m", "ansible_builder._target_scripts.introspect", "introspect", str(tmp_path)],
        check=True, capture_output=True, text=True).stdout
    data = yaml.safe_load(introspected)
    python = [line.split("#")[0].strip() for line in data["python"]]
    assert [line for line in python if line.startswith("libvirt-python")] == [LIBVIRT_PYTHON_PIN]
    assert any(line.startswith("jmespath") for line in python)  # the controller's json_query
    assert "libvirt-devel [platform:rpm compile]" in "\n".join(data["system"])


def requirement_lines(path):
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


LIBVIRT_PYTHON_PIN = "libvirt-python>=7.0,<12.9"


def test_the_hosts_need_only_libvirt_python_and_the_controller_only_jmespath():
    assert requirement_lines(REPO / "requirements.txt") == [LIBVIRT_PYTHON_PIN]
    assert requirement_lines(REPO / "requirements-controller.txt") == ["jmespath"]


# The controller Pythons each ansible-core supports (its own setup metadata; 2.20 dropped 3.11).
CORE_PYTHONS = {"2.16": ("3.10", "3.12"), "2.17": ("3.10", "3.12"), "2.18": ("3.11", "3.13"),
                "2.19": ("3.11", "3.13"), "2.20": ("3.12", "3.14")}


def version_tuple(text):
    return tuple(int(part) for part in text.split("."))


def test_the_execution_environment_builds_with_one_python_throughout(tmp_path):
    """Its Python, the headers the builder stage installs for it, and the ansible-core versions its pin admits
    agree: libvirt-python compiles against that Python's headers, and pip finds an ansible-core for it."""
    definition = load_yaml(AWX / "execution-environment.yml")
    interpreter = definition["dependencies"]["python_interpreter"]
    version = interpreter["python_path"].removeprefix("/usr/bin/python")
    assert interpreter["package_system"] == f"python{version}"
    compile_packages = {rule[0] for rule in Depends("\n".join([
        *definition["dependencies"].get("system", []), (REPO / "bindep.txt").read_text()])).active_rules(
        ["default", "platform:rpm", "platform:redhat", "platform:centos", "compile"])}
    assert f"python{version}-devel" in compile_packages, compile_packages

    spec = definition["dependencies"]["ansible_core"]["package_pip"]
    admitted = [core for core in CORE_PYTHONS if pip_admits(spec, f"{core}.0")]
    assert admitted, spec
    unsupported = [core for core in admitted
                   if not version_tuple(CORE_PYTHONS[core][0]) <= version_tuple(version)
                   <= version_tuple(CORE_PYTHONS[core][1])]
    assert unsupported == [], f"{spec} admits ansible-core {unsupported}, which do not run on Python {version}"

    context = tmp_path / "context"
    builder = shutil.which("ansible-builder", path=str(Path(sys.executable).parent))
    subprocess.run([builder, "create", "-f", str(AWX / "execution-environment.yml"), "-c", str(context),
                    "--output-filename", "Containerfile"], check=True, capture_output=True, text=True)
    assert f"python{version}-devel [platform:rpm compile]" in (context / "_build" / "bindep.txt").read_text()
    assert f'ARG PYCMD="/usr/bin/python{version}"' in (context / "Containerfile").read_text()


def pip_admits(spec, version):
    return Requirement(spec).specifier.contains(version)


def test_the_python_check_can_fail():
    assert not pip_admits("ansible-core>=2.16,<2.20", "2.20.0")
    assert pip_admits("ansible-core>=2.16,<2.20", "2.19.0")
    assert version_tuple("3.12") > version_tuple("3.11")


@pytest.mark.parametrize(
    ("platform", "runtime", "compile_only"),
    [
        (["platform:rpm", "platform:redhat", "platform:centos"], {"libvirt-libs", "libvirt-client", "openssh-clients"},
         {"gcc", "pkgconf", "pkgconf-pkg-config", "libvirt-devel", "python3-devel"}),
        (["platform:dpkg", "platform:debian"], {"libvirt0", "libvirt-clients", "openssh-client"},
         {"gcc", "libc6-dev", "pkg-config", "libvirt-dev", "python3-dev"}),
    ],
    ids=["rhel-family", "debian-family"],
)
def test_bindep_names_the_packages_each_image_family_needs(platform, runtime, compile_only):
    depends = Depends((REPO / "bindep.txt").read_text())

    def packages(*profiles):
        return {rule[0] for rule in depends.active_rules(["default", *platform, *profiles])}

    assert packages() == runtime  # the final image: no compiler, nothing of the lab
    assert packages("compile") == runtime | compile_only  # ansible-builder's builder stage
