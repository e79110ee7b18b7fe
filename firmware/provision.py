"""Provisioning: give a device its identity, its signing key and the public keys it trusts.

``provision`` makes the device Ed25519 key (0600), installs the agency (X25519), vendor and
dock (Ed25519) public keys, sets the clock and writes ``identity.json`` — the device ID and
public key the evidence system needs. Re-provisioning needs ``force``: it is announced in the
audit log with the *old* key (naming the new key, so the chain of custody is unbroken), the
old public keys go to ``keys/retired/`` so evidence and audit entries signed before stay
verifiable, and ``evidence/`` and ``audit/`` are never touched.

A device whose agency key is hybrid (ML-KEM-768 + X25519) gets a hybrid signing key
(Ed25519 + ML-DSA-65, one two-block file): footage protected against a future quantum
computer should also be signed so that it cannot be forged by one. With ``ca`` the CA
certifies both halves (an ML-DSA-65 companion certificate beside the Ed25519 one).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from secure_store import hybrid, keys
from secure_store.audit import AuditLog, Event, read_entries
from secure_store.errors import AuditError
from secure_store.durable import fsync_dir, write_atomic
from secure_store.layout import DeviceRoot
from secure_store import pki
from secure_store.admission import AGENCY_ROOT, store_chain
from firmware import rootlock

log = logging.getLogger(__name__)

IDENTITY_FORMAT = 1
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ProvisionError(Exception):
    """Provisioning was refused or failed before changing anything that matters."""

    exit_code = 1


@dataclass(frozen=True)
class Identity:
    """The device's public identity, as written to identity.json."""

    device_id: str
    fingerprint: str
    public_key_pem: str
    provisioned_utc: str


def _root(root: str | Path | DeviceRoot) -> DeviceRoot:
    return root if isinstance(root, DeviceRoot) else DeviceRoot(root)


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_provisioned(root: str | Path | DeviceRoot) -> bool:
    root = _root(root)
    return root.identity.exists() or root.device_key.exists()


def load_identity(root: str | Path | DeviceRoot) -> dict:
    """identity.json as a dict; ProvisionError if the device is not provisioned."""
    root = _root(root)
    try:
        identity = json.loads(root.identity.read_bytes())
        identity["device_id"], identity["fingerprint"]  # noqa: B018 - required fields
    except FileNotFoundError:
        raise ProvisionError(f"device {root.root} is not provisioned (no identity.json)") from None
    except (ValueError, KeyError, TypeError):
        raise ProvisionError(f"{root.identity} is not a valid identity file") from None
    return identity


def open_audit(root: str | Path | DeviceRoot) -> AuditLog:
    """The device's audit log, signing with its key (for tools that run beside the daemon)."""
    root = _root(root)
    identity = load_identity(root)
    key = keys.load_signing_key(root.device_key, "device")
    return AuditLog(root.audit, signer(key), identity["device_id"])


def signer(key: hybrid.SigningKey) -> "hybrid.SigningKey | keys.PrivateKey":
    """What the store and the audit log sign with: both halves of a hybrid key; a classic key
    as the plain Ed25519 key it always was (classic evidence stays byte for byte as before)."""
    return key if key.hybrid else key.ed25519


def _short(fp: str) -> str:
    return fp[:16]


_WANTED = {"agency": "the agency's X25519 public key", "vendor": "the vendor's Ed25519 firmware public key",
           "dock": "a dock's Ed25519 public key"}  # or the hybrid form of each


def _load_public(path: Path, kind: str, option: str = "") -> "keys.PublicKey | hybrid.VerifyKey":
    """A public key of ``kind`` (vendor and dock: a ``hybrid.VerifyKey``); the error says which option wanted what."""
    try:
        return keys.load_public_key(path, kind) if kind == "agency" else keys.load_verify_key(path, kind)
    except keys.KeyFileError as exc:
        raise ProvisionError(f"{option or f'--{kind}-pub'} wants {_WANTED[kind]}: {exc}") from None


