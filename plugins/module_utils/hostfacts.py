# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the kernel of the host running the module says about virtualization and migration.

libvirt reports what it can start; it does not say why KVM is missing, whether post-copy's
userfaultfd is open to QEMU's user, or which certificates QEMU will use. Those come from
/proc, /sys and the QEMU driver's configuration of this host, read here. The readers take
their file system root, and the decisions (``virtualization_status``, ``post_copy_status``,
``tls_status``) are pure functions of what was read, so both are testable without a host.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import mmap
import os
import re
import select
import signal
import stat
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.kvm.live_migration.plugins.module_utils.features import dotted_version

KVM_MODULES = ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")
HARDWARE_FLAGS = {"vmx": "Intel VT-x", "svm": "AMD-V"}
HARDWARE_MODULES = {"vmx": "kvm_intel", "svm": "kvm_amd"}
# The kernel's own words when firmware keeps VT-x/AMD-V off (arch/x86/kvm/vmx, svm).
_FIRMWARE_DISABLED = re.compile(r"disabled by bios|VMX not enabled|SVM not enabled|feature control", re.IGNORECASE)
_KVM_LOG = re.compile(r"\bkvm|vmx|svm\b", re.IGNORECASE)
DEFAULT_MIGRATION_PORTS = (49152, 49215)
QEMU_TLS_DIR = "/etc/pki/qemu"
QEMU_TLS_CLIENT_FILES = ("ca-cert.pem", "client-cert.pem", "client-key.pem")
QEMU_TLS_SERVER_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")
KVM_PROBE_TIMEOUT_S = 5.0
MISC_MAJOR = 10  # the character-device major of the kernel's misc devices (/dev/userfaultfd among them)
CAP_IPC_LOCK = 14  # linux/capability.h
# Where the capability bounding set of what libvirtd starts is read: init's (libvirtd is a service of it), else the
# module's own when init's cannot be read (a bounding set only shrinks down the process tree).
CAPABILITY_SOURCES = ("proc/1/status", "proc/self/status")


@dataclass(frozen=True)
class KernelView:
    """What /proc, /sys and the kernel log say, as read by ``read_kernel_view``."""

    arch: str
    cpu_vendor_id: str | None
    cpu_model_name: str | None
    flags: frozenset
    modules: frozenset  # the KVM modules loaded (or built in with parameters)
    nested: bool | None  # kvm_intel/kvm_amd's nested parameter
    dev_kvm: str  # missing | no_access | ok
    kernel_log: tuple = ()  # kernel messages about KVM, VT-x or AMD-V
    probe: dict | None = None  # the one-instruction guest's outcome (see probe_kvm)


def parse_cpuinfo(text):
    """(vendor_id, model name, flags) of the first processor in /proc/cpuinfo."""
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _colon, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("vendor_id"), fields.get("model name"), frozenset(fields.get("flags", "").split())


def read_kernel_view(root="/", kernel_log=None, probe=None):
    """A KernelView of this host. ``kernel_log``: lines of the kernel log, read with dmesg when None."""
    root = Path(root)
    vendor_id, model_name, flags = parse_cpuinfo(_read(root / "proc/cpuinfo") or "")
    modules = frozenset(name for name in KVM_MODULES if (root / "sys/module" / name).exists())
    nested = None
    for module in ("kvm_intel", "kvm_amd"):
        value = _read(root / "sys/module" / module / "parameters/nested")
        if value is not None:
            nested = value.strip() in ("Y", "1")
    lines = read_kernel_log() if kernel_log is None else kernel_log
    return KernelView(arch=os.uname().machine, cpu_vendor_id=vendor_id, cpu_model_name=model_name, flags=flags,
                      modules=modules, nested=nested, dev_kvm=_device_access(root / "dev/kvm"),
                      kernel_log=tuple(line for line in lines if _KVM_LOG.search(line)), probe=probe)


def _device_access(device):
    if not device.exists():
        return "missing"
    return "ok" if os.access(device, os.R_OK | os.W_OK) else "no_access"


