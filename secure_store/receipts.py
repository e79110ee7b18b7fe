"""Dock receipts: what a dock signs at every pull, so evidence removed from its store afterwards shows.

A receipt names the device (ID, key and certificate fingerprints), the audit head the dock
received, the manifests it verified and confirmed, and the dock's UTC, signed by the dock key.
A hybrid dock key (Ed25519 + ML-DSA-65) writes version-2 receipts: the body names its
ML-DSA-65 public key too and the line carries both signatures; readers check both.
Receipts of one device directory are numbered from 1 and hash-chained. The verifier treats
each as an anchor: every manifest it names must still be there, unchanged, and the audit log
must still reach its head. docs/FORMAT.md ("Receipts") specifies the bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from secure_store import hybrid, keys, signed_line, strict_json
from secure_store.durable import write_atomic
from secure_store.errors import FormatError
from secure_store.sources import as_path

log = logging.getLogger(__name__)

VERSION = 1         # signed by a classic (Ed25519) dock key
HYBRID_VERSION = 2  # signed by a hybrid dock key: Ed25519 + ML-DSA-65, both named in the body
DIRECTORY = "receipts"
SIGNATURE_CONTEXT = b"bodycam-receipt-v1\x00"
ZERO = "0" * 64
MAX_RECEIPT_BYTES = 4 * 1024 * 1024
_FILE_RE = re.compile(r"receipt-(\d{12})\.json")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UTC_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_KEYS = {"v", "n", "prev", "device_id", "device_key", "device_cert", "audit_head", "manifests", "utc", "dock_key"}
_HYBRID_KEYS = _KEYS | {"dock_key_mldsa65"}
_MLDSA_KEY_B64_LEN = 2604  # base64 of the 1952-byte ML-DSA-65 public key, with its one "=" of padding


@dataclass(frozen=True)
class Receipt:
    """One parsed receipt whose signature verified against the dock key it names."""

    number: int
    prev: str
    device_id: str
    device_key: str           # hex SHA-256 of the device's raw public key
    device_cert: str          # hex SHA-256 of the device certificate's DER, "" if it had none
    audit_head: tuple[int, str] | None
    manifests: tuple[tuple[int, str], ...]   # (segment seq, manifest SHA-256 hex), ascending
    utc: str
    dock_key: ed25519.Ed25519PublicKey
    digest: str               # SHA-256 of the receipt line: the next receipt's prev
    file: str
    dock_key_mldsa65: mldsa.MLDSA65PublicKey | None = None  # version 2: the dock key's ML-DSA-65 half

    @property
    def version(self) -> int:
        return VERSION if self.dock_key_mldsa65 is None else HYBRID_VERSION

    @property
    def verify_key(self) -> hybrid.VerifyKey:
        """The dock key the receipt names, with its ML-DSA-65 half when hybrid."""
        return hybrid.VerifyKey(self.dock_key, self.dock_key_mldsa65)


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def receipt_files(device_dir: Path) -> list[tuple[int, Path]]:
    d = as_path(device_dir) / DIRECTORY
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), d / n.name) for n in d.iterdir() if (m := _FILE_RE.fullmatch(n.name)))


def write_receipt(device_dir: Path, dock_key: "ed25519.Ed25519PrivateKey | hybrid.SigningKey", device_id: str,
                  device_key_fp: str,
                  device_cert_fp: str, audit_head: tuple[int, str] | None,
                  manifests: Iterable[tuple[int, str]], utc: str | None = None) -> Path:
    """Sign and durably write the next receipt of ``device_dir``; returns its path.

    A hybrid dock key writes a version-2 receipt (both signatures, ``dock_key_mldsa65`` in the body).
    """
    dock_key = hybrid.as_signing_key(dock_key)
    files = receipt_files(device_dir)
    number = files[-1][0] + 1 if files else 1
    prev = hashlib.sha256(files[-1][1].read_bytes().rstrip(b"\n")).hexdigest() if files else ZERO
    body = {"v": HYBRID_VERSION if dock_key.hybrid else VERSION, "n": number, "prev": prev, "device_id": device_id, "device_key": device_key_fp,
            "device_cert": device_cert_fp,
            "audit_head": None if audit_head is None else {"seq": audit_head[0], "digest": audit_head[1]},
            "manifests": [{"seq": s, "sha256": d} for s, d in sorted(manifests)],
            "utc": utc or _utc_now(), "dock_key": keys.raw_public(dock_key.ed25519.public_key()).hex()}
    if dock_key.mldsa65 is not None:
        body["dock_key_mldsa65"] = base64.b64encode(dock_key.mldsa65.public_key().public_bytes_raw()).decode()
    data = strict_json.dumps(body)
    line = signed_line.join(data, dock_key.sign(SIGNATURE_CONTEXT + data))
    if len(line) > MAX_RECEIPT_BYTES:
        raise FormatError(f"receipt {number} would be larger than {MAX_RECEIPT_BYTES} bytes")
    path = Path(device_dir) / DIRECTORY / f"receipt-{number:012d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, line + b"\n", 0o644, overwrite=False)
    log.info("receipt %d for %s: %d manifest(s), audit head %s", number, device_id, len(body["manifests"]),
             audit_head[0] if audit_head else "none")
    return path


def parse_receipt(data: bytes, number: int, name: str) -> Receipt:
    """Parse and check one receipt file (FormatError naming the file and the reason)."""
    if len(data) > MAX_RECEIPT_BYTES:
        raise FormatError(f"{name}: larger than {MAX_RECEIPT_BYTES} bytes")
    if not data.endswith(b"\n") or data.count(b"\n") != 1:
        raise FormatError(f"{name}: not one line ending in LF")
    line = data[:-1]
    try:
        body, signatures = signed_line.split(line)
    except signed_line.EnvelopeError as exc:
        raise FormatError(f"{name}: {exc}") from None
    try:
        obj = strict_json.loads(body)
    except strict_json.StrictJSONError as exc:
        raise FormatError(f"{name}: body is not canonical JSON ({exc})") from None
    if not isinstance(obj, dict) or "v" not in obj:
        raise FormatError(f"{name}: fields are not {sorted(_KEYS)}")
    if type(obj["v"]) is not int or obj["v"] not in (VERSION, HYBRID_VERSION):
        raise FormatError(f"{name}: unknown receipt version {obj['v']!r}")
    hybrid_receipt = obj["v"] == HYBRID_VERSION
    if set(obj) != (_HYBRID_KEYS if hybrid_receipt else _KEYS):
        raise FormatError(f"{name}: fields are not {sorted(_HYBRID_KEYS if hybrid_receipt else _KEYS)}")
    if hybrid_receipt != (signatures.mldsa65 is not None):
        raise FormatError(f"{name}: a version-{obj['v']} receipt " + (
            "without its ML-DSA-65 signature (sig_mldsa65)" if signatures.mldsa65 is None
            else "with an ML-DSA-65 signature (only version 2 carries sig_mldsa65)"))
    if type(obj["n"]) is not int or obj["n"] != number:
        raise FormatError(f"{name}: says it is receipt {obj['n']!r}")
    for k in ("prev", "device_key", "dock_key"):
        if not isinstance(obj[k], str) or not _HEX64.fullmatch(obj[k]):
            raise FormatError(f"{name}: {k} is not 64 lowercase hex digits")
    if not isinstance(obj["device_cert"], str) or not (obj["device_cert"] == "" or _HEX64.fullmatch(obj["device_cert"])):
        raise FormatError(f"{name}: device_cert is not empty or 64 lowercase hex digits")
    if not isinstance(obj["device_id"], str) or not obj["device_id"]:
        raise FormatError(f"{name}: device_id is not a non-empty string")
    if not isinstance(obj["utc"], str) or not _UTC_RE.fullmatch(obj["utc"]) or not _valid_utc(obj["utc"]):
        raise FormatError(f"{name}: utc is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    head = obj["audit_head"]
    if head is not None:
        if not (isinstance(head, dict) and set(head) == {"seq", "digest"} and type(head["seq"]) is int
                and head["seq"] >= 0 and isinstance(head["digest"], str) and _HEX64.fullmatch(head["digest"])):
            raise FormatError(f"{name}: audit_head is not {{seq, digest}}")
        head = (head["seq"], head["digest"])
    manifests = obj["manifests"]
    if not isinstance(manifests, list) or not all(
            isinstance(m, dict) and set(m) == {"seq", "sha256"} and type(m["seq"]) is int and m["seq"] >= 1
            and isinstance(m["sha256"], str) and _HEX64.fullmatch(m["sha256"]) for m in manifests):
        raise FormatError(f"{name}: manifests is not a list of {{seq, sha256}}")
    seqs = [m["seq"] for m in manifests]
    if seqs != sorted(set(seqs)):
        raise FormatError(f"{name}: manifests not in ascending, distinct seq order")
    dock_key = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(obj["dock_key"]))
    pq_key = _mldsa_key(obj["dock_key_mldsa65"], name) if hybrid_receipt else None
    try:
        hybrid.VerifyKey(dock_key, pq_key).verify(signatures, SIGNATURE_CONTEXT + body)
    except InvalidSignature:
        raise FormatError(f"{name}: signature does not verify with the dock key it names") from None
    return Receipt(number, obj["prev"], obj["device_id"], obj["device_key"], obj["device_cert"], head,
                   tuple((m["seq"], m["sha256"]) for m in manifests), obj["utc"], dock_key,
                   hashlib.sha256(line).hexdigest(), name, pq_key)


def _mldsa_key(text: object, name: str) -> mldsa.MLDSA65PublicKey:
    """``dock_key_mldsa65``: the canonical base64 of a raw 1952-byte ML-DSA-65 public key."""
    if not isinstance(text, str) or len(text) != _MLDSA_KEY_B64_LEN:
        raise FormatError(f"{name}: dock_key_mldsa65 is not the base64 of a 1952-byte ML-DSA-65 public key")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        if base64.b64encode(raw).decode() != text or len(raw) != hybrid.MLDSA65_PUBLIC_LEN:
            raise ValueError
        return mldsa.MLDSA65PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise FormatError(f"{name}: dock_key_mldsa65 is not the base64 of a 1952-byte ML-DSA-65 public key") \
            from None


def certification_problem(receipt: Receipt, certified: object) -> str | None:
    """Why ``receipt`` does not stand under the certified dock key with its Ed25519 fingerprint (R2), or None.

    ``certified``: a ``hybrid.VerifyKey``, a plain Ed25519 key, or a ``pki.CertifiedKey``. A
    hybrid certified key needs a version-2 receipt naming its very ML-DSA-65 key; a classic
    certified key a version-1 receipt (an ML-DSA-65 key nobody certified is no protection).
    """
    if not isinstance(certified, (hybrid.VerifyKey, ed25519.Ed25519PublicKey)):
        certified = getattr(certified, "verify_key", None) or getattr(certified, "key")
    certified = hybrid.as_verify_key(certified)
    if certified.mldsa65 is None:
        return None if receipt.dock_key_mldsa65 is None else \
            "hybrid receipt, but the dock's certificate has no ML-DSA-65 key to check it"
    if receipt.dock_key_mldsa65 is None:
        return "classic-only signature from a hybrid dock key (ML-DSA-65 signature missing)"
    if receipt.dock_key_mldsa65.public_bytes_raw() != certified.mldsa65.public_bytes_raw():
        return "names an ML-DSA-65 dock key that is not the certified one"
    return None


def _valid_utc(text: str) -> bool:
    try:
        dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
        return True
    except ValueError:
        return False


def read_receipts(device_dir: Path) -> tuple[list[Receipt], list[tuple[str, str]]]:
    """Every receipt of ``device_dir`` that parses and verifies, and one line per problem.

    Problems: a receipt that does not parse or verify, numbers missing (removed receipts),
    and a ``prev`` that does not chain to the receipt before.
    """
    found, problems = [], []
    files = receipt_files(device_dir)
    expected = 1
    for number, path in files:
        if number != expected:
            span = f"{expected}" if number == expected + 1 else f"{expected}-{number - 1}"
            problems.append((DIRECTORY, f"receipt(s) {span} missing (removed)"))
        expected = number + 1
        try:
            with path.open("rb") as f:
                data = f.read(MAX_RECEIPT_BYTES + 2)
            found.append(parse_receipt(data, number, f"{DIRECTORY}/{path.name}"))
        except OSError as exc:
            problems.append((f"{DIRECTORY}/{path.name}", f"cannot read ({exc.strerror})"))
        except FormatError as exc:
            problems.append((f"{DIRECTORY}/{path.name}", str(exc).split(": ", 1)[-1]))
    by_number = {r.number: r for r in found}
    for r in found:
        before = by_number.get(r.number - 1)
        want = ZERO if r.number == 1 else (before.digest if before else None)
        if want is not None and r.prev != want:
            problems.append((r.file, f"does not chain to receipt {r.number - 1}"))
    return found, problems


def audit_head_of(audit_dir: Path) -> tuple[int, str] | None:
    """(seq, digest) of the newest entry of the audit log copy in ``audit_dir``; None if it has none."""
    from secure_store.audit_format import read_entries
    from secure_store.errors import AuditError

    try:
        entries = read_entries(audit_dir)
    except AuditError as exc:
        log.warning("audit log in %s unreadable, receipt records no head: %s", audit_dir, exc)
        return None
    return (entries[-1].seq, entries[-1].digest) if entries else None


def write_pull_receipt(device_dir: Path, dock_key: "ed25519.Ed25519PrivateKey | hybrid.SigningKey", device_id: str,
                       device_key: ed25519.Ed25519PublicKey, device_cert_fp: str,
                       confirmed: Iterable[str]) -> Path:
    """The receipt a dock writes at the end of a pull: what it now holds, confirmed segments by digest."""
    evidence = Path(device_dir) / "evidence"
    manifests = []
    for name in confirmed:
        stem = Path(name).stem
        data = (evidence / (stem + ".manifest")).read_bytes()
        manifests.append((int(stem.removeprefix("seg-")), hashlib.sha256(data).hexdigest()))
    return write_receipt(device_dir, dock_key, device_id, keys.fingerprint(device_key), device_cert_fp,
                         audit_head_of(Path(device_dir) / "audit"), manifests)