def _load_trusted(agency_pub: Path, vendor_pub: Path, dock_pubs: Iterable[Path]) -> tuple:
    """Load and cross-check every public key before anything is written."""
    agency = _load_public(agency_pub, "agency")
    vendor = _load_public(vendor_pub, "vendor")
    docks = [(Path(p), _load_public(p, "dock")) for p in dock_pubs]
    vendor_fp = keys.fingerprint(vendor)
    for path, dock in docks:
        if keys.fingerprint(dock) == vendor_fp:
            raise ProvisionError(f"dock key {path} is the vendor key; one key must not serve both roles")
    return agency, vendor, docks


def _install_dock(root: DeviceRoot, dock: hybrid.VerifyKey) -> tuple[str, bool]:
    """Write keys/docks/<fp16>.pub; (fingerprint, newly enrolled?).

    Only the Ed25519 half: an enrolled dock is met at the link, which Ed25519 authenticates.
    """
    fp = keys.fingerprint(dock)
    root.docks.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = root.docks / f"{_short(fp)}.pub"
    if path.exists():
        return fp, False
    write_atomic(path, keys.public_pem(hybrid.as_verify_key(dock).ed25519), 0o644)
    return fp, True


def _retire(root: DeviceRoot, name: str, kind: str) -> str | None:
    """Keep a copy of an old public key in keys/retired/KIND-<fp16>.pub; its fingerprint."""
    path = root.keys / name
    if not path.exists():
        return None
    try:
        key = keys.load_public_key(path, kind) if kind == "agency" else keys.load_verify_key(path, kind)
    except keys.KeyFileError as exc:
        log.warning("cannot retire %s: %s", path, exc)
        return None
    fp = keys.fingerprint(key)
    retired = root.keys / "retired"
    retired.mkdir(mode=0o755, exist_ok=True)
    target = retired / f"{kind}-{_short(fp)}.pub"
    if not target.exists():
        write_atomic(target, path.read_bytes(), 0o644)
    return fp


def set_clock(root: DeviceRoot, audit: AuditLog, source: str, reference_utc: float | None = None,
              clock: Callable[[], float] = time.time) -> int:
    """Record the offset between a reference UTC and the device clock in state/clock.json; logged.

    The device clock itself is not changed (that needs root on a Pi); ``firmware.offload.OffsetClock``
    adds the offset, and a dock's time sync later updates the same file.
    """
    device_now = clock()
    reference = device_now if reference_utc is None else reference_utc
    offset_us = round((reference - device_now) * 1e6)
    root.state.mkdir(mode=0o755, parents=True, exist_ok=True)
    record = {"offset_us": offset_us, "source": source, "reference_utc": reference}  # as OffsetClock writes it
    write_atomic(root.state / "clock.json", json.dumps(record, sort_keys=True).encode() + b"\n", 0o644)
    audit.append(Event.CLOCK_SET, **record, device_utc=device_now, utc=_utc(reference))
    log.info("clock set from %s: offset %d µs", source, offset_us)
    return offset_us


def _pending_path(root: DeviceRoot) -> Path:
    return root.keys / "device.key.next"


def _pending_key(root: DeviceRoot, pq: bool) -> hybrid.SigningKey:
    """The next device key, kept (0600) from before the hand-over until it takes over.

    A re-provisioning that died half-way resumes with the same key, so the hand-over
    entry already in the audit log stays true.
    """
    path = _pending_path(root)
    if path.exists():
        try:
            return keys.load_signing_key(path, "device")
        except keys.KeyFileError as exc:
            log.warning("discarding an unreadable pending device key: %s", exc)
    key = hybrid.SigningKey.generate(pq)
    write_atomic(path, keys.private_pem(key), 0o600)
    return key


