"""Finding the device public key that evidence should verify against.

A verifier trusts a device key given on the command line, or else one found
beside the evidence: ``identity.json`` as provisioning writes it (``device_id``,
``public_key_pem``, ``fingerprint``) or ``device.pub`` / ``keys/device.pub`` in the evidence directory
or one of its parents (a device root copied whole, or a dock's export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from secure_store import keys
from secure_store.errors import FormatError

SEARCH_PARENTS = 3
MAX_IDENTITY_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeviceKey:
    """A device's current key, its ID if known, and the keys it had before re-provisioning."""

    key: ed25519.Ed25519PublicKey
    device_id: str | None
    source: Path
    retired: tuple[ed25519.Ed25519PublicKey, ...] = ()

    @property
    def all(self) -> tuple[ed25519.Ed25519PublicKey, ...]:
        return (self.key, *self.retired)


def parse_identity(data: bytes, source: str = "identity.json") -> tuple[str, ed25519.Ed25519PublicKey]:
    """Device ID and public key from an identity.json; FormatError if malformed."""
    if len(data) > MAX_IDENTITY_BYTES:
        raise FormatError(f"{source}: too large for an identity file")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise FormatError(f"{source}: not JSON") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{source}: not a JSON object")
    device_id = doc.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise FormatError(f"{source}: missing device_id")
    pem = doc.get("public_key_pem", doc.get("device_public_key"))
    if isinstance(pem, str):
        try:
            key = serialization.load_pem_public_key(pem.encode("utf-8", "replace"))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise FormatError(f"{source}: public_key_pem is not a PEM public key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise FormatError(f"{source}: public_key_pem is not an Ed25519 key")
    elif isinstance(doc.get("public_key"), str):
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(doc["public_key"]))
        except ValueError:
            raise FormatError(f"{source}: public_key is not 32 bytes of hex") from None
    else:
        raise FormatError(f"{source}: no device public key (public_key_pem)")
    fp = doc.get("fingerprint")
    if fp is not None and fp != keys.fingerprint(key):
        raise FormatError(f"{source}: fingerprint does not match the public key")
    return device_id, key


def identity_json(device_id: str, key: ed25519.Ed25519PublicKey) -> bytes:
    """The identity.json a verifier reads (provisioning may add more fields)."""
    doc = {"device_id": device_id, "public_key_pem": keys.public_pem(key).decode(),
           "fingerprint": keys.fingerprint(key)}
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def find_device_key(directory: Path) -> DeviceKey | None:
    """The device key beside ``directory`` or in one of its parents; None if none is there."""
    directory = Path(directory).resolve()
    for d in [directory, *directory.parents][:SEARCH_PARENTS + 1]:
        identity = d / "identity.json"
        if identity.is_file():
            try:
                with open(identity, "rb") as f:
                    data = f.read(MAX_IDENTITY_BYTES + 1)
            except OSError as exc:
                raise FormatError(f"{identity}: cannot read ({exc.strerror})") from None
            device_id, key = parse_identity(data, str(identity))
            listed = json.loads(data).get("retired_device_keys")
            allowed = {fp for fp in listed if isinstance(fp, str)} if isinstance(listed, list) else set()
            return DeviceKey(key, device_id, identity, _retired_keys(d, allowed))
        for pub in (d / "device.pub", d / "keys" / "device.pub"):
            if pub.is_file():
                try:
                    return DeviceKey(keys.load_public_key(pub, "device"), None, pub, _retired_keys(d, None))
                except keys.KeyFileError as exc:
                    raise FormatError(str(exc)) from None
    return None


def _retired_keys(d: Path, allowed: set[str] | None) -> tuple[ed25519.Ed25519PublicKey, ...]:
    """Earlier device keys kept by re-provisioning (``keys/retired/device-*.pub``).

    With an identity.json only the fingerprints it lists as ``retired_device_keys`` are trusted.
    """
    found = []
    for pub in sorted([*d.glob("keys/retired/device-*.pub"), *d.glob("retired/device-*.pub")]):
        try:
            key = keys.load_public_key(pub, "device")
        except keys.KeyFileError as exc:
            raise FormatError(str(exc)) from None
        if allowed is None or keys.fingerprint(key) in allowed:
            found.append(key)
    return tuple(found)
