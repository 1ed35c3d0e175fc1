"""errors: libvirt error codes and messages turned into MigrationError with a fix."""

from __future__ import annotations

import pytest
from fake_libvirt import C, FakeCloud, libvirtError

from ansible_collections.kvm.live_migration.plugins.module_utils.errors import (
    MigrationError,
    error_code_name,
    fix_for,
    from_libvirt_error,
    libvirt_errors,
    post_copy_refusal_fix,
)

FAKE = FakeCloud().libvirt

SAME_HOST_FIX = ("the two hypervisors report the same host UUID: give each a unique host_uuid in "
                 "/etc/libvirt/libvirtd.conf (or fix duplicate SMBIOS/machine-id UUIDs) and restart libvirtd")
RESOLVE_FIX = ("the source cannot resolve the destination's host name: add it to DNS or /etc/hosts on the "
               "source, or pass migrate_uri with an address")
POSTCOPY_FIX = ("set vm.unprivileged_userfaultfd=1 on the destination (QEMU runs as a non-root user), or give it "
                "libvirt >= 10.1 and QEMU >= 8.1, which use /dev/userfaultfd, or do not permit post-copy")
# Both measured in the lab: hv2 without /etc/pki/qemu, and hv1 without client-cert.pem (libvirt 11.3, QEMU 10.0).
CREDENTIALS = ("internal error: unable to execute QEMU command 'object-add': Unable to access credentials "
               "/etc/pki/qemu/ca-cert.pem: No such file or directory")
TLS_CHANNEL = ("operation failed: job 'migration out' failed: Cannot read from TLS channel: The TLS connection was "
               "non-properly terminated.")
ROLE = "kvm.live_migration.hypervisor role"
SSH_FIX = ("check that the source reaches the destination over SSH as the libvirtd user "
           "(key trust, known_hosts, firewall) with: ssh DESTINATION virsh -c qemu:///system version")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, "VIR_ERR_OK"),  # not the level VIR_ERR_NONE
        (1, "VIR_ERR_INTERNAL_ERROR"),  # not the level VIR_ERR_WARNING
        (2, "VIR_ERR_NO_MEMORY"),  # not the level VIR_ERR_ERROR
        (42, "VIR_ERR_NO_DOMAIN"),
        (55, "VIR_ERR_OPERATION_INVALID"),
        (78, "VIR_ERR_OPERATION_ABORTED"),
        (4242, None),
    ],
    ids=["ok-not-none", "internal-not-warning", "no-memory-not-error", "no-domain", "operation-invalid",
         "operation-aborted", "unknown"],
)
def test_error_code_name_skips_level_names(code, expected):
    assert error_code_name(FAKE, code) == expected


def test_error_code_name_with_the_real_binding():
    real = pytest.importorskip("libvirt")
    assert [error_code_name(real, code) for code in (1, 2, 42, 78)] == [
        "VIR_ERR_INTERNAL_ERROR", "VIR_ERR_NO_MEMORY", "VIR_ERR_NO_DOMAIN", "VIR_ERR_OPERATION_ABORTED"]


BRIDGE_FIX = ("the destination lacks the bridge or network device the guest's interface uses: create it there "
              "(kvm.live_migration.preflight names it before anything moves)")
CPU_FIX = ("the destination's CPU lacks features of the guest's CPU: give the guest a CPU model both hosts provide "
           "(kvm.live_migration.preflight names the features)")


@pytest.mark.parametrize(
    ("message", "code_name", "expected"),
    [
        ("Requested operation is not valid: Attempt to migrate guest to the same host "
         "00000000-0000-0000-0000-000000000001", "VIR_ERR_OPERATION_INVALID", SAME_HOST_FIX),
        ("internal error: Unable to resolve address 'hv2' service '49152': Name or service not known",
         "VIR_ERR_SYSTEM_ERROR", RESOLVE_FIX),
        ("internal error: unable to execute QEMU command 'migrate-set-capabilities': Postcopy is not supported",
         "VIR_ERR_INTERNAL_ERROR", POSTCOPY_FIX),
        ("Cannot recv data: Host key verification failed.: Connection reset by peer", "VIR_ERR_SYSTEM_ERROR",
         SSH_FIX),
        ("Cannot recv data: root@hv2: Permission denied (publickey,password).", "VIR_ERR_SYSTEM_ERROR", SSH_FIX),
        ("unable to connect to server at 'hv2:16514': No route to host", "VIR_ERR_SYSTEM_ERROR", SSH_FIX),
        ("Domain not found: no domain with matching name 'web01'", "VIR_ERR_NO_DOMAIN",
         "check the guest's name or UUID with 'virsh list --all' on the hypervisor"),
        ("operation failed: migration out job: unexpectedly failed", "VIR_ERR_OPERATION_FAILED", None),
        (None, None, None),
        ("Cannot get interface MTU on 'br-prod': No such device", "VIR_ERR_SYSTEM_ERROR", BRIDGE_FIX),
        ("operation failed: guest CPU doesn't match specification: missing features: aes", "VIR_ERR_OPERATION_FAILED",
         CPU_FIX),
    ],
    ids=["same-host-uuid", "unresolvable-host", "postcopy-userfaultfd", "ssh-host-key", "ssh-publickey",
         "no-route", "code-fix-when-no-pattern", "no-fix", "no-message", "missing-bridge", "cpu-missing-features"],
)
def test_fix_for(message, code_name, expected):
    assert fix_for(message, code_name) == expected