def _hand_over(root: DeviceRoot, details: dict) -> None:
    """The old key signs ``reprovision_begin`` naming the new key (once, even if re-run)."""
    try:
        audit = open_audit(root)
        done = any(e.event == Event.PROVISION and e.details.get("action") == "reprovision_begin"
                   and e.details.get("device_key") == details["device_key"] for e in read_entries(root.audit))
        if not done:
            audit.append(Event.PROVISION, action="reprovision_begin", **details)
    except (ProvisionError, keys.KeyFileError, AuditError, OSError) as exc:
        log.warning("old identity unusable, re-provisioning without a signed hand-over: %s", exc)


def provision(
    root: str | Path | DeviceRoot,
    device_id: str,
    agency_pub: str | Path,
    vendor_pub: str | Path,
    dock_pubs: Iterable[str | Path] = (),
    force: bool = False,
    *,
    reference_utc: float | None = None,
    clock: Callable[[], float] = time.time,
    ca: str | Path | None = None,
    pq: bool | None = None,
) -> Identity:
    """Provision (or with ``force`` re-provision) the device under ``root``; see module doc.

    ``ca``: the agency CA directory (``bodycam ca init``) whose provisioning certificate
    certifies the new key; the chain goes to ``certs/``, the agency root(s) to ``keys/``.
    ``pq``: a hybrid (True) or classic (False) device key; None: hybrid when the agency key is.
    Refused (ProvisionError) while the device daemon holds the root.
    """
    root = _root(root)
    args = (root, device_id, agency_pub, vendor_pub, dock_pubs, force, reference_utc, clock, ca, pq)
    if not root.root.is_dir():  # no daemon can hold a root that does not exist yet
        return _provision(*args)
    with _locked(root):
        return _provision(*args)


def _locked(root: DeviceRoot) -> rootlock.RootLock:
    try:
        return rootlock.acquire(root.root)
    except rootlock.RootInUse as exc:
        raise ProvisionError(str(exc)) from None


def _provision(root: DeviceRoot, device_id: str, agency_pub, vendor_pub, dock_pubs, force: bool,
               reference_utc: float | None, clock: Callable[[], float], ca: str | Path | None,
               pq: bool | None) -> Identity:
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.fullmatch(device_id):
        raise ProvisionError(f"device ID {device_id!r} must be 1-64 of A-Z a-z 0-9 . _ - (not starting with . _ -)")
    agency, vendor, docks = _load_trusted(Path(agency_pub), Path(vendor_pub), [Path(p) for p in dock_pubs])
    previously = is_provisioned(root)
    if previously and not force:
        raise ProvisionError(f"device {root.root} is already provisioned; re-provisioning needs --force "
                             "(evidence and audit log are kept)")
    root.root.mkdir(parents=True, exist_ok=True)
    root.keys.mkdir(mode=0o700, exist_ok=True)
    for d in (root.evidence, root.audit, root.firmware, root.state):
        d.mkdir(mode=0o755, exist_ok=True)
    (root.state / rootlock.LOCK_NAME).touch()  # the file the daemon and later provisioning lock

    pq = isinstance(agency, hybrid.HybridAgencyPublicKey) if pq is None else pq
    new_key = _pending_key(root, pq) if previously else hybrid.SigningKey.generate(pq)
    new_fp = keys.fingerprint(new_key.public_key())
    chain = _certify(ca, device_id, new_key.public_key()) if ca is not None else None
    details = {"device_id": device_id, "device_key": new_fp, "agency_key": keys.fingerprint(agency),
               "vendor_key": keys.fingerprint(vendor), "docks": [keys.fingerprint(d) for _, d in docks]}
    if new_key.hybrid:  # the signed entry commits to the new key being hybrid (FORMAT.md L5)
        details["device_key_mldsa65"] = new_key.public_key().mldsa65_fingerprint()
    if chain:
        details["device_cert"] = pki.cert_fingerprint(chain[0])
    retired: dict[str, str | None] = {}
    if previously:
        _hand_over(root, details)
        retired = {kind: _retire(root, name, kind)
                   for name, kind in (("device.pub", "device"), ("agency.pub", "agency"), ("vendor.pub", "vendor"))}
        os.replace(_pending_path(root), root.device_key)  # the new key takes over only now
        fsync_dir(root.keys)
    else:
        write_atomic(root.device_key, keys.private_pem(new_key), 0o600)
    write_atomic(root.device_pub, keys.public_pem(new_key.public_key()), 0o644)
    write_atomic(root.agency_pub, keys.public_pem(agency), 0o644)
    write_atomic(root.vendor_pub, keys.public_pem(vendor), 0o644)
    for _, dock in docks:
        _install_dock(root, dock)
    now = clock()
    identity = Identity(device_id, new_fp, keys.public_pem(new_key.public_key()).decode(), _utc(now))
    document = {
        "identity_format": IDENTITY_FORMAT,
        "device_id": device_id,
        "fingerprint": new_fp,
        "public_key": keys.raw_public(new_key.public_key()).hex(),
        "public_key_pem": identity.public_key_pem,
        "provisioned_utc": identity.provisioned_utc,
        "retired_device_keys": _retired_list(root, retired.get("device")),
    }
    write_atomic(root.identity, json.dumps(document, indent=1, sort_keys=True).encode() + b"\n", 0o644)
    if chain:
        store_chain(root.root, "device", new_key.public_key(), pki.chain_pem(chain))
        write_atomic(root.keys / AGENCY_ROOT, pki.CertificateAuthority(ca).roots.pem(), 0o644)
    fsync_dir(root.root)

    audit = AuditLog(root.audit, signer(new_key), device_id)
    audit.append(Event.PROVISION, action="reprovision" if previously else "provision",
                 retired={k: v for k, v in retired.items() if v}, **details)
    set_clock(root, audit, "provision", reference_utc, clock)
    log.info("device %s provisioned, key %s", device_id, _short(new_fp))
    return identity


