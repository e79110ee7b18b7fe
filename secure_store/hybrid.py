"""Hybrid post-quantum keys: what stays private and unforgeable once a quantum computer exists.

Footage is kept for decades. Ciphertext harvested today could be opened by a future quantum
computer, and an Ed25519 signature a court relies on in 2050 could by then be forged. A hybrid
key pairs each classic key with a post-quantum one, so breaking either alone gains nothing:

- ``HybridAgencyKey`` / ``HybridAgencyPublicKey``: ML-KEM-768 + X25519, the HPKE KEM
  ``MLKEM768_X25519`` that wraps every segment's data key (segment suite 2);
- ``SigningKey`` / ``VerifyKey``: Ed25519 + optional ML-DSA-65 (FIPS 204). A hybrid signer
  signs the same message with both; a verifier checks both and fails if either fails.

A hybrid key file is two PEM blocks in one file, the classic key first (so tools that read
only the first block still see the familiar Ed25519/X25519 key), then the post-quantum one:
PKCS#8 ``PRIVATE KEY`` blocks for a private file, SPKI ``PUBLIC KEY`` blocks for a public one.
One file, never a pair of files: a copy can not lose half a key and silently downgrade.
docs/FORMAT.md ("Post-quantum protection") is the normative text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

MLDSA65_SIGNATURE_LEN = 3309
MLDSA65_PUBLIC_LEN = 1952
MLKEM768_PUBLIC_LEN = 1184
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.S)


class HybridKeyError(ValueError):
    """Key bytes that are not a valid classic or hybrid key of the kind expected."""


def pem_blocks(data: bytes) -> list[bytes]:
    """The PEM blocks of ``data`` in order; anything else between or around them is refused."""
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data)]
    rest = _PEM_BLOCK.sub(b"", data)
    if rest.strip():
        raise HybridKeyError("unexpected text outside the PEM blocks")
    if not blocks:
        raise HybridKeyError("no PEM block")
    return blocks


def _private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _raw(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load(block: bytes, private: bool):
    try:
        if private:
            return serialization.load_pem_private_key(block, password=None)
        return serialization.load_pem_public_key(block)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise HybridKeyError(f"not {'an unencrypted PEM private' if private else 'a PEM public'} key") from None


def _expect(key, cls, what: str):
    if not isinstance(key, cls):
        raise HybridKeyError(f"holds a {type(key).__name__} where {what} belongs")
    return key


# --- agency keys: who can open the footage ---------------------------------------------------

@dataclass(frozen=True)
class HybridAgencyPublicKey:
    """ML-KEM-768 + X25519 recipient key: segments wrapped to it need both private halves to open."""

    mlkem768: mlkem.MLKEM768PublicKey
    x25519: x25519.X25519PublicKey

    def raw(self) -> bytes:
        """pk(ML-KEM-768, 1184 bytes) || pk(X25519, 32 bytes): the HPKE hybrid public key encoding."""
        return self.mlkem768.public_bytes_raw() + _raw(self.x25519)

    def fingerprint(self) -> bytes:
        """H(raw()): the segment header's ``agency_key_fp`` for suite 2."""
        return hashlib.sha256(self.raw()).digest()

    def hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        return hpke.MLKEM768X25519PublicKey(self.mlkem768, self.x25519)

    def pem(self) -> bytes:
        return _public_pem(self.x25519) + _public_pem(self.mlkem768)


