"""The lab itself: it comes up with two distinct hypervisors and its teardown leaves nothing behind."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

from conftest import Lab, lab


def test_lab_up_runs_two_distinct_hypervisors_and_down_leaves_nothing():
    lab("up", timeout=600)
    try:
        hypervisors = Lab()
        capabilities = [ET.fromstring(hypervisors.virsh(host, "capabilities")) for host in ("hv1", "hv2")]
        uuids = [xml.findtext("host/uuid") for xml in capabilities]
        assert all(uuids) and uuids[0] != uuids[1], uuids
        assert lab("exec", "hv1", "hostname").stdout.strip() == "hv1"
        assert lab("exec", "hv2", "hostname").stdout.strip() == "hv2"
        # hv1 reaches hv2's libvirtd by name over SSH, as peer-to-peer migration will.
        remote_name = lab("exec", "hv1", "virsh", "-c", "qemu+ssh://hv2/system", "hostname").stdout.strip()
        assert remote_name == "hv2"
        hypervisors.start_guest("hv1", "lifecycle", memory_mib=128, dirty_mib=8, pages_per_s=100)
        assert hypervisors.running_guests("hv1") == {"lifecycle"}
        assert hypervisors.console("hv1", "lifecycle").ticks
    finally:
        lab("down", timeout=300)
    assert lab("check-clean", check=False).stdout.strip() == "clean"
    qemu = subprocess.run(["pgrep", "-f", "qemu-system-x86_64 -name guest=lifecycle"], capture_output=True, check=False)
    assert qemu.returncode == 1, "a guest's QEMU survived the teardown"
