"""Key files: generate, write and load the kinds of key bodycam uses.

=======  ==========================  ==========================================
kind     algorithm (hybrid: + PQ)    used for
=======  ==========================  ==========================================
agency   X25519 (+ ML-KEM-768)       HPKE recipient: only the agency decrypts
device   Ed25519 (+ ML-DSA-65)       signs manifests and the audit log
dock     Ed25519 (+ ML-DSA-65)       authenticates to the device, signs receipts
vendor   Ed25519 (+ ML-DSA-65)       signs firmware images
export   Ed25519                     signs the C2PA manifests of court exports
=======  ==========================  ==========================================

Private keys are PKCS#8 PEM written with mode 0600; public keys are
SubjectPublicKeyInfo PEM. A hybrid key (``secure_store.hybrid``) is two PEM blocks in one
file, the classic key first. Every failure is a one-line ``KeyFileError``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from secure_store import hybrid
from secure_store.durable import write_atomic

KINDS = ("agency", "device", "dock", "vendor", "export")  # export: signs C2PA manifests of court exports
HYBRID_KINDS = ("agency", "device", "dock", "vendor")     # kinds that may have a post-quantum half
PrivateKey = Union[ed25519.Ed25519PrivateKey, x25519.X25519PrivateKey, hybrid.HybridAgencyKey]
PublicKey = Union[ed25519.Ed25519PublicKey, x25519.X25519PublicKey, hybrid.HybridAgencyPublicKey]


class KeyFileError(Exception):
    """A key file is missing, unreadable, of the wrong kind, or would be overwritten."""


def _classes(kind: str) -> tuple[type, type]:
    if kind not in KINDS:
        raise KeyFileError(f"unknown key kind {kind!r} (expected one of {', '.join(KINDS)})")
    if kind == "agency":
        return x25519.X25519PrivateKey, x25519.X25519PublicKey
    return ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey


def generate(kind: str, pq: bool = False):
    """A fresh private key of ``kind``; ``pq``: the hybrid post-quantum form.

    A hybrid agency key is a ``hybrid.HybridAgencyKey``; a hybrid signing key a
    ``hybrid.SigningKey``; a classic key the plain ``cryptography`` object.
    """
    private_cls, _ = _classes(kind)
    if not pq:
        return private_cls.generate()
    if kind not in HYBRID_KINDS:
        raise KeyFileError(f"a {kind} key has no post-quantum form")
    return hybrid.HybridAgencyKey.generate() if kind == "agency" else hybrid.SigningKey.generate(True)


def private_pem(key) -> bytes:
    if isinstance(key, (hybrid.HybridAgencyKey, hybrid.SigningKey)):
        return key.pem()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key) -> bytes:
    if isinstance(key, (hybrid.HybridAgencyPublicKey, hybrid.VerifyKey)):
        return key.pem()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public(key) -> bytes:
    """The raw public key a fingerprint hashes: 32 bytes (Ed25519, X25519), or for a hybrid agency
    key ML-KEM-768 || X25519 (1216 bytes); a hybrid signing key is named by its Ed25519 half."""
    if isinstance(key, hybrid.HybridAgencyPublicKey):
        return key.raw()
    if isinstance(key, hybrid.VerifyKey):
        key = key.ed25519
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: PublicKey) -> str:
    """Hex SHA-256 of the raw public key: how reports and logs name a key."""
    return hashlib.sha256(raw_public(key)).hexdigest()


def write_keypair(kind: str, prefix: str | Path, pq: bool = False) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (0600) and ``PREFIX.pub``; refuse to overwrite either."""
    key = generate(kind, pq)
    prefix = Path(prefix)
    key_path = prefix.with_name(prefix.name + ".key")
    pub_path = prefix.with_name(prefix.name + ".pub")
    for p in (key_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p} already exists; refusing to overwrite a key")
    if not key_path.parent.is_dir():
        raise KeyFileError(f"directory {key_path.parent} does not exist")
    try:
        write_atomic(key_path, private_pem(key), 0o600, overwrite=False)
        write_atomic(pub_path, public_pem(key.public_key()), 0o644, overwrite=False)
    except FileExistsError as exc:
        raise KeyFileError(f"{exc.filename} already exists; refusing to overwrite a key") from None
    return key_path, pub_path


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} not found") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from None


