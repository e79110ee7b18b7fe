"""ML-DSA-65 companion certificates: how the agency PKI certifies a hybrid key.

A hybrid device, dock or vendor key is an Ed25519 key plus an ML-DSA-65 key. Its Ed25519
certificate stays exactly what every existing reader knows; beside it, a *companion*
certificate, issued by an ML-DSA-65 hierarchy that mirrors the Ed25519 one (same subject
names), certifies the ML-DSA-65 key and binds it to the Ed25519 key with one non-critical
extension: SHA-256 of the raw Ed25519 key. Breaking Ed25519 alone (a future quantum computer)
then no longer lets anyone certify a key the agency did not, for a verifier that holds the
ML-DSA-65 root.

This module holds what the checks in ``secure_store.pki`` build on: the extension, which
algorithm a certificate uses, and ``TrustRoots`` (the one or two agency roots a verifier is
given). docs/FORMAT.md ("Agency PKI") is the normative text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Optional, Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from cryptography.x509.oid import SignatureAlgorithmOID

ED25519, MLDSA65 = "ed25519", "mldsa65"
# bodycam-ed25519-binding: OCTET STRING (32 bytes) = SHA-256(raw Ed25519 public key)
BINDING_OID = x509.ObjectIdentifier("2.25.240657458978498196203840264463105511451")
_BINDING_PREFIX = b"\x04\x20"  # DER: OCTET STRING, length 32
_ALGORITHMS = {
    ED25519: (ed25519.Ed25519PublicKey, SignatureAlgorithmOID.ED25519),
    MLDSA65: (mldsa.MLDSA65PublicKey, SignatureAlgorithmOID.ML_DSA_65),
}


def key_algorithm(cert: x509.Certificate) -> Optional[str]:
    """``ed25519`` or ``mldsa65`` by the certificate's subject key; None for any other key."""
    try:
        key = cert.public_key()
    except (ValueError, TypeError):
        return None
    return next((name for name, (cls, _) in _ALGORITHMS.items() if isinstance(key, cls)), None)


def algorithm_problem(cert: x509.Certificate, algorithm: str) -> Optional[str]:
    """Why ``cert`` is not an ``algorithm`` certificate (subject key and signature), or None."""
    cls, oid = _ALGORITHMS[algorithm]
    want = "Ed25519" if algorithm == ED25519 else "ML-DSA-65"
    if key_algorithm(cert) != algorithm:
        return f"key is not {want}"
    if cert.signature_algorithm_oid != oid:
        return f"not signed with {want}"
    return None


def ed25519_digest(key: ed25519.Ed25519PublicKey) -> bytes:
    """SHA-256 of the raw Ed25519 key: what a companion certificate's binding names."""
    return hashlib.sha256(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).digest()


def binding_extension(key: ed25519.Ed25519PublicKey) -> x509.UnrecognizedExtension:
    """The extension that ties a companion certificate to the Ed25519 key it accompanies."""
    return x509.UnrecognizedExtension(BINDING_OID, _BINDING_PREFIX + ed25519_digest(key))


def bound_digest(cert: x509.Certificate) -> Optional[bytes]:
    """The 32-byte digest a certificate's binding extension names; None if it has none or a malformed one."""
    try:
        ext = cert.extensions.get_extension_for_oid(BINDING_OID)
    except (x509.ExtensionNotFound, ValueError):
        return None
    value = getattr(ext.value, "value", b"")
    if ext.critical or len(value) != 34 or not value.startswith(_BINDING_PREFIX):
        return None
    return value[2:]


@dataclass(frozen=True)
class TrustRoots:
    """The agency roots a verifier is given: Ed25519, and the ML-DSA-65 one for a hybrid agency."""

    ed25519: x509.Certificate
    mldsa65: Optional[x509.Certificate] = None

    @property
    def hybrid(self) -> bool:
        return self.mldsa65 is not None

    def certificates(self) -> tuple[x509.Certificate, ...]:
        """Ed25519 root first, as the trust root file holds them."""
        return (self.ed25519,) if self.mldsa65 is None else (self.ed25519, self.mldsa65)

    def pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.certificates())


RootsLike = Union[TrustRoots, x509.Certificate, Iterable[x509.Certificate]]


def as_roots(root: Optional[RootsLike]) -> Optional[TrustRoots]:
    """A single root certificate is a classic ``TrustRoots``; a list is sorted by key algorithm.

    Code that passed one Ed25519 root keeps working; the checks of the roots themselves are
    ``secure_store.pki.check_roots``.
    """
    if root is None or isinstance(root, TrustRoots):
        return root
    if isinstance(root, x509.Certificate):
        return TrustRoots(root)
    certs = list(root)
    by_alg = {key_algorithm(c): c for c in certs}
    if not certs or len(by_alg) != len(certs) or ED25519 not in by_alg or set(by_alg) - {ED25519, MLDSA65}:
        raise ValueError("a trust root file holds one Ed25519 root, optionally followed by one ML-DSA-65 root")
    return TrustRoots(by_alg[ED25519], by_alg.get(MLDSA65))
