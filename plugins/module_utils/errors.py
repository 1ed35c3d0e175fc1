# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection's one error type, and the translation of libvirt errors into it.

Every failure the engine can report becomes a ``MigrationError`` that says what failed, the
libvirt error code when there is one, and what the operator can do about it. Modules catch
this type once, in ``main``, and turn it into ``fail_json``.
"""

from __future__ import annotations

import contextlib
import re

# libvirt error levels share the VIR_ERR_ prefix with error codes; they are not codes.
_ERROR_LEVEL_NAMES = frozenset({"VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR"})

# Known messages whose cause is outside libvirt's error code, matched on the message text.
_MESSAGE_FIXES = {  # pattern (case-insensitive) -> fix
    r"Attempt to migrate guest to the same host":
        "the two hypervisors report the same host UUID: give each a unique host_uuid in "
        "/etc/libvirt/libvirtd.conf (or fix duplicate SMBIOS/machine-id UUIDs) and restart libvirtd",
    r"Unable to resolve address":
        "the source cannot resolve the destination's host name: add it to DNS or /etc/hosts on the "
        "source, or pass migrate_uri with an address",
    r"munlockall":  # before "Postcopy is not supported", which QEMU puts in front of it
        "QEMU on the destination could not munlockall(), which post-copy needs: give the destination CAP_IPC_LOCK in "
        "its capability bounding set (a container drops it unless kept, e.g. systemd-nspawn "
        "--capability=CAP_IPC_LOCK, docker run --cap-add IPC_LOCK; kvm.live_migration.host_info there reports it under "
        "host.post_copy), or do not permit post-copy",
    r"Postcopy is not supported":
        "set vm.unprivileged_userfaultfd=1 on the destination (QEMU runs as a non-root user), or give it "
        "libvirt >= 10.1 and QEMU >= 8.1, which use /dev/userfaultfd, or do not permit post-copy",
    r"Host key verification failed|No route to host|Connection refused|Permission denied \(publickey":
        "check that the source reaches the destination over SSH as the libvirtd user "
        "(key trust, known_hosts, firewall) with: ssh DESTINATION virsh -c qemu:///system version",
    r"Unable to access credentials":
        "QEMU cannot read its migration TLS certificates (the file is named in the message) on one of the hosts: "
        "run the kvm.live_migration.hypervisor role (playbook kvm.live_migration.prepare_hosts) on both hosts, "
        "which issues them; kvm.live_migration.preflight names what is missing where",
    r"x509|certificate|TLS":
        "check the QEMU TLS certificates on both hosts (migrate_tls_x509_cert_dir in qemu.conf): the "
        "kvm.live_migration.hypervisor role issues them from one CA; kvm.live_migration.preflight checks them",
    r"Cannot get interface MTU on '[^']*': No such device":
        "the destination lacks the bridge or network device the guest's interface uses: create it there "
        "(kvm.live_migration.preflight names it before anything moves)",
    r"guest CPU doesn't match specification: missing features":
        "the destination's CPU lacks features of the guest's CPU: give the guest a CPU model both hosts provide "
        "(kvm.live_migration.preflight names the features)",
    r"unsupported configuration: .*(cannot migrate|not migratable|hostdev)":
        "remove or hot-unplug the devices that block migration (host devices, non-migratable devices)",
}

# Why QEMU on the destination refuses post-copy, by what it says. The userfaultfd fix is right only when QEMU said
# so; an end of file tells nothing of the cause.
POST_COPY_IPC_LOCK_FIX = _MESSAGE_FIXES[r"munlockall"]
POST_COPY_USERFAULTFD_FIX = _MESSAGE_FIXES[r"Postcopy is not supported"]
POST_COPY_END_OF_FILE_FIX = (
    "the destination ended the migration's connection without saying why: read its QEMU log, "
    "/var/log/libvirt/qemu/{name}.log on the destination. The usual causes are QEMU failing munlockall() (the "
    "destination lacks CAP_IPC_LOCK in its capability bounding set, as a container may) and a userfaultfd QEMU's "
    "user may not create (vm.unprivileged_userfaultfd=0 where libvirt < 10.1 or QEMU < 8.1 do not use "
    "/dev/userfaultfd); kvm.live_migration.host_info on the destination names which (host.post_copy.reason)")
_END_OF_FILE = re.compile(r"end of file while reading data", re.IGNORECASE)
_MUNLOCKALL = re.compile(r"munlockall", re.IGNORECASE)

# Fixes keyed by libvirt error code name, used when no message pattern matched.
_CODE_FIXES = {
    "VIR_ERR_NO_DOMAIN": "check the guest's name or UUID with 'virsh list --all' on the hypervisor",
    "VIR_ERR_OPERATION_INVALID": "check the guest's state: a live migration needs a running guest and no other job",
    "VIR_ERR_OPERATION_ABORTED": "the job was cancelled; the guest keeps running where it was",
    "VIR_ERR_OPERATION_TIMEOUT": "another job holds the guest; wait for it or abort it with 'virsh domjobabort'",
    "VIR_ERR_OPERATION_UNSUPPORTED": "this libvirt/QEMU does not support the requested feature; do not request it",
    "VIR_ERR_ARGUMENT_UNSUPPORTED": "this libvirt does not support the requested option; upgrade libvirt or drop it",
    "VIR_ERR_CPU_INCOMPATIBLE": "the destination's CPU lacks features of the guest's CPU: give the guest a CPU model "
                                "both hosts provide (kvm.live_migration.preflight names the features)",
    "VIR_ERR_SYSTEM_ERROR": "check that the hypervisor is reachable and libvirtd runs there",
    "VIR_ERR_NO_CONNECT": "check the libvirt URI and that libvirtd runs on that host",
    "VIR_ERR_AUTH_FAILED": "check the credentials (SSH key, SASL, polkit) for the libvirt URI",
    "VIR_ERR_OPERATION_DENIED": "connect as a user allowed to manage guests (root or the libvirt group)",
    "VIR_ERR_MIGRATE_UNSAFE": "a disk's cache mode makes migration unsafe; use cache='none' or shared storage",
    "VIR_ERR_CONFIG_UNSUPPORTED": "the guest's configuration cannot be migrated; see the message for the device",
}


class MigrationError(Exception):
    """A failure with what failed, the libvirt error code (if any) and the fix."""

    def __init__(self, message, fix=None, code=None, code_name=None, result=None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.code = code
        self.code_name = code_name
        self.result = result  # the migration result so far, when the failure came after the job started

    def __str__(self):
        text = self.message
        if self.code_name:
            text = f"{text} [{self.code_name}]"
        if self.fix:
            text = f"{text}. Fix: {self.fix}"
        return text

    def as_dict(self):
        return {"message": self.message, "fix": self.fix, "code": self.code, "code_name": self.code_name}


def error_code_name(libvirt_module, code):
    """The VIR_ERR_* name of a libvirt error code, or None when the binding does not know it."""
    for name in dir(libvirt_module):
        if name.startswith("VIR_ERR_") and name not in _ERROR_LEVEL_NAMES and getattr(libvirt_module, name) == code:
            return name
    return None


def fix_for(message, code_name):
    for pattern, fix in _MESSAGE_FIXES.items():
        if re.search(pattern, message or "", re.IGNORECASE):
            return fix
    return _CODE_FIXES.get(code_name)


def post_copy_refusal_fix(message, name="NAME"):
    """The fix for a destination that refused post-copy at the start with ``message``, for guest ``name``.

    QEMU names its reason (munlockall, userfaultfd) when libvirt passes it on; libvirt 9 often passes on only the
    end of the peer connection, and then the cause is in the destination's QEMU log, not known here.
    """
    if _MUNLOCKALL.search(message or ""):
        return POST_COPY_IPC_LOCK_FIX
    if _END_OF_FILE.search(message or ""):
        return POST_COPY_END_OF_FILE_FIX.format(name=name)
    return POST_COPY_USERFAULTFD_FIX


def from_libvirt_error(libvirt_module, error, action):
    """Translate a libvirt.libvirtError raised while doing ``action`` into a MigrationError."""
    code = error.get_error_code()
    code_name = error_code_name(libvirt_module, code)
    detail = error.get_error_message() or str(error)
    return MigrationError(f"{action} failed: {detail}", fix=fix_for(detail, code_name), code=code,
                          code_name=code_name)


@contextlib.contextmanager
def libvirt_errors(libvirt_module, action):
    """Run a block of libvirt calls; a libvirtError leaves it as a MigrationError about ``action``."""
    try:
        yield
    except libvirt_module.libvirtError as error:
        raise from_libvirt_error(libvirt_module, error, action) from error