def read_kernel_log():
    """The kernel's ring buffer (needs root, or kernel.dmesg_restrict=0); empty when unreadable."""
    try:
        completed = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return completed.stdout.splitlines() if completed.returncode == 0 else []


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def virtualization_status(view):
    """{vendor, hw_flag, kvm_usable, accelerator, reason, ...}: can this host run KVM guests, and if not, why."""
    vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(view.cpu_vendor_id, view.cpu_vendor_id)
    hw_flag = next((flag for flag in HARDWARE_FLAGS if flag in view.flags), None)
    firmware = [line.strip() for line in view.kernel_log if _FIRMWARE_DISABLED.search(line)]
    status = {
        "vendor": vendor,
        "hw_flag": hw_flag,
        "hw_name": HARDWARE_FLAGS.get(hw_flag),
        "kvm_modules": sorted(view.modules),
        "dev_kvm": view.dev_kvm,
        "nested": view.nested,
        "firmware_disabled": bool(firmware),
        "probe": view.probe,
        "under_hypervisor": "hypervisor" in view.flags,
    }
    reason = _unusable_reason(view, hw_flag, firmware)
    usable = reason is None
    status.update(kvm_usable=usable, accelerator="kvm" if usable else "tcg", reason=reason or _usable_reason(hw_flag))
    return status


def _usable_reason(hw_flag):
    if hw_flag is None:
        return "/dev/kvm is open to this user"
    return f"{HARDWARE_FLAGS[hw_flag]} is on, {HARDWARE_MODULES[hw_flag]} is loaded and /dev/kvm runs guests"


def _unusable_reason(view, hw_flag, firmware):
    """Why KVM cannot run guests here, with what to do; None when it can."""
    if view.arch not in ("x86_64", "i686", "i386"):
        return None if view.dev_kvm == "ok" else f"/dev/kvm is {view.dev_kvm} on this {view.arch} host"
    if hw_flag is None:
        return _no_hardware_flag_reason(view, firmware)
    return _hardware_flag_reason(view, hw_flag, firmware)


def _no_hardware_flag_reason(view, firmware):
    parts = ["the CPU flags show neither vmx (Intel VT-x) nor svm (AMD-V)"]
    if firmware:
        parts.append(f"the kernel says: {firmware[0]!r}: enable virtualization (VT-x/AMD-V/SVM) in the firmware")
    if "hypervisor" in view.flags:
        parts.append("this host is itself a virtual machine: enable nested virtualization on its hypervisor")
    if "kvm_pvm" in view.modules:
        parts.append("/dev/kvm is served by kvm_pvm (page-table based, no hardware extensions), which QEMU "
                     "does not run guests on: guests here must use TCG (<domain type='qemu'>)")
    return "; ".join(parts) + "; guests run emulated (TCG), about 10-50 times slower"


def _hardware_flag_reason(view, hw_flag, firmware):
    module = HARDWARE_MODULES[hw_flag]
    if firmware and module not in view.modules:
        return f"the kernel says {firmware[0]!r}: enable {HARDWARE_FLAGS[hw_flag]} in the firmware setup"
    if module not in view.modules:
        return f"{module} is not loaded: modprobe {module} (and check the kernel log if that fails)"
    if view.dev_kvm == "missing":
        return "/dev/kvm does not exist although kvm is loaded: check udev and the kernel log"
    if view.dev_kvm == "no_access":
        return "/dev/kvm is not readable and writable by this user: add the user to group kvm"
    if view.probe is not None and not view.probe.get("ran"):
        return f"a one-instruction test guest did not run on /dev/kvm: {view.probe.get('error')}"
    return None


# -- a one-instruction KVM guest ---------------------------------------------------------------

# ioctl numbers of linux/kvm.h (x86): _IO/_IOR/_IOW(KVMIO=0xAE, nr, size).
_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_GET_VCPU_MMAP_SIZE = 0xAE04
_KVM_CREATE_VCPU = 0xAE41
_KVM_SET_USER_MEMORY_REGION = 0x4020AE46
_KVM_RUN = 0xAE80
_KVM_SET_REGS = 0x4090AE82
_KVM_GET_SREGS = 0x8138AE83
_KVM_SET_SREGS = 0x4138AE84
_KVM_API_VERSION = 12
_KVM_EXIT_HLT = 5
_HLT = b"\xf4"


