"""Test certificates made with cryptography: a CA, and QEMU's server and client certificates signed by it."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Authority:
    def __init__(self, common_name="test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - DAY).not_valid_after(NOW + 3650 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, host, names=None, purpose="server", days=800, start_days=-1):
        """(certificate PEM, key PEM) for ``host``, valid from NOW + start_days for ``days``."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt = [x509.IPAddress(ipaddress.ip_address(name)) if name[0].isdigit() else x509.DNSName(name)
               for name in (names if names is not None else [host])]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if purpose == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(NOW + start_days * DAY).not_valid_after(NOW + (start_days + days) * DAY)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return pem(builder.sign(self.key, hashes.SHA256())), key_pem(key)


def qemu_directory(authority, host, names=None, **overrides):
    """{file name: content} of a complete QEMU TLS directory for ``host``; ``overrides`` replace or drop (None)."""
    server, server_key = authority.issue(host, names)
    client, client_key = authority.issue(host, names, purpose="client")
    files = {"ca-cert.pem": pem(authority.cert), "server-cert.pem": server, "server-key.pem": server_key,
             "client-cert.pem": client, "client-key.pem": client_key}
    for option, content in overrides.items():
        name = option.replace("_", "-") + ".pem"
        if content is None:
            files.pop(name)
        else:
            files[name] = content
    return files
