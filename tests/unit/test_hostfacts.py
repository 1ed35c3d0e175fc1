"""What the kernel says about virtualization, post-copy and TLS, and the decisions made from it."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from ansible_collections.kvm.live_migration.plugins.module_utils import hostfacts
from ansible_collections.kvm.live_migration.plugins.module_utils.hostfacts import (
    KernelView,
    filesystem_of,
    parse_bounding_set,
    parse_cpuinfo,
    parse_qemu_conf,
    post_copy_status,
    probe_kvm,
    read_dev_userfaultfd,
    read_ipc_lock,
    read_kernel_view,
    read_migration_config,
    tls_status,
    virtualization_status,
)

INTEL = "GenuineIntel"
AMD = "AuthenticAMD"


def view(vendor=INTEL, flags=(), modules=("kvm",), dev_kvm="ok", nested=None, log=(), probe=None, arch="x86_64"):
    return KernelView(arch=arch, cpu_vendor_id=vendor, cpu_model_name="cpu", flags=frozenset(flags),
                      modules=frozenset(modules), nested=nested, dev_kvm=dev_kvm, kernel_log=tuple(log), probe=probe)


@pytest.mark.parametrize(("kernel", "usable", "vendor", "hw_flag", "reason_has"), [
    pytest.param(view(INTEL, ["vmx"], ["kvm", "kvm_intel"], nested=True), True, "Intel", "vmx",
                 "Intel VT-x is on, kvm_intel is loaded", id="intel-vt-x"),
    pytest.param(view(AMD, ["svm"], ["kvm", "kvm_amd"]), True, "AMD", "svm", "AMD-V is on, kvm_amd", id="amd-v"),
    pytest.param(view(AMD, ["hypervisor"], ["kvm", "kvm_pvm"]), False, "AMD", None,
                 "served by kvm_pvm", id="lab: a VM without nested VT, /dev/kvm from kvm_pvm"),
    pytest.param(view(AMD, ["hypervisor"], ["kvm", "kvm_pvm"]), False, "AMD", None,
                 "enable nested virtualization on its hypervisor", id="a VM: enable nested"),
    pytest.param(view(INTEL, [], [], dev_kvm="missing", log=["kvm: disabled by bios"]), False, "Intel", None,
                 "enable virtualization (VT-x/AMD-V/SVM) in the firmware", id="disabled in firmware, flag hidden"),
    pytest.param(view(INTEL, ["vmx"], ["kvm"], dev_kvm="missing", log=["kvm_intel: VMX not enabled (by BIOS)"]),
                 False, "Intel", "vmx", "enable Intel VT-x in the firmware setup", id="disabled in firmware"),
    pytest.param(view(AMD, ["svm"], ["kvm"]), False, "AMD", "svm", "modprobe kvm_amd", id="module not loaded"),
    pytest.param(view(INTEL, ["vmx"], ["kvm", "kvm_intel"], dev_kvm="no_access"), False, "Intel", "vmx",
                 "add the user to group kvm", id="no access to /dev/kvm"),
    pytest.param(view(INTEL, ["vmx"], ["kvm", "kvm_intel"], dev_kvm="missing"), False, "Intel", "vmx",
                 "/dev/kvm does not exist", id="no /dev/kvm"),
    pytest.param(view(INTEL, ["vmx"], ["kvm", "kvm_intel"], probe={"ran": False, "error": "KVM_RUN did not return"}),
                 False, "Intel", "vmx", "did not run on /dev/kvm: KVM_RUN did not return", id="broken nested: probe"),
    pytest.param(view(None, [], ["kvm"], arch="aarch64"), True, None, None, "", id="arm64 with /dev/kvm"),
])
def test_virtualization_status(kernel, usable, vendor, hw_flag, reason_has):
    status = virtualization_status(kernel)
    assert (status["kvm_usable"], status["vendor"], status["hw_flag"]) == (usable, vendor, hw_flag)
    assert status["accelerator"] == ("kvm" if usable else "tcg")
    assert reason_has in status["reason"]


def test_unusable_kvm_says_guests_run_emulated():
    status = virtualization_status(view(AMD, ["hypervisor"], ["kvm", "kvm_pvm"]))
    assert "guests run emulated (TCG)" in status["reason"]
    assert status["under_hypervisor"] is True
    assert status["kvm_modules"] == ["kvm", "kvm_pvm"]


def test_cpuinfo_first_processor():
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu svm lm\n\n"
            "processor\t: 1\nvendor_id\t: Other\nflags\t\t: none\n")
    assert parse_cpuinfo(text) == ("AuthenticAMD", "AMD EPYC 7B13", frozenset({"fpu", "svm", "lm"}))


def test_kernel_view_is_read_from_a_root(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("vendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t: vmx lm\n")
    (tmp_path / "sys/module/kvm_intel/parameters").mkdir(parents=True)
    (tmp_path / "sys/module/kvm_intel/parameters/nested").write_text("Y\n")
    (tmp_path / "sys/module/kvm").mkdir()
    kernel = read_kernel_view(tmp_path, kernel_log=["[1.0] kvm: something", "[2.0] usb 1-1: new device"])
    assert (kernel.cpu_vendor_id, kernel.flags, kernel.modules, kernel.nested, kernel.dev_kvm) == (
        "GenuineIntel", frozenset({"vmx", "lm"}), frozenset({"kvm", "kvm_intel"}), True, "missing")
    assert kernel.kernel_log == ("[1.0] kvm: something",)


STOCK = {"libvirt": 9_000_000, "hypervisor": 7_002_000}  # Debian 12
BACKPORTS = {"libvirt": 11_003_000, "hypervisor": 10_000_002}  # bookworm-backports


@pytest.mark.parametrize(("user", "sysctl", "device", "versions", "possible", "reason_has"), [
    ("libvirt-qemu", True, "missing", STOCK, True, "vm.unprivileged_userfaultfd=1"),
    ("libvirt-qemu", False, "ok", STOCK, False, "libvirt 9.0.0 does not hand /dev/userfaultfd to QEMU (10.1 does)"),
    ("libvirt-qemu", False, "ok", BACKPORTS, True, "libvirt 11.3.0 grants QEMU (libvirt-qemu) /dev/userfaultfd"),
    ("libvirt-qemu", False, "ok", {"libvirt": 10_001_000, "hypervisor": 8_000_000}, False,
     "QEMU 8.0.0 does not use /dev/userfaultfd (8.1 does)"),
    ("libvirt-qemu", False, "missing", BACKPORTS, False, "this kernel has no /dev/userfaultfd"),
    ("libvirt-qemu", False, "not_the_device", BACKPORTS, False, "is not the kernel's userfaultfd device"),
    ("libvirt-qemu", False, "ok", None, False, "versions that would use /dev/userfaultfd are unknown"),
    ("root", False, "missing", STOCK, True, "as root"),
    ("qemu", None, "missing", STOCK, None, "could not be read"),
    ("qemu", None, "ok", BACKPORTS, True, "grants QEMU (qemu) /dev/userfaultfd"),
])
def test_post_copy_needs_a_userfaultfd_for_qemus_user(user, sysctl, device, versions, possible, reason_has):
    status = post_copy_status(user, sysctl, device, versions)
    assert status["possible"] is possible
    assert reason_has in status["reason"]
    if possible is False:
        assert "set vm.unprivileged_userfaultfd=1" in status["reason"]


FULL_BOUNDING_SET = "000001ffffffffff"
WITHOUT_IPC_LOCK = f"{int(FULL_BOUNDING_SET, 16) & ~(1 << 14):016x}"  # a container that did not keep CAP_IPC_LOCK


@pytest.mark.parametrize(("user", "sysctl", "device", "versions"), [
    ("libvirt-qemu", True, "missing", STOCK),
    ("libvirt-qemu", False, "ok", BACKPORTS),
    ("root", False, "missing", STOCK),
])
def test_post_copy_needs_cap_ipc_lock_whatever_gives_the_userfaultfd(user, sysctl, device, versions):
    """Seen on a systemd host in a container: the sysctl was 1, and QEMU still refused post-copy because it could
    not munlockall() without CAP_IPC_LOCK in its bounding set."""
    with_it = post_copy_status(user, sysctl, device, versions, ipc_lock=True)
    without = post_copy_status(user, sysctl, device, versions, ipc_lock=False)
    assert with_it["possible"] is True
    assert without["possible"] is False
    assert without["via"] == with_it["via"]  # the role still decides the sysctl from how QEMU gets its userfaultfd
    assert "CAP_IPC_LOCK" in without["reason"] and "munlockall" in without["reason"]
    assert "set vm.unprivileged_userfaultfd=1" not in without["reason"]


def test_a_missing_cap_ipc_lock_and_a_closed_userfaultfd_are_both_named():
    status = post_copy_status("libvirt-qemu", False, "missing", STOCK, ipc_lock=False)
    assert (status["possible"], status["via"]) == (False, None)
    assert "CAP_IPC_LOCK" in status["reason"] and "set vm.unprivileged_userfaultfd=1" in status["reason"]


def test_an_unknown_bounding_set_does_not_stop_post_copy():
    assert post_copy_status("libvirt-qemu", True, "missing", STOCK, ipc_lock=None)["possible"] is True


def test_the_bounding_set_is_read_from_status():
    assert parse_bounding_set(f"Name:\tsystemd\nCapPrm:\t0\nCapBnd:\t{FULL_BOUNDING_SET}\n") == 0x1FFFFFFFFFF
    assert parse_bounding_set("Name:\tx\n") is None
    assert parse_bounding_set(None) is None


def status_file(root, pid, bounding):
    (root / "proc" / pid).mkdir(parents=True, exist_ok=True)
    (root / "proc" / pid / "status").write_text(f"Name:\tx\nCapBnd:\t{bounding}\n")


def test_cap_ipc_lock_is_read_from_init_which_starts_libvirtd(tmp_path):
    """libvirtd, and so QEMU, descends from init, not from the module: init's bounding set decides; the module's
    own is read only when init's cannot be."""
    assert read_ipc_lock(tmp_path) is None
    status_file(tmp_path, "self", FULL_BOUNDING_SET)
    assert read_ipc_lock(tmp_path) is True
    status_file(tmp_path, "1", WITHOUT_IPC_LOCK)
    assert read_ipc_lock(tmp_path) is False


