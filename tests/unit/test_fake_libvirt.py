"""The fake binding itself: its constants are libvirt's, and connections share their host."""

from __future__ import annotations

import pytest
from conftest import DEST_URI, SOURCE_URI
from fake_libvirt import CONSTANTS, C, Migration, sample


def test_constants_match_the_real_binding():
    real = pytest.importorskip("libvirt")
    assert {name: getattr(real, name) for name in CONSTANTS} == CONSTANTS


def test_connections_to_one_uri_share_the_host(cloud, hv1, lv):
    first, second = lv.open(SOURCE_URI), lv.open("qemu+ssh://hv1/system")
    cloud.add_guest(hv1, "web01")
    assert first.lookupByName("web01").UUIDString() == second.lookupByName("web01").UUIDString()
    second.lookupByName("web01").destroy()
    assert first.lookupByName("web01").state() == [C.VIR_DOMAIN_SHUTOFF, 2]


def test_lookup_of_an_absent_guest_raises_no_domain(lv):
    with pytest.raises(lv.libvirtError) as caught:
        lv.open(DEST_URI).lookupByName("web01")
    assert caught.value.get_error_code() == 42


def test_abort_without_a_job_is_operation_invalid(cloud, hv1, lv):
    job = cloud.add_guest(hv1, "web01", migration=Migration(samples=[sample(1, remaining=1, processed=1)])).migration
    with pytest.raises(lv.libvirtError) as caught:
        lv.open(SOURCE_URI).lookupByName("web01").abortJob()
    assert (caught.value.get_error_code(), job.abort_calls) == (C.VIR_ERR_OPERATION_INVALID, 1)
