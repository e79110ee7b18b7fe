"""Certificate files of the agency PKI: reading PEM certificates and CRLs, naming what they say.

Kept apart from ``secure_store.pki`` (which checks and issues) so that the small readers
every caller needs stay small; ``pki`` re-exports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from secure_store.errors import StoreError
from secure_store.sources import as_path

MAX_CERT_BYTES = 64 * 1024


class PkiError(StoreError):
    """A certificate or CRL is malformed, does not chain to the trust root, or is revoked."""


def cert_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def role_of(cert: x509.Certificate) -> str | None:
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(ous[0].value) if len(ous) == 1 else None


def common_name(cert: x509.Certificate) -> str | None:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if len(cns) == 1 else None


def load_certs(data: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file (PkiError if none, or malformed)."""
    if len(data) > MAX_CERT_BYTES:
        raise PkiError(f"{source}: too large for a certificate file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise PkiError(f"{source}: not a PEM certificate") from None
    return certs


def read_certs(path: str | Path) -> list[x509.Certificate]:
    try:
        data = as_path(path).read_bytes()  # a certs/ file may lie in the evidence store (secure_store.sources)
    except OSError as exc:
        raise PkiError(f"{path}: cannot read ({exc.strerror})") from None
    return load_certs(data, str(path))


def read_crls(paths: Iterable[Path]) -> list[x509.CertificateRevocationList]:
    crls = []
    for path in paths:
        try:
            crls.append(x509.load_pem_x509_crl(Path(path).read_bytes()))
        except OSError as exc:
            raise PkiError(f"{path}: cannot read ({exc.strerror})") from None
        except ValueError:
            raise PkiError(f"{path}: not a PEM CRL") from None
    return crls


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def chain_pem(chain: Iterable[x509.Certificate]) -> bytes:
    return b"".join(pem(c) for c in chain)