def test_migration_config_reports_post_copy_impossible_without_cap_ipc_lock(tmp_path):
    (tmp_path / "etc/libvirt").mkdir(parents=True)
    (tmp_path / "etc/libvirt/qemu.conf").write_text('user = "libvirt-qemu"\n')
    (tmp_path / "proc/sys/vm").mkdir(parents=True)
    (tmp_path / "proc/sys/vm/unprivileged_userfaultfd").write_text("1\n")
    status_file(tmp_path, "1", WITHOUT_IPC_LOCK)
    post_copy = read_migration_config(tmp_path, STOCK)["post_copy"]
    assert (post_copy["possible"], post_copy["via"]) == (False, "sysctl")
    assert "CAP_IPC_LOCK" in post_copy["reason"]
    status_file(tmp_path, "1", FULL_BOUNDING_SET)
    assert read_migration_config(tmp_path, STOCK)["post_copy"]["possible"] is True


def test_dev_userfaultfd_is_the_misc_device_or_not(tmp_path):
    assert read_dev_userfaultfd(tmp_path) == "missing"
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/userfaultfd").write_text("")  # what a bind mount of a file over it would show
    assert read_dev_userfaultfd(tmp_path) == "not_the_device"


def test_the_hosts_dev_userfaultfd_is_recognised():
    if not Path("/dev/userfaultfd").exists():
        pytest.skip("this kernel has no /dev/userfaultfd")
    assert read_dev_userfaultfd("/") == "ok"