# QEMU >= 8.0's words when munlockall() fails (a container without CAP_IPC_LOCK; nspawn's seccomp filter ties
# the memlock calls to it), and libvirt 9's report of the same refusal at the source: the peer connection's end.
MUNLOCKALL = ("internal error: unable to execute QEMU command 'migrate-set-capabilities': Postcopy is not supported: "
              "munlockall() failed: Operation not permitted")
END_OF_FILE = "End of file while reading data: : Input/output error"


def test_a_munlockall_refusal_names_the_capability_not_the_sysctl():
    fix = fix_for(MUNLOCKALL, "VIR_ERR_INTERNAL_ERROR")
    assert "CAP_IPC_LOCK" in fix
    assert "unprivileged_userfaultfd" not in fix


@pytest.mark.parametrize(("message", "has", "lacks"), [
    (END_OF_FILE, ["/var/log/libvirt/qemu/web01.log", "munlockall", "CAP_IPC_LOCK", "userfaultfd",
                   "without saying why"], ["set vm.unprivileged_userfaultfd=1"]),
    (MUNLOCKALL, ["CAP_IPC_LOCK"], ["unprivileged_userfaultfd"]),
    ("internal error: unable to execute QEMU command 'migrate-set-capabilities': Postcopy is not supported",
     ["set vm.unprivileged_userfaultfd=1", "/dev/userfaultfd"], ["CAP_IPC_LOCK"]),
], ids=["end-of-file-says-where-to-look", "munlockall", "userfaultfd"])
def test_a_post_copy_refusal_blames_only_what_it_names(message, has, lacks):
    """An end of file says nothing of the cause: the fix points to the destination's QEMU log and names the usual
    causes instead of blaming a sysctl that may already be 1."""
    fix = post_copy_refusal_fix(message, "web01")
    assert all(words in fix for words in has), fix
    assert not any(words in fix for words in lacks), fix


@pytest.mark.parametrize(("message", "words"), [
    (CREDENTIALS, "QEMU cannot read its migration TLS certificates"),
    (TLS_CHANNEL, "check the QEMU TLS certificates on both hosts"),
], ids=["credentials", "tls-channel"])
def test_tls_failures_name_the_hypervisor_role(message, words):
    fix = fix_for(message, "VIR_ERR_INTERNAL_ERROR")
    assert words in fix
    assert ROLE in fix


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (libvirtError("Requested operation is not valid: domain is not running", C.VIR_ERR_OPERATION_INVALID),
         {"message": "migrating 'web01' failed: Requested operation is not valid: domain is not running",
          "fix": "check the guest's state: a live migration needs a running guest and no other job",
          "code": 55, "code_name": "VIR_ERR_OPERATION_INVALID"}),
        (libvirtError("Attempt to migrate guest to the same host", C.VIR_ERR_OPERATION_INVALID),
         {"message": "migrating 'web01' failed: Attempt to migrate guest to the same host",
          "fix": SAME_HOST_FIX, "code": 55, "code_name": "VIR_ERR_OPERATION_INVALID"}),
        (libvirtError("", 4242),
         {"message": "migrating 'web01' failed: ", "fix": None, "code": 4242, "code_name": None}),
    ],
    ids=["code-fix", "message-fix-wins", "unknown-code"],
)
def test_from_libvirt_error(error, expected):
    assert from_libvirt_error(FAKE, error, "migrating 'web01'").as_dict() == expected


def test_from_libvirt_error_falls_back_to_str_when_the_message_is_empty():
    class Bare(libvirtError):
        def get_error_message(self):
            return None

    error = from_libvirt_error(FAKE, Bare("raw text", C.VIR_ERR_NO_DOMAIN), "looking up")
    assert error.message == "looking up failed: raw text"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MigrationError("it broke"), "it broke"),
        (MigrationError("it broke", fix="mend it"), "it broke. Fix: mend it"),
        (MigrationError("it broke", fix="mend it", code=42, code_name="VIR_ERR_NO_DOMAIN"),
         "it broke [VIR_ERR_NO_DOMAIN]. Fix: mend it"),
    ],
    ids=["message", "with-fix", "with-code-and-fix"],
)
def test_migration_error_str(error, expected):
    assert str(error) == expected


def test_libvirt_errors_translates_libvirt_errors():
    cause = libvirtError("Cannot write data: Broken pipe", C.VIR_ERR_SYSTEM_ERROR)
    with pytest.raises(MigrationError) as caught, libvirt_errors(FAKE, "reading hv1"):
        raise cause
    assert caught.value.as_dict() == {
        "message": "reading hv1 failed: Cannot write data: Broken pipe",
        "fix": "check that the hypervisor is reachable and libvirtd runs there",
        "code": 38,
        "code_name": "VIR_ERR_SYSTEM_ERROR",
    }
    assert caught.value.__cause__ is cause


def test_libvirt_errors_lets_other_exceptions_and_success_through():
    with libvirt_errors(FAKE, "nothing"):
        value = 1
    assert value == 1
    with pytest.raises(KeyError), libvirt_errors(FAKE, "reading"):
        raise KeyError("not libvirt")
