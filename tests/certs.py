"""Self-signed certificates for the TLS tests (test-only: the product never makes one)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any


def _write(directory: Path, name: str, cert: Any, key: Any) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)


def _issue(
    name: str, days: int, ips: tuple[str, ...], issuer: tuple[Any, Any] | None, ca: bool = False
) -> tuple[Any, Any]:
    """A P-256 certificate for ``name`` (and ``ips``) and its key, signed by ``issuer``
    (certificate, key) or by itself."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=60))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )  # fmt: skip
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True,
        )  # fmt: skip
    return builder.sign(signing_key, hashes.SHA256()), key


def make_cert(
    directory: Path, name: str, days: int = 30, ips: tuple[str, ...] = ()
) -> tuple[str, str]:
    """A self-signed P-256 certificate for the DNS name ``name`` (and the addresses
    ``ips``) valid until ``days`` from now (negative: expired): its PEM path, its key's."""
    cert, key = _issue(name, days, ips, None)
    return _write(directory, name, cert, key)


def make_signed(directory: Path, name: str, ips: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """A test CA and a certificate for ``name`` (and ``ips``) it signed: the CA's PEM
    path, the certificate's, its key's."""
    ca_cert, ca_key = _issue(f"{name} test CA", 30, (), None, ca=True)
    ca_path, _ = _write(directory, f"{name}-ca", ca_cert, ca_key)
    cert, key = _issue(name, 30, ips, (ca_cert, ca_key))
    return (ca_path, *_write(directory, name, cert, key))