@dataclass(frozen=True)
class HybridAgencyKey:
    """The agency's hybrid private key (kept by the agency only, never on a device)."""

    mlkem768: mlkem.MLKEM768PrivateKey
    x25519: x25519.X25519PrivateKey

    @classmethod
    def generate(cls) -> "HybridAgencyKey":
        return cls(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    def public_key(self) -> HybridAgencyPublicKey:
        return HybridAgencyPublicKey(self.mlkem768.public_key(), self.x25519.public_key())

    def hpke_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(self.mlkem768, self.x25519)

    def pem(self) -> bytes:
        return _private_pem(self.x25519) + _private_pem(self.mlkem768)


# --- signing keys: who said what -------------------------------------------------------------

@dataclass(frozen=True)
class Signatures:
    """What a signer produced: always Ed25519 (64 bytes), and ML-DSA-65 (3309 bytes) if hybrid."""

    ed25519: bytes
    mldsa65: Optional[bytes] = None


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key, with the ML-DSA-65 key that makes it hybrid (or None: classic)."""

    ed25519: ed25519.Ed25519PublicKey
    mldsa65: Optional[mldsa.MLDSA65PublicKey] = None

    @property
    def hybrid(self) -> bool:
        return self.mldsa65 is not None

    def fingerprint(self) -> str:
        """Hex H(raw Ed25519 key): a hybrid key keeps its classic key's name (device_key_fp etc.)."""
        return hashlib.sha256(_raw(self.ed25519)).hexdigest()

    def mldsa65_fingerprint(self) -> Optional[str]:
        """Hex H(raw ML-DSA-65 key, 1952 bytes), or None for a classic key: how a hand-over names the PQ half."""
        return hashlib.sha256(self.mldsa65.public_bytes_raw()).hexdigest() if self.mldsa65 else None

    def verify(self, signatures: Signatures, message: bytes) -> None:
        """InvalidSignature unless every signature this key calls for is present and valid.

        A hybrid key needs both; a classic key refuses an ML-DSA signature it cannot check
        (a signature nobody can check must never look like protection).
        """
        self.ed25519.verify(signatures.ed25519, message)
        if self.mldsa65 is None:
            if signatures.mldsa65 is not None:
                raise InvalidSignature("an ML-DSA-65 signature, but the key has no ML-DSA-65 half")
            return
        if signatures.mldsa65 is None:
            raise InvalidSignature("the ML-DSA-65 signature is missing")
        self.mldsa65.verify(signatures.mldsa65, message)

    def pem(self) -> bytes:
        return _public_pem(self.ed25519) + (_public_pem(self.mldsa65) if self.mldsa65 else b"")


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key, with an ML-DSA-65 key if hybrid; signs with every half it has."""

    ed25519: ed25519.Ed25519PrivateKey
    mldsa65: Optional[mldsa.MLDSA65PrivateKey] = None

    @classmethod
    def generate(cls, hybrid: bool) -> "SigningKey":
        return cls(ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate() if hybrid else None)

    @property
    def hybrid(self) -> bool:
        return self.mldsa65 is not None

    def sign(self, message: bytes) -> Signatures:
        """Both signatures over the same bytes (ML-DSA-65: FIPS 204 pure, empty context, hedged)."""
        return Signatures(self.ed25519.sign(message), self.mldsa65.sign(message) if self.mldsa65 else None)

    def public_key(self) -> VerifyKey:
        return VerifyKey(self.ed25519.public_key(), self.mldsa65.public_key() if self.mldsa65 else None)

    def pem(self) -> bytes:
        return _private_pem(self.ed25519) + (_private_pem(self.mldsa65) if self.mldsa65 else b"")


# --- parsing key files -----------------------------------------------------------------------

def _halves(data: bytes, private: bool, classic: tuple[type, str], pq: tuple[type, str]) -> tuple:
    """(classic key, PQ key or None) of a file of one block, or two when hybrid."""
    blocks = pem_blocks(data)
    if len(blocks) > 2:
        raise HybridKeyError(f"{len(blocks)} PEM blocks (a key file has one, or two when hybrid)")
    first = _expect(_load(blocks[0], private), classic[0], f"the {classic[1]} key (first block)")
    second = _expect(_load(blocks[1], private), pq[0], f"the {pq[1]} key (second block)") \
        if len(blocks) == 2 else None
    return first, second


def parse_signing_key(data: bytes) -> SigningKey:
    """One Ed25519 PKCS#8 block, optionally followed by one ML-DSA-65 block."""
    return SigningKey(*_halves(data, True, (ed25519.Ed25519PrivateKey, "Ed25519"),
                               (mldsa.MLDSA65PrivateKey, "ML-DSA-65")))


def parse_verify_key(data: bytes) -> VerifyKey:
    """One Ed25519 SPKI block, optionally followed by one ML-DSA-65 SPKI block."""
    return VerifyKey(*_halves(data, False, (ed25519.Ed25519PublicKey, "Ed25519"),
                              (mldsa.MLDSA65PublicKey, "ML-DSA-65")))


def parse_agency_private(data: bytes) -> "x25519.X25519PrivateKey | HybridAgencyKey":
    """One X25519 PKCS#8 block (classic), or X25519 then ML-KEM-768 (hybrid)."""
    x, pq = _halves(data, True, (x25519.X25519PrivateKey, "X25519"), (mlkem.MLKEM768PrivateKey, "ML-KEM-768"))
    return x if pq is None else HybridAgencyKey(pq, x)


def parse_agency_public(data: bytes) -> "x25519.X25519PublicKey | HybridAgencyPublicKey":
    """One X25519 SPKI block (classic), or X25519 then ML-KEM-768 (hybrid)."""
    x, pq = _halves(data, False, (x25519.X25519PublicKey, "X25519"), (mlkem.MLKEM768PublicKey, "ML-KEM-768"))
    return x if pq is None else HybridAgencyPublicKey(pq, x)


def as_verify_key(key: "VerifyKey | ed25519.Ed25519PublicKey") -> VerifyKey:
    """A plain Ed25519 public key is a classic ``VerifyKey``: code that took one keeps working."""
    return key if isinstance(key, VerifyKey) else VerifyKey(key)


def as_signing_key(key: "SigningKey | ed25519.Ed25519PrivateKey") -> SigningKey:
    """A plain Ed25519 private key is a classic ``SigningKey``."""
    return key if isinstance(key, SigningKey) else SigningKey(key)
