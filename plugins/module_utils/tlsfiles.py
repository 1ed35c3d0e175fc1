# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""QEMU's migration TLS files: read from this host's file system or through a host's libvirt, and described.

QEMU reads ``ca-cert.pem``, ``server-cert.pem``/``server-key.pem`` (to receive) and
``client-cert.pem``/``client-key.pem`` (to send) from one directory. A ``TlsDirectory`` holds what
was found there: each file's permissions and, for certificates, what the certificate says
(``CertificateFacts``). Private keys are never read from another host; locally, whether a key
matches its certificate is checked. Judging a pair of directories is ``checks_pair.check_tls``.
"""

from __future__ import annotations

import datetime
import ipaddress
import stat
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from ansible_collections.kvm.live_migration.plugins.module_utils.hostfacts import (
    QEMU_TLS_CLIENT_FILES,
    QEMU_TLS_SERVER_FILES,
)

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID
except ImportError:  # judged without the certificates' contents; the finding says so
    x509 = None

CA_CERT = "ca-cert.pem"
CLIENT_FILES = QEMU_TLS_CLIENT_FILES
SERVER_FILES = QEMU_TLS_SERVER_FILES
CERTIFICATES = ("ca-cert.pem", "server-cert.pem", "client-cert.pem")
KEY_OF = {"server-cert.pem": "server-key.pem", "client-cert.pem": "client-key.pem"}
MAX_CERTIFICATE_BYTES = 256 * 1024
NO_CRYPTOGRAPHY = "the Python cryptography library is not installed where the module runs"


@dataclass(frozen=True)
class CertificateFacts:
    """What one certificate says, and whether the key beside it belongs to it (None: not checked)."""

    subject: str
    issuer: str
    names: tuple = ()  # DNS names and addresses of the subject alternative names
    not_before: float = 0.0  # seconds since the epoch
    not_after: float = 0.0
    is_ca: bool = False
    purposes: tuple | None = None  # serverAuth/clientAuth; None: no extended key usage (any purpose)
    key_matches: bool | None = None
    error: str | None = None  # why it could not be read
    pem: bytes = field(default=b"", repr=False)

    def signed_by(self, ca):
        """True when ``ca``'s key made this certificate's signature, False when not, None when unknown."""
        return verify_signature(self.pem, ca.pem) if self.pem and ca.pem and x509 else None

    def valid_at(self, now):
        return self.not_before <= now < self.not_after


@dataclass(frozen=True)
class TlsFile:
    name: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class TlsDirectory:
    """One host's QEMU TLS directory as read: files present, certificates described, or why it was not read."""

    host: str
    path: str
    files: dict = field(default_factory=dict)  # name -> TlsFile
    certificates: dict = field(default_factory=dict)  # name -> CertificateFacts
    unread: str | None = None  # why the directory could not be read at all
    missing_directory: bool = False
    contents_unread: str | None = None  # why certificates were not described

    def missing(self, names):
        return [name for name in names if name not in self.files]


def describe_certificate(pem, key_pem=None):
    """CertificateFacts of a PEM certificate; ``key_pem`` (local only) is checked against it."""
    if x509 is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        return CertificateFacts(subject="", issuer="", error=f"not a PEM certificate ({error})")
    return CertificateFacts(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        names=_alt_names(cert),
        not_before=_timestamp(cert, "not_valid_before"),
        not_after=_timestamp(cert, "not_valid_after"),
        is_ca=_is_ca(cert),
        purposes=_purposes(cert),
        key_matches=None if key_pem is None else _key_matches(cert, key_pem),
        pem=pem,
    )


def _timestamp(cert, attribute):
    utc = getattr(cert, f"{attribute}_utc", None)  # cryptography >= 42; older ones give naive UTC
    if utc is None:
        utc = getattr(cert, attribute).replace(tzinfo=datetime.timezone.utc)
    return utc.timestamp()


def _extension(cert, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _alt_names(cert):
    names = _extension(cert, x509.SubjectAlternativeName)
    if names is None:
        return ()
    return tuple([*names.get_values_for_type(x509.DNSName),
                  *(str(address) for address in names.get_values_for_type(x509.IPAddress))])


def _is_ca(cert):
    constraints = _extension(cert, x509.BasicConstraints)
    return bool(constraints and constraints.ca)


def _purposes(cert):
    usage = _extension(cert, x509.ExtendedKeyUsage)
    if usage is None:
        return None
    known = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
    return tuple(known.get(oid, oid.dotted_string) for oid in usage)


def _key_matches(cert, key_pem):
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*der) == cert.public_key().public_bytes(*der)