def test_tls_files_for_sending_and_receiving():
    status = tls_status("/etc/pki/qemu", {"ca-cert.pem", "client-cert.pem", "client-key.pem"})
    assert (status["configured"], status["can_send"], status["can_receive"]) == (False, True, False)
    assert status["missing"] == ["server-cert.pem", "server-key.pem"]
    everything = {"ca-cert.pem", "client-cert.pem", "client-key.pem", "server-cert.pem", "server-key.pem"}
    assert tls_status("/etc/pki/qemu", everything)["configured"] is True


def test_qemu_conf_settings():
    text = ('# migration_port_min = 1\nmigration_port_min = 50000\nuser = "qemu"  # comment\n'
            'migrate_tls_x509_cert_dir = "/srv/pki"\ncgroup_controllers = [ ]\n')
    assert parse_qemu_conf(text) == {"migration_port_min": 50000, "user": "qemu",
                                     "migrate_tls_x509_cert_dir": "/srv/pki"}


def test_migration_config_is_read_from_a_root(tmp_path):
    (tmp_path / "etc/libvirt").mkdir(parents=True)
    (tmp_path / "etc/libvirt/qemu.conf").write_text('migration_port_max = 49300\nuser = "libvirt-qemu"\n')
    (tmp_path / "proc/sys/vm").mkdir(parents=True)
    (tmp_path / "proc/sys/vm/unprivileged_userfaultfd").write_text("0\n")
    (tmp_path / "etc/pki/qemu").mkdir(parents=True)
    (tmp_path / "etc/pki/qemu/ca-cert.pem").write_text("x")
    config = read_migration_config(tmp_path)
    assert config["migration_ports"] == {"min": 49152, "max": 49300}
    assert config["post_copy"]["possible"] is False
    assert config["tls"]["cert_dir"] == "/etc/pki/qemu"
    assert config["tls"]["can_send"] is False


