"""Fixtures of the unit tests: a fake cloud of two hypervisors, hv1 (source) and hv2 (destination), and
module_runner, which runs a module's main() against it with AnsibleModule's exits patched."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from unittest import mock

import pytest
from ansible.module_utils import basic
from fake_libvirt import FakeClock, FakeCloud

from ansible_collections.kvm.live_migration.plugins.module_utils import connection

SOURCE_URI = "qemu:///system"
DEST_URI = "qemu+ssh://hv2/system"

# The unit tests of what runs on the controller (action, filter and plugin_utils plugins, benchmarks, docs, role
# specs, AWX files). Every other test file here tests what runs on the managed hosts (plugins/module_utils,
# plugins/modules) and is marked module_side: tests/unit-pythons.sh runs those under the hosts' oldest and newest
# Pythons (3.9 and 3.13) with -m module_side, so a new module-side test file is covered without being listed.
CONTROLLER_SIDE_TESTS = frozenset({
    "test_awx.py",
    "test_background.py",
    "test_benchmark.py",
    "test_migration_summary.py",
    "test_module_docs.py",
    "test_playbook_variables.py",
    "test_role_specs.py",
})


def pytest_collection_modifyitems(items):
    stale = sorted(name for name in CONTROLLER_SIDE_TESTS if not (Path(__file__).parent / name).is_file())
    if stale:  # a renamed controller-side file would otherwise be run under 3.9 unnoticed
        raise pytest.UsageError(f"CONTROLLER_SIDE_TESTS in {__file__} names missing files: {', '.join(stale)}")
    for item in items:
        if item.path.name not in CONTROLLER_SIDE_TESTS:
            item.add_marker(pytest.mark.module_side)


def pytest_ignore_collect(collection_path, config):
    """With -m module_side the controller-side files are not even imported: under Python 3.9 they could not be."""
    if config.option.markexpr == "module_side" and collection_path.name in CONTROLLER_SIDE_TESTS:
        return True
    return None


try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core before 2.19

    @contextlib.contextmanager
    def patch_module_args(args=None):
        serialized = json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}).encode()
        with mock.patch.object(basic, "_ANSIBLE_ARGS", serialized):
            yield


class ExitJson(Exception):
    pass


class FailJson(Exception):
    pass


def exit_json(_module, **kwargs):
    raise ExitJson(kwargs)


def fail_json(_module, msg, **kwargs):
    raise FailJson({"msg": msg, **kwargs})


@pytest.fixture
def cloud():
    cloud = FakeCloud()
    cloud.add_host("hv1", SOURCE_URI, "qemu+ssh://hv1/system")
    cloud.add_host("hv2", DEST_URI)
    yield cloud
    cloud.release_all()  # no migration thread outlives its test


@pytest.fixture
def hv1(cloud):
    return cloud.hosts[SOURCE_URI]


@pytest.fixture
def hv2(cloud):
    return cloud.hosts[DEST_URI]


@pytest.fixture
def lv(cloud):
    return cloud.libvirt


@pytest.fixture
def clock(cloud):
    return FakeClock(cloud)


@pytest.fixture
def module_runner(cloud, monkeypatch):
    """module_runner(code) -> run(args): main() of that module against the fake cloud -> ('exit'|'fail', result)."""
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    monkeypatch.setattr(connection, "libvirt", cloud.libvirt)

    def runner(module_code):
        monkeypatch.setattr(module_code, "LIBVIRT_IMPORT_ERROR", None)

        def run(args):
            with patch_module_args(args), pytest.raises((ExitJson, FailJson)) as caught:
                module_code.main()
            return ("exit" if caught.type is ExitJson else "fail"), caught.value.args[0]

        return run

    return runner
