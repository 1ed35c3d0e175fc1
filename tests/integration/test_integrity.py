"""The lab guest's memory check: it passes on an untouched guest and fails on one page changed behind its back."""

from __future__ import annotations

import re

import pytest
from conftest import GuestDamaged

GUEST = "integrity"


def test_the_memory_check_catches_a_page_changed_behind_the_guests_back(running_lab):
    running_lab.start_guest("hv1", GUEST, memory_mib=256, dirty_mib=64, pages_per_s=2000)
    try:
        untouched = running_lab.assert_intact("hv1", GUEST, running_lab.console("hv1", GUEST))
        page = running_lab.corrupt_guest_page(GUEST, memory_mib=256)
        with pytest.raises(GuestDamaged, match=re.escape(f"KVMLM mismatch page={page} ")):
            running_lab.assert_intact("hv1", GUEST, untouched)
    finally:
        running_lab.remove_guest(GUEST)
