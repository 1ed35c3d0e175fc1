"""Fixtures of the unit tests: a fake cloud of two hypervisors, hv1 (source) and hv2 (destination), and
module_runner, which runs a module's main() against it with AnsibleModule's exits patched."""

from __future__ import annotations

import contextlib
import json
from unittest import mock

import pytest
from ansible.module_utils import basic
from fake_libvirt import FakeClock, FakeCloud

from ansible_collections.kvm.live_migration.plugins.module_utils import connection

SOURCE_URI = "qemu:///system"
DEST_URI = "qemu+ssh://hv2/system"

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