def _run_hlt_guest(device):
    """Run a real-mode guest whose only instruction is HLT; return the vCPU's exit reason."""
    kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    if fcntl.ioctl(kvm, _KVM_GET_API_VERSION) != _KVM_API_VERSION:
        raise OSError("unexpected KVM API version")
    vm = fcntl.ioctl(kvm, _KVM_CREATE_VM, 0)
    memory = mmap.mmap(-1, mmap.PAGESIZE)
    memory.write(_HLT)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    fcntl.ioctl(vm, _KVM_SET_USER_MEMORY_REGION, struct.pack("IIQQQ", 0, 0, 0, mmap.PAGESIZE, address))
    vcpu = fcntl.ioctl(vm, _KVM_CREATE_VCPU, 0)
    run = mmap.mmap(vcpu, fcntl.ioctl(kvm, _KVM_GET_VCPU_MMAP_SIZE), mmap.MAP_SHARED,
                    mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(fcntl.ioctl(vcpu, _KVM_GET_SREGS, bytes(312)))
    struct.pack_into("QIH", sregs, 0, 0, 0xFFFF, 0)  # CS: base 0, selector 0
    fcntl.ioctl(vcpu, _KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(144)
    struct.pack_into("QQ", regs, 128, 0, 2)  # RIP 0, RFLAGS with its reserved bit
    fcntl.ioctl(vcpu, _KVM_SET_REGS, bytes(regs))
    fcntl.ioctl(vcpu, _KVM_RUN, 0)
    return struct.unpack_from("I", run, 8)[0]


def probe_kvm(timeout_s=KVM_PROBE_TIMEOUT_S, device="/dev/kvm"):
    """Run one HLT instruction in a KVM guest, in a child process that may not hang the module.

    Returns {"ran": bool, "exit_reason": int|None, "error": str|None}. Broken nested setups pass
    every static check and then hang or fail in KVM_RUN; this finds them in milliseconds.
    """
    if not Path(device).exists():
        return {"ran": False, "exit_reason": None, "error": f"{device} does not exist"}
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        os.close(reader)
        try:
            message = f"exit {_run_hlt_guest(device)}"
        except OSError as error:
            message = f"error {error}"
        os.write(writer, message.encode())
        os._exit(0)
    os.close(writer)
    try:
        ready = select.select([reader], [], [], timeout_s)[0]
        message = os.read(reader, 4096).decode() if ready else ""
    finally:
        os.close(reader)
        _reap(pid)
    if not message:
        return {"ran": False, "exit_reason": None, "error": f"KVM_RUN did not return within {timeout_s:g} s"}
    kind, _space, value = message.partition(" ")
    if kind == "error":
        return {"ran": False, "exit_reason": None, "error": value}
    exit_reason = int(value)
    if exit_reason != _KVM_EXIT_HLT:
        return {"ran": False, "exit_reason": exit_reason,
                "error": f"the guest exited with reason {exit_reason}, not HLT"}
    return {"ran": True, "exit_reason": exit_reason, "error": None}


def _reap(pid):
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:  # a vCPU stuck in the kernel may not die at once: do not wait forever
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        time.sleep(0.02)


# -- the QEMU driver's configuration -----------------------------------------------------------

def parse_qemu_conf(text):
    """The settings of /etc/libvirt/qemu.conf that matter to migration, as Python values."""
    settings = {}
    for raw in text.splitlines():
        key, equals, value = raw.split("#", 1)[0].strip().partition("=")
        if not equals:
            continue
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            settings[key.strip()] = value[1:-1]
        elif value.isdigit():
            settings[key.strip()] = int(value)
    return settings


def migration_ports(settings):
    return {"min": int(settings.get("migration_port_min", DEFAULT_MIGRATION_PORTS[0])),
            "max": int(settings.get("migration_port_max", DEFAULT_MIGRATION_PORTS[1]))}


# libvirt 10.1 grants QEMU's user the kernel's /dev/userfaultfd (Linux >= 6.1) by itself, and QEMU 8.1
# opens it before falling back to the userfaultfd() system call: then vm.unprivileged_userfaultfd=0 does
# not stop post-copy (measured: libvirt 11.3 / QEMU 10.0 post-copied with the sysctl at 0, libvirt 9.0 /
# QEMU 7.2 did not).
DEV_USERFAULTFD_LIBVIRT = 10_001_000
DEV_USERFAULTFD_QEMU = 8_001_000


NO_IPC_LOCK_REASON = (
    "CAP_IPC_LOCK is not in the capability bounding set of this host's services (CapBnd of /proc/1/status), so "
    "the QEMU libvirtd starts cannot munlockall() and refuses post-copy ('munlockall() failed: Operation not "
    "permitted' in the destination's QEMU log; the source often sees only 'End of file while reading data'): give "
    "the host CAP_IPC_LOCK (a container: keep that capability, e.g. systemd-nspawn --capability=CAP_IPC_LOCK, "
    "docker run --cap-add IPC_LOCK)")


def post_copy_status(qemu_user, unprivileged_userfaultfd, dev_userfaultfd="missing", versions=None, ipc_lock=None):
    """Whether QEMU may create the userfaultfd post-copy needs on this host, and why not.

    QEMU runs as ``qemu_user`` (libvirt-qemu on Debian, qemu elsewhere). A non-root process gets a
    userfaultfd from the system call only with vm.unprivileged_userfaultfd=1, or from /dev/userfaultfd
    (``dev_userfaultfd``: ok, missing or not_the_device) when libvirt hands that device to QEMU and QEMU
    uses it; ``versions`` are libvirt's numbers ({"libvirt", "hypervisor"}). QEMU also unlocks its memory
    (munlockall) before post-copy, which needs CAP_IPC_LOCK in the bounding set where the kernel or a
    container's seccomp filter ties it to that capability: ``ipc_lock`` says whether the bounding set of
    what libvirtd starts has it (None: unknown, not held against post-copy). ``via`` is how QEMU's user gets
    its userfaultfd (root, device, sysctl, or None), also when the capability stops post-copy.
    """
    status = _userfaultfd_status(qemu_user, unprivileged_userfaultfd, dev_userfaultfd, versions)
    if ipc_lock is not False:
        return status
    reason = NO_IPC_LOCK_REASON
    if status["possible"] is not True:
        reason = f"{reason}; and {status['reason']}"
    return {"possible": False, "via": status["via"], "reason": reason}


def _userfaultfd_status(qemu_user, unprivileged_userfaultfd, dev_userfaultfd, versions):
    if qemu_user in ("root", "0"):
        return {"possible": True, "via": "root", "reason": "QEMU runs as root"}
    device_reason = _dev_userfaultfd_reason(dev_userfaultfd, versions)
    if device_reason is None:
        return {"possible": True, "via": "device",
                "reason": f"libvirt {dotted_version(versions['libvirt'])} grants QEMU ({qemu_user}) /dev/userfaultfd, "
                          f"which QEMU {dotted_version(versions['hypervisor'])} uses"}
    if unprivileged_userfaultfd:
        return {"possible": True, "via": "sysctl",
                "reason": f"vm.unprivileged_userfaultfd=1 lets QEMU ({qemu_user}) use userfaultfd"}
    if unprivileged_userfaultfd is None:
        return {"possible": None, "via": None,
                "reason": f"vm.unprivileged_userfaultfd could not be read, and {device_reason}"}
    return {"possible": False, "via": None,
            "reason": f"vm.unprivileged_userfaultfd=0 and QEMU runs as {qemu_user}, and {device_reason}: QEMU refuses "
                      "post-copy ('Postcopy is not supported'); set vm.unprivileged_userfaultfd=1 (the hypervisor "
                      "role can), or run libvirt >= 10.1 with QEMU >= 8.1 on a kernel with /dev/userfaultfd"}


def parse_bounding_set(status_text):
    """The capability bounding set (CapBnd) of a /proc/PID/status text, as an int; None when absent."""
    match = re.search(r"^CapBnd:\s*([0-9a-fA-F]+)\s*$", status_text or "", re.MULTILINE)
    return int(match.group(1), 16) if match else None


def read_ipc_lock(root="/"):
    """Whether CAP_IPC_LOCK is in the bounding set of the processes this host's init starts (libvirtd, and so
    QEMU), from init's /proc status, else this process's; None when neither can be read."""
    for source in CAPABILITY_SOURCES:
        bounding = parse_bounding_set(_read(Path(root) / source))
        if bounding is not None:
            return bool(bounding >> CAP_IPC_LOCK & 1)
    return None


def _dev_userfaultfd_reason(dev_userfaultfd, versions):
    """Why /dev/userfaultfd does not give QEMU a userfaultfd here, or None when it does."""
    if dev_userfaultfd == "missing":
        return "this kernel has no /dev/userfaultfd (Linux >= 6.1 has)"
    if dev_userfaultfd != "ok":
        return "/dev/userfaultfd is not the kernel's userfaultfd device"
    if not versions:
        return "the libvirt and QEMU versions that would use /dev/userfaultfd are unknown"
    if versions["libvirt"] < DEV_USERFAULTFD_LIBVIRT:
        return f"libvirt {dotted_version(versions['libvirt'])} does not hand /dev/userfaultfd to QEMU (10.1 does)"
    if versions["hypervisor"] < DEV_USERFAULTFD_QEMU:
        return f"QEMU {dotted_version(versions['hypervisor'])} does not use /dev/userfaultfd (8.1 does)"
    return None


def read_dev_userfaultfd(root="/"):
    """ok when ``root``/dev/userfaultfd is the kernel's userfaultfd device, else missing or not_the_device."""
    try:
        info = os.stat(Path(root) / "dev/userfaultfd")
    except OSError:
        return "missing"
    misc = re.search(r"^\s*(\d+)\s+userfaultfd$", _read(Path(root) / "proc/misc") or "", re.MULTILINE)
    is_misc_device = stat.S_ISCHR(info.st_mode) and os.major(info.st_rdev) == MISC_MAJOR
    if is_misc_device and (misc is None or os.minor(info.st_rdev) == int(misc.group(1))):
        return "ok"
    return "not_the_device"


def tls_status(cert_dir, present):
    """Which of QEMU's migration TLS files exist in ``cert_dir``; ``present`` is the set of file names there."""
    missing_client = [name for name in QEMU_TLS_CLIENT_FILES if name not in present]
    missing_server = [name for name in QEMU_TLS_SERVER_FILES if name not in present]
    return {"configured": not missing_client and not missing_server, "cert_dir": cert_dir,
            "can_send": not missing_client, "can_receive": not missing_server,
            "missing": sorted(set(missing_client) | set(missing_server))}


def qemu_process_ids(root="/"):
    """(uid, gid) QEMU runs as on this host, from qemu.conf's user and group (names or numbers, "+N" too), else the
    distribution's default account that exists; None where unknown."""
    import grp  # noqa: PLC0415 - POSIX only
    import pwd  # noqa: PLC0415

    settings = parse_qemu_conf(_read(Path(root) / "etc/libvirt/qemu.conf") or "")

    def lookup(database, configured):
        for name in [configured] if configured else ["libvirt-qemu", "qemu"]:
            number = str(name).lstrip("+")
            if number.isdigit():
                return int(number)
            try:
                return database(str(name))[2]
            except KeyError:
                continue
        return None

    user = settings.get("user")
    uid = 0 if user in ("root", "0") else lookup(pwd.getpwnam, user)
    return uid, lookup(grp.getgrnam, settings.get("group"))


def read_migration_config(root="/", versions=None):
    """Ports, post-copy and TLS facts from this host's qemu.conf, sysctls, devices, capabilities and certificate files.

    ``versions`` are the local libvirt's numbers ({"libvirt", "hypervisor"}), which decide whether
    /dev/userfaultfd serves post-copy.
    """
    root = Path(root)
    settings = parse_qemu_conf(_read(root / "etc/libvirt/qemu.conf") or "")
    sysctl = _read(root / "proc/sys/vm/unprivileged_userfaultfd")
    cert_dir = settings.get("migrate_tls_x509_cert_dir") or settings.get("default_tls_x509_cert_dir") or QEMU_TLS_DIR
    directory = root / cert_dir.lstrip("/")
    present = {entry.name for entry in directory.iterdir()} if directory.is_dir() else set()
    return {
        "migration_ports": migration_ports(settings),
        "post_copy": post_copy_status(str(settings.get("user", "libvirt-qemu")),
                                      None if sysctl is None else sysctl.strip() == "1",
                                      read_dev_userfaultfd(root), versions, read_ipc_lock(root)),
        "tls": tls_status(cert_dir, present),
    }


def read_mounts(root="/"):
    """This host's /proc/mounts; empty when it cannot be read."""
    return _read(Path(root) / "proc/mounts") or ""


class LocalFilesystems:
    """The file system type of a path on the host running the module, /proc/mounts read once; None for all
    paths when the module does not run on the host in question (``local`` false)."""

    def __init__(self, root="/", local=True):
        self.root = root
        self.local = local

    @functools.cached_property
    def _mounts(self):
        return read_mounts(self.root)

    def type_of(self, path):
        return filesystem_of(path, self._mounts)[1] if self.local else None


def filesystem_of(path, mounts_text):
    """(mount point, file system type, source) of the mount that holds ``path``, from /proc/mounts."""
    best = ("/", None, None)
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:  # noqa: PLR2004 - source, mount point, type
            continue
        source, mount_point, fs_type = fields[0], fields[1].replace("\\040", " "), fields[2]
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[0]):
            best = (mount_point, fs_type, source)
    return best
