"""Key files: generate, write and load the four kinds of key bodycam uses.

=======  =========  ==========================================
kind     algorithm  used for
=======  =========  ==========================================
agency   X25519     HPKE recipient: only the agency decrypts
device   Ed25519    signs manifests and the audit log
dock     Ed25519    dock stations authenticate to the device
vendor   Ed25519    signs firmware images
=======  =========  ==========================================

Private keys are PKCS#8 PEM written with mode 0600; public keys are
SubjectPublicKeyInfo PEM. Every failure is a one-line ``KeyFileError``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from secure_store.durable import write_atomic

KINDS = ("agency", "device", "dock", "vendor", "export")  # export: signs C2PA manifests of court exports
PrivateKey = Union[ed25519.Ed25519PrivateKey, x25519.X25519PrivateKey]
PublicKey = Union[ed25519.Ed25519PublicKey, x25519.X25519PublicKey]


class KeyFileError(Exception):
    """A key file is missing, unreadable, of the wrong kind, or would be overwritten."""


def _classes(kind: str) -> tuple[type, type]:
    if kind not in KINDS:
        raise KeyFileError(f"unknown key kind {kind!r} (expected one of {', '.join(KINDS)})")
    if kind == "agency":
        return x25519.X25519PrivateKey, x25519.X25519PublicKey
    return ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey


def generate(kind: str) -> PrivateKey:
    """A fresh private key of ``kind``."""
    private_cls, _ = _classes(kind)
    return private_cls.generate()


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public(key: PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 or X25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: PublicKey) -> str:
    """Hex SHA-256 of the raw public key: how reports and logs name a key."""
    return hashlib.sha256(raw_public(key)).hexdigest()


def write_keypair(kind: str, prefix: str | Path) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (0600) and ``PREFIX.pub``; refuse to overwrite either."""
    key = generate(kind)
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


def load_private_key(path: str | Path, kind: str) -> PrivateKey:
    """Load a private key of ``kind`` from a PEM file."""
    private_cls, _ = _classes(kind)
    data = _read(Path(path), f"{kind} private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, private_cls):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not a {kind} key")
    return key


def load_public_key(path: str | Path, kind: str) -> PublicKey:
    """Load a public key of ``kind`` from a PEM file."""
    _, public_cls = _classes(kind)
    data = _read(Path(path), f"{kind} public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not a PEM public key") from None
    if not isinstance(key, public_cls):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not a {kind} public key")
    return key


def check_private_mode(path: str | Path) -> None:
    """Refuse a private key file that group or others can read."""
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(f"{path} has mode {mode:o}; a private key must be 0600")