def test_filesystem_of_a_path_is_its_longest_mount():
    mounts = ("/dev/sda1 / ext4 rw 0 0\nnas:/export /var/lib/libvirt/images nfs4 rw 0 0\n"
              "/dev/sdb1 /var/lib/libvirt/images/local xfs rw 0 0\n")
    assert filesystem_of("/var/lib/libvirt/images/db01.qcow2", mounts)[1] == "nfs4"
    assert filesystem_of("/var/lib/libvirt/images/local/x.img", mounts)[1] == "xfs"
    assert filesystem_of("/var/lib/libvirt/imagesX/x.img", mounts)[1] == "ext4"


def hang(_device):
    time.sleep(30)


def refuse(_device):
    raise OSError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize(("guest", "ran", "exit_reason", "error"), [
    pytest.param(lambda _device: 5, True, 5, None, id="HLT"),
    pytest.param(lambda _device: 17, False, 17, "the guest exited with reason 17, not HLT", id="another exit"),
    pytest.param(refuse, False, None, "[Errno 13] Permission denied", id="ioctl refused"),
    pytest.param(hang, False, None, "KVM_RUN did not return within 0.3 s", id="hangs (broken nested)"),
])
def test_the_kvm_probe_reports_from_a_child_it_can_abandon(monkeypatch, tmp_path, guest, ran, exit_reason, error):
    device = tmp_path / "kvm"
    device.touch()
    monkeypatch.setattr(hostfacts, "_run_hlt_guest", guest)  # the forked child runs it
    started = time.monotonic()
    assert probe_kvm(timeout_s=0.3, device=str(device)) == {"ran": ran, "exit_reason": exit_reason, "error": error}
    assert time.monotonic() - started < 5


def test_the_kvm_probe_without_a_device():
    assert probe_kvm(device="/nonexistent/kvm")["error"] == "/nonexistent/kvm does not exist"


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="this machine has no /dev/kvm to probe")
def test_the_kvm_probe_runs_on_this_machines_kvm():
    outcome = probe_kvm(timeout_s=5)
    assert set(outcome) == {"ran", "exit_reason", "error"}
    assert outcome["ran"] is (outcome["error"] is None)