def _certify(ca: str | Path, device_id: str, key: hybrid.VerifyKey) -> list:
    """The device certificate chain(s) from the agency CA, checked against its own root(s)."""
    try:
        authority = pki.CertificateAuthority(ca)
        chain = authority.issue("device", device_id, key)
        if pki.check_chain(chain, authority.roots, "device").hybrid != key.hybrid:
            raise pki.PkiError("the certificates do not carry both halves of the hybrid key")
    except (pki.PkiError, OSError) as exc:
        raise ProvisionError(f"--ca {ca}: cannot certify the device key: {exc}") from None
    return chain


def _retired_list(root: DeviceRoot, just_retired: str | None) -> list[str]:
    """Fingerprints of every retired device key, from keys/retired/ (oldest names kept)."""
    retired = root.keys / "retired"
    found = []
    for path in sorted(retired.glob("device-*.pub")) if retired.is_dir() else []:
        try:
            found.append(keys.fingerprint(keys.load_verify_key(path, "device")))
        except keys.KeyFileError:
            continue
    if just_retired and just_retired not in found:
        found.append(just_retired)
    return found


def enroll_dock(root: str | Path | DeviceRoot, dock_pub: str | Path) -> tuple[str, bool]:
    """Enroll one more dock station's public key; (fingerprint, newly enrolled?). Audit-logged."""
    root = _root(root)
    dock = _load_public(Path(dock_pub), "dock", "--enroll-dock")
    with _locked(root):
        return _enroll(root, dock, dock_pub)


def _enroll(root: DeviceRoot, dock: keys.PublicKey, dock_pub: str | Path) -> tuple[str, bool]:
    audit = open_audit(root)
    if root.vendor_pub.exists() and keys.fingerprint(keys.load_verify_key(root.vendor_pub, "vendor")) == keys.fingerprint(dock):
        raise ProvisionError(f"dock key {dock_pub} is the vendor key; one key must not serve both roles")
    fp, new = _install_dock(root, dock)
    if new:
        audit.append(Event.DOCK_ENROLLED, dock_key=fp, file=f"{_short(fp)}.pub")
        log.info("dock %s enrolled", _short(fp))
    return fp, new

