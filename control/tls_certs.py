"""Certificates for TLS termination: checks of a certificate and its key, ACM export.

A certificate is refused before HAProxy sees it when its key does not match (the public
keys of the certificate and of the private key differ) or when it has expired (X.509
``notAfter``, RFC 5280 §4.1.2.5); both are checked with ``openssl``. ACM certificates
come through ``ExportCertificate`` (AWS Certificate Manager API Reference: private
certificates, and public ones issued as exportable), which returns the certificate, its
chain and the private key encrypted with a passphrase the caller chooses; the key is
decrypted here and never written encrypted or plain anywhere but the HAProxy PEM file.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from typing import Any


class CertificateError(ValueError):
    """A certificate or key HAProxy must not be given."""


def _openssl(*argv: str, data: bytes, env: dict[str, str] | None = None) -> bytes:
    proc = subprocess.run(["openssl", *argv], input=data, capture_output=True, timeout=10,
                          check=False, env={**os.environ, **(env or {})})  # fmt: skip
    if proc.returncode != 0:
        raise CertificateError(proc.stderr.decode(errors="replace").strip().splitlines()[0]
                               if proc.stderr.strip() else f"openssl {argv[0]} failed")  # fmt: skip
    return proc.stdout


def check_pair(certificate: bytes, key: bytes) -> str:
    """Raise :class:`CertificateError` unless ``key`` is the private key of the first
    certificate in ``certificate`` and it has not expired; its ``notAfter``."""
    try:
        cert_pub = _openssl("x509", "-noout", "-pubkey", data=certificate)
    except CertificateError as exc:
        raise CertificateError(f"expected a PEM certificate: {exc}") from None
    try:
        key_pub = _openssl("pkey", "-pubout", "-passin", "pass:", data=key)
    except CertificateError as exc:
        raise CertificateError(f"expected an unencrypted PEM private key: {exc}") from None
    if cert_pub != key_pub:
        raise CertificateError("the private key does not match the certificate")
    proc = subprocess.run(["openssl", "x509", "-noout", "-checkend", "0"], input=certificate,
                          capture_output=True, timeout=10, check=False)  # fmt: skip
    not_after = _openssl("x509", "-noout", "-enddate", data=certificate).decode().strip()
    not_after = not_after.removeprefix("notAfter=")
    if proc.returncode != 0:
        raise CertificateError(f"the certificate expired ({not_after})")
    return not_after


def acm_export(acm: Any, arn: str) -> tuple[bytes, bytes]:
    """The certificate (with its chain) and the decrypted private key of ``arn``."""
    passphrase = secrets.token_urlsafe(24)
    # a Blob: the SDK base64-encodes it on the wire
    answer = acm.export_certificate(CertificateArn=arn, Passphrase=passphrase.encode())
    certificate = (answer["Certificate"].strip() + "\n").encode()
    if answer.get("CertificateChain"):
        certificate += (answer["CertificateChain"].strip() + "\n").encode()
    # the passphrase in the child's environment only (not in an argv /proc shows)
    key = _openssl("pkey", "-passin", "env:SPECTRA_ACM_PASS", data=answer["PrivateKey"].encode(),
                   env={"SPECTRA_ACM_PASS": passphrase})  # fmt: skip
    return certificate, key