def verify_signature(cert_pem, ca_pem):
    """Whether the CA certificate's key signed the certificate (RSA PKCS#1 v1.5, ECDSA, Ed25519); None if unknown."""
    try:
        cert, ca = x509.load_pem_x509_certificate(cert_pem), x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return False
    if cert.issuer != ca.subject:
        return False
    key = ca.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return None
    except InvalidSignature:
        return False
    except (TypeError, ValueError):  # e.g. RSA-PSS, which needs parameters from the signature algorithm
        return None
    return True


def read_local_directory(host, path, root="/"):
    """The TLS directory ``path`` on the host running the module (``root`` for tests)."""
    directory = Path(root) / path.lstrip("/")
    try:
        entries = {entry.name: entry.stat() for entry in directory.iterdir() if entry.is_file()}
    except FileNotFoundError:
        return TlsDirectory(host, path, missing_directory=True)
    except OSError as error:
        return TlsDirectory(host, path, unread=f"{path} could not be read ({error.strerror})")
    files = {name: TlsFile(name, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
             for name, info in entries.items()}
    if x509 is None:
        return TlsDirectory(host, path, files, contents_unread=NO_CRYPTOGRAPHY)
    certificates = {}
    for name in CERTIFICATES:
        if name in files:
            key = directory / KEY_OF[name] if name in KEY_OF else None
            certificates[name] = describe_certificate((directory / name).read_bytes()[:MAX_CERTIFICATE_BYTES],
                                                      key.read_bytes() if key and key.exists() else None)
    return TlsDirectory(host, path, files, certificates)


def read_remote_directory(hypervisor, path):
    """The TLS directory ``path`` on the host behind ``hypervisor``, read through its libvirt.

    A transient ``dir`` storage pool over the directory lists its files with their permissions, and the
    certificates (public) are downloaded through it; the private keys are only listed. The pool is destroyed
    (transient: gone) before returning. Needs libvirt's storage driver and a read-write connection.
    """
    lv, conn = hypervisor.lv, hypervisor.conn
    pool_xml = (f"<pool type='dir'><name>kvmlm-tls-{uuid.uuid4().hex[:12]}</name>"
                f"<target><path>{escape(path)}</path></target></pool>")
    try:
        pool = conn.storagePoolCreateXML(pool_xml, 0)
    except lv.libvirtError as error:
        message = error.get_error_message() or str(error)
        if "No such file or directory" in message:
            return TlsDirectory(hypervisor.hostname(), path, missing_directory=True)
        return TlsDirectory(hypervisor.hostname(), path, unread=f"{path} could not be read through libvirt ({message})")
    try:
        return _read_pool(hypervisor, path, pool)
    finally:
        pool.destroy()


def _read_pool(hypervisor, path, pool):
    conn = hypervisor.conn
    files, certificates = {}, {}
    for volume in pool.listAllVolumes(0):
        files[volume.name()] = _file_of_volume(volume.name(), volume.XMLDesc(0))
    for name in CERTIFICATES:
        if name not in files or x509 is None:
            continue
        stream = conn.newStream(0)
        volume = pool.storageVolLookupByName(name)
        volume.download(stream, 0, MAX_CERTIFICATE_BYTES, 0)
        chunks = []
        while chunk := stream.recv(65536):
            if not isinstance(chunk, bytes):  # -2: would block; a blocking stream does not return it
                break
            chunks.append(chunk)
        stream.finish()
        certificates[name] = describe_certificate(b"".join(chunks))
    return TlsDirectory(hypervisor.hostname(), path, files, certificates,
                        contents_unread=NO_CRYPTOGRAPHY if x509 is None else None)


def _file_of_volume(name, volume_xml):
    permissions = ET.fromstring(volume_xml).find("target/permissions")

    def number(tag, base=10):
        text = permissions.findtext(tag) if permissions is not None else None
        return int(text, base) if text not in (None, "") else None

    return TlsFile(name, number("mode", 8), number("owner"), number("group"))


def names_match(certificate_names, name):
    """Whether a certificate for ``certificate_names`` is valid for ``name`` (host name or address)."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for candidate in certificate_names:
        if address is not None:
            with_address = _as_address(candidate)
            if with_address == address:
                return True
        elif candidate.lower() == name.lower() or _wildcard_matches(candidate.lower(), name.lower()):
            return True
    return False


def _as_address(text):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _wildcard_matches(pattern, name):
    return pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]


def key_readable_by_qemu(file, qemu_uid, qemu_gid):
    """Whether QEMU's user can read a key with these permissions (None when they are not known)."""
    if file.mode is None:
        return None
    if qemu_uid == 0 or (file.uid == qemu_uid and file.mode & stat.S_IRUSR):
        return True
    if qemu_gid is not None and file.gid == qemu_gid and file.mode & stat.S_IRGRP:
        return True
    return bool(file.mode & stat.S_IROTH)
