"""Fixtures of the unit tests: a fake cloud of two hypervisors, hv1 (source) and hv2 (destination)."""

from __future__ import annotations

import pytest
from fake_libvirt import FakeClock, FakeCloud

SOURCE_URI = "qemu:///system"
DEST_URI = "qemu+ssh://hv2/system"


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
