"""Who admits whom at the dock link: devices and docks certified by the same agency trust each other.

A dock admits a device whose certificate chains to the agency root (no trust on first use),
stores that chain beside the device's evidence, and follows a re-provisioning by itself when
the new key is certified for the same device ID: the old key is kept as retired, so the whole
history still verifies. Without a root the dock pins the first key it saw and refuses another
unless told to accept it (``bodycam dock pull --accept-new-key``).

A device admits any dock whose certificate chains to the agency root it was provisioned with
(enrolment of single dock keys still works), and takes revocation lists from docks.

Hybrid keys: the link authenticates the Ed25519 half only; a dock given both agency roots also
checks the device's ML-DSA-65 companion certificate and writes the whole key (two PEM blocks)
to identity.json, so the pull's verification asks the device for both signatures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from secure_store import hybrid, keys, pki
from secure_store.durable import write_atomic
from secure_store.errors import FormatError, StoreError
from secure_store.trust import CERTS_DIR, MAX_IDENTITY_BYTES, parse_identity

log = logging.getLogger(__name__)

AGENCY_ROOT = "agency-root.pem"   # under the device's keys/
CRL_DIR = "crl"                   # under the device's keys/


class AdmissionError(StoreError):
    """The peer is not certified by this agency, presents another key, or its certificate is revoked."""


def _fp16(key: ed25519.Ed25519PublicKey | hybrid.VerifyKey) -> str:
    return keys.fingerprint(key)[:16]


def store_chain(device_dir: Path, role: str, key: ed25519.Ed25519PublicKey, chain_pem: str | bytes) -> Path:
    """Keep a certificate chain in ``certs/ROLE-<key fp16>.pem`` of a device directory (never overwritten)."""
    path = Path(device_dir) / CERTS_DIR / f"{role}-{_fp16(key)}.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, chain_pem.encode() if isinstance(chain_pem, str) else chain_pem, 0o644)
    return path


def identity_document(device_id: str, key: ed25519.Ed25519PublicKey | hybrid.VerifyKey, retired: list[str]) -> bytes:
    doc = {"device_id": device_id, "public_key_pem": keys.public_pem(key).decode(),
           "fingerprint": keys.fingerprint(key), "retired_device_keys": retired}
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def _rotate(device_dir: Path, device_id: str, old: hybrid.VerifyKey, new: hybrid.VerifyKey,
            listed: list[str]) -> None:
    """Keep the old key as retired and make the new one current (identity.json, keys/retired/)."""
    retired_dir = Path(device_dir) / "keys" / "retired"
    retired_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(retired_dir / f"device-{_fp16(old)}.pub", keys.public_pem(old), 0o644)
    retired = [*listed, keys.fingerprint(old)]
    write_atomic(Path(device_dir) / "identity.json", identity_document(device_id, new, sorted(set(retired))), 0o644)
    log.warning("device %s: key %s retired, now %s", device_id, _fp16(old), _fp16(new))


def admit_device(device_dir: Path, device_id: str, key: ed25519.Ed25519PublicKey, cert_pem: str,
                 root=None, crls: list | None = None, accept_new_key: bool = False) -> str:
    """Admit a device at a dock; returns its certificate fingerprint ("" without a root).

    ``root``: the agency root, or ``TrustRoots`` (both roots of a hybrid agency). AdmissionError
    (one line) if it is not certified by ``root`` for ``device_id``, or if, without a root, it
    presents another key than at its first pull and ``accept_new_key`` is off.
    """
    device_dir = Path(device_dir)
    certified = None
    key = hybrid.as_verify_key(key)  # the link's Ed25519 key; hybrid once its companion passed
    if root is not None:
        if not cert_pem:
            raise AdmissionError(f"device {device_id} presented no certificate; this dock admits only devices "
                                 "certified by its agency")
        try:
            chain = pki.load_certs(cert_pem.encode(), f"device {device_id}'s certificate")
            certified = pki.check_chain(chain, root, "device", crls or [])
        except pki.PkiError as exc:
            raise AdmissionError(f"device {device_id} refused: {exc}") from None
        if keys.fingerprint(certified.key) != keys.fingerprint(key) or certified.name != device_id:
            raise AdmissionError(f"device {device_id} refused: its certificate is for {certified.name!r} with "
                                 f"another key")
        key = certified.verify_key
    elif cert_pem:
        key = _pinned_companion(key, cert_pem)
    identity = device_dir / "identity.json"
    if identity.exists():
        try:
            data = identity.read_bytes()[:MAX_IDENTITY_BYTES + 1]
            _, pinned = parse_identity(data, str(identity))
            listed = json.loads(data).get("retired_device_keys") or []
        except (FormatError, ValueError) as exc:
            raise AdmissionError(str(exc)) from None
        if keys.fingerprint(pinned) != keys.fingerprint(key):
            if certified is None and not accept_new_key:
                raise AdmissionError(f"device {device_id} presented a different key than at its first pull "
                                     f"({identity}); if it was re-provisioned, pull once with --accept-new-key")
            _rotate(device_dir, device_id, pinned, key, [fp for fp in listed if isinstance(fp, str)])
        elif key.hybrid and not pinned.hybrid:  # first pull since the dock was given the ML-DSA-65 root
            write_atomic(identity, identity_document(device_id, key, [fp for fp in listed if isinstance(fp, str)]),
                         0o644)
    else:
        device_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(identity, identity_document(device_id, key, []), 0o644)
    if certified is None:
        return ""
    store_chain(device_dir, "device", key, pki.chain_pem(certified.certificates))
    return certified.fingerprint


def _pinned_companion(key: hybrid.VerifyKey, cert_pem: str) -> hybrid.VerifyKey:
    """Without a root the dock pins what the device shows: its ML-DSA-65 key too, if its chain
    carries a companion certificate bound to the key (unchecked, like the pinned key itself)."""
    from secure_store.companion import MLDSA65, bound_digest, ed25519_digest, key_algorithm

    try:
        certs = pki.load_certs(cert_pem.encode(), "device certificate")
    except pki.PkiError:
        return key
    digest = ed25519_digest(key.ed25519)
    bound = [c for c in certs if key_algorithm(c) == MLDSA65 and pki.role_of(c) == "device"
             and bound_digest(c) == digest]
    return hybrid.VerifyKey(key.ed25519, bound[0].public_key()) if len(bound) == 1 else key


class DeviceTrustAnchor:
    """The device's side: its own chain to present, and the agency root that admits docks.

    Reads ``ROOT/certs/device-<fp16>.pem`` (its chain), ``ROOT/keys/agency-root.pem`` and
    ``ROOT/keys/crl/*.pem`` (revocation lists, as docks deliver them).
    """

    def __init__(self, root_dir: Path, device_key: ed25519.Ed25519PublicKey) -> None:
        self.root_dir = Path(root_dir)
        self.device_key = device_key

    @property
    def chain_pem(self) -> str:
        path = self.root_dir / CERTS_DIR / f"device-{_fp16(self.device_key)}.pem"
        return path.read_text() if path.is_file() else ""

    def _root(self):
        """The agency root(s) (``TrustRoots``: a hybrid agency's file holds both), or None."""
        path = self.root_dir / "keys" / AGENCY_ROOT
        try:
            return pki.read_roots(path) if path.is_file() else None
        except pki.PkiError as exc:
            log.warning("agency root unreadable: %s", exc)
            return None

    def crls(self) -> list:
        d = self.root_dir / "keys" / CRL_DIR
        try:
            return pki.read_crls(sorted(d.glob("*.pem"))) if d.is_dir() else []
        except pki.PkiError as exc:
            log.warning("ignoring revocation lists: %s", exc)
            return []

    def admit_dock(self, raw_key: bytes, chain_pem: str) -> ed25519.Ed25519PublicKey | None:
        """The dock's key if its certificate chains to this device's agency root and is not revoked."""
        root = self._root()
        if root is None:
            return None
        try:
            certified = pki.check_chain(pki.load_certs(chain_pem.encode(), "dock certificate"), root, "dock",
                                        self.crls())
        except pki.PkiError as exc:
            log.warning("dock refused: %s", exc)
            return None
        if certified.key.public_bytes_raw() != raw_key:
            log.warning("dock refused: its certificate is for another key")
            return None
        return certified.key

    def install_crl(self, data: bytes) -> str:
        """Keep a CRL a dock delivered, if signed by the agency root or a provisioning CA it issued."""
        root = self._root()
        if root is None:
            raise AdmissionError("no agency root on this device; cannot check a revocation list")
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            raise AdmissionError("not a PEM revocation list") from None
        issuers = [*root.certificates()] + [c for _, chain in _chains(self.root_dir) for c in chain
                                            if pki.role_of(c) == "provisioning"]
        issuer = next((c for c in issuers if crl.issuer == c.subject and crl.is_signature_valid(c.public_key())), None)
        if issuer is None:
            raise AdmissionError("revocation list not signed by this device's agency")
        pq = pki.PQ_SUFFIX if isinstance(issuer.public_key(), mldsa.MLDSA65PublicKey) else ""
        name = f"{pki.role_of(issuer)}{pq}.crl.pem"  # the two hierarchies share names, not lists
        d = self.root_dir / "keys" / CRL_DIR
        d.mkdir(parents=True, exist_ok=True)
        current = d / name
        if current.exists():
            old = x509.load_pem_x509_crl(current.read_bytes())
            if old.last_update_utc > crl.last_update_utc:
                return name  # never go back to an older list
        write_atomic(current, data, 0o644)
        return name


def _chains(root_dir: Path) -> list:
    from secure_store.trust import cert_chains

    try:
        return cert_chains(root_dir)
    except pki.PkiError:
        return []