def _parse(data: bytes, path: Path, kind: str, private: bool):
    """The key in ``data`` as the loaders return it (hybrid objects for two-block files)."""
    what = "an unencrypted PEM private key" if private else "a PEM public key"
    if data.count(b"-----BEGIN ") > 1:
        if kind not in HYBRID_KINDS:
            raise KeyFileError(f"{path} holds more than one PEM block; a {kind} key has no post-quantum form")
        parse = {("agency", True): hybrid.parse_agency_private, ("agency", False): hybrid.parse_agency_public}.get(
            (kind, private), hybrid.parse_signing_key if private else hybrid.parse_verify_key)
        try:
            return parse(data)
        except hybrid.HybridKeyError as exc:
            raise KeyFileError(f"{path} is not a {kind} key: {exc}") from None
    try:
        return serialization.load_pem_private_key(data, password=None) if private \
            else serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not {what}") from None


def load_private_key(path: str | Path, kind: str) -> PrivateKey:
    """Load a classic private key of ``kind`` (or a hybrid agency key) from a PEM file.

    A hybrid *signing* key file is refused here: a caller that signs evidence must take
    both halves (:func:`load_signing_key`), one that only needs Ed25519 says so with
    ``load_signing_key(...).ed25519``; nothing drops the post-quantum half by accident.
    """
    private_cls, _ = _classes(kind)
    key = _parse(_read(Path(path), f"{kind} private key"), Path(path), kind, True)
    if isinstance(key, hybrid.SigningKey):
        raise KeyFileError(f"{path} holds a hybrid {kind} key (Ed25519 + ML-DSA-65); this use needs both halves")
    if not isinstance(key, (private_cls, hybrid.HybridAgencyKey)):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not a {kind} key")
    return key


def load_public_key(path: str | Path, kind: str) -> PublicKey:
    """Load a classic public key of ``kind`` (or a hybrid agency key) from a PEM file.

    A hybrid signing key file is refused as in :func:`load_private_key`; use
    :func:`load_verify_key`.
    """
    _, public_cls = _classes(kind)
    key = _parse(_read(Path(path), f"{kind} public key"), Path(path), kind, False)
    if isinstance(key, hybrid.VerifyKey):
        raise KeyFileError(f"{path} holds a hybrid {kind} key (Ed25519 + ML-DSA-65); this use needs both halves")
    if not isinstance(key, (public_cls, hybrid.HybridAgencyPublicKey)):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not a {kind} public key")
    return key


def _load_hybrid(path: str | Path, kind: str, private: bool):
    """A classic or hybrid signing key file as a SigningKey (private) or VerifyKey (public)."""
    if kind not in HYBRID_KINDS or kind == "agency":
        raise KeyFileError(f"a {kind} key does not sign with a hybrid signature")
    classic, wrapper = ((ed25519.Ed25519PrivateKey, hybrid.SigningKey) if private
                        else (ed25519.Ed25519PublicKey, hybrid.VerifyKey))
    key = _parse(_read(Path(path), f"{kind} {'private' if private else 'public'} key"), Path(path), kind, private)
    if isinstance(key, classic):
        return wrapper(key)
    if not isinstance(key, wrapper):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not a {kind} {'key' if private else 'public key'}")
    return key


def load_signing_key(path: str | Path, kind: str) -> hybrid.SigningKey:
    """A device, dock or vendor private key, classic or hybrid, as a ``hybrid.SigningKey``."""
    return _load_hybrid(path, kind, True)


def load_verify_key(path: str | Path, kind: str) -> hybrid.VerifyKey:
    """A device, dock or vendor public key, classic or hybrid, as a ``hybrid.VerifyKey``."""
    return _load_hybrid(path, kind, False)


def check_private_mode(path: str | Path) -> None:
    """Refuse a private key file that group or others can read."""
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(f"{path} has mode {mode:o}; a private key must be 0600")
