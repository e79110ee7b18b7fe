"""Verify sealed evidence with public keys only; decrypt it with the agency key.

``verify_path`` checks one segment, a recording's directory or a whole tree:
manifest signatures, header digests, every chunk's SHA-256, truncation, and
the device-wide chain (nothing missing, reordered, duplicated or from another
device), then any audit logs with ``secure_store.audit.verify_audit``. Each
failure is a ``Problem`` naming the file, the chunk (if any) and the reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_store import hybrid, keys
from secure_store.errors import FormatError, VerifyError
from secure_store.format import Manifest, iter_records, open_record, read_header, sha256
from secure_store.keywrap import SUITE_NAMES, suite_mismatch, unwrap_data_key
from secure_store.sealer import MANIFEST_SUFFIX, SEGMENT_SUFFIX
from secure_store.audit_format import AuditHead, audit_files, read_entries
from secure_store.audit_verify import verify_audit
from secure_store.custody import check_anchors, check_evidence_against_audit, check_receipts, event_warnings, \
    receipt_anchors
from secure_store.errors import AuditError
from secure_store.receipts import certification_problem, read_receipts
from secure_store.segment_rules import Problem, check_segment_file, manifest_problems  # noqa: F401 - API
from secure_store.sources import as_path
from secure_store.trust import DeviceKey, DeviceTrust, certified_keys, find_device_key, resolve_trust

log = logging.getLogger(__name__)
TrustedKeys = Union[ed25519.Ed25519PublicKey, hybrid.VerifyKey, DeviceKey,
                    Iterable[Union[ed25519.Ed25519PublicKey, hybrid.VerifyKey]], None]
MAX_MANIFEST_FILE = 64 * 1024 * 1024
_EVIDENCE_NAME = re.compile(r"seg-[0-9]{10}\.(seg|manifest)")


@dataclass(frozen=True)
class VerifiedSegment:
    """A segment whose manifest signature verified (its chunks may still have problems)."""

    path: str
    manifest: Manifest = field(repr=False)
    device_key_fp: str
    suite: int | None = None  # how its data key is wrapped (header ``suite``); None if the header is unreadable

    @property
    def protection(self) -> dict:
        """Which algorithms protect it (FORMAT.md, "Post-quantum protection"): reports say it per segment."""
        return {"signatures": "ed25519+mldsa65" if self.manifest.hybrid else "ed25519", "suite": self.suite,
                "key_wrap": SUITE_NAMES.get(self.suite)}

    def summary(self) -> dict:
        m = self.manifest
        return {"file": self.path, "device_id": m.device_id, "seq": m.segment_seq, "recording_id": m.recording_id,
                "index": m.index, "chunks": len(m.chunk_digests), "frames": m.frame_count,
                "first_utc_us": m.first_utc_us, "last_utc_us": m.last_utc_us, "recovered": m.recovered,
                "storage_full": m.storage_full, "markers": [asdict(x) for x in m.markers],
                "clock_error_us": m.clock.error_us, "clock": m.clock.describe(),
                "manifest_sha256": m.digest.hex(), **self.protection}


@dataclass
class VerifyReport:
    segments: list[VerifiedSegment] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    audit_logs: list[str] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)   # said, but not failures (FORMAT.md W1-W4)
    trust: dict[str, dict] = field(default_factory=dict)      # device directory -> what its keys rest on

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.segments or self.audit_logs)

    @property
    def anchored(self) -> bool:
        """True when every device's keys chained to the agency root given to the verifier."""
        return bool(self.trust) and all(t["anchored"] for t in self.trust.values())

    def add_trust(self, device_dir: str, trust: DeviceTrust) -> None:
        self.trust[device_dir] = trust.to_json()

    def to_json(self) -> dict:
        return {"ok": self.ok, "anchored": self.anchored, "trust": self.trust,
                "segments": [s.summary() for s in self.segments],
                "problems": [asdict(p) for p in self.problems], "warnings": [asdict(w) for w in self.warnings],
                "audit_logs": self.audit_logs}


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest file (FormatError on anything malformed or oversized)."""
    try:
        with as_path(path).open("rb") as f:
            data = f.read(MAX_MANIFEST_FILE + 1)
    except OSError as exc:
        raise FormatError(f"{path.name}: cannot read manifest ({exc.strerror})") from None
    if len(data) > MAX_MANIFEST_FILE:
        raise FormatError(f"{path.name}: manifest file too large")
    return Manifest.parse(data, path.name)


def trusted_keys(device_key: TrustedKeys) -> list:
    """One key, a DeviceKey (current + retired keys) or several keys, as a list (Ed25519 keys or VerifyKeys)."""
    if device_key is None:
        return []
    if isinstance(device_key, (ed25519.Ed25519PublicKey, hybrid.VerifyKey)):
        return [device_key]
    if isinstance(device_key, DeviceKey):
        return list(device_key.all)
    if isinstance(device_key, DeviceTrust):
        return list(device_key.keys)
    return list(device_key)


def check_manifest(manifest: Manifest, name: str, device_key: TrustedKeys,
                   device_id: str | None = None) -> list[Problem]:
    """Origin and signature of one manifest, against the device's trusted key(s) (FORMAT.md M2, M6)."""
    by_fp: dict[bytes, hybrid.VerifyKey] = {}
    for k in map(hybrid.as_verify_key, trusted_keys(device_key)):
        fp = sha256(keys.raw_public(k))  # a hybrid key is named by its Ed25519 half
        if fp not in by_fp or k.hybrid:  # the same key known as hybrid anywhere is hybrid: no downgrade
            by_fp[fp] = k
    if isinstance(device_key, DeviceTrust):  # a certificate names the device its key belongs to
        fp = manifest.device_key_fp.hex()
        device_id = device_key.ids[fp] if fp in device_key.ids else device_id or device_key.device_id
    if device_id is not None and manifest.device_id != device_id:
        return [Problem(name, None, f"from another device: manifest says device {manifest.device_id!r}, "
                                    f"expected {device_id!r}")]
    if manifest.device_key_fp not in by_fp:
        trusted = ", ".join(fp.hex()[:16] for fp in by_fp)
        return [Problem(name, None, f"signed by another key: manifest names key {manifest.device_key_fp.hex()[:16]}, "
                                    f"device key is {trusted}")]
    return signature_problems(manifest, name, by_fp[manifest.device_key_fp])


def signature_problems(manifest: Manifest, name: str, key: hybrid.VerifyKey) -> list[Problem]:
    """M2 and M6: every signature the key calls for, and only those (no downgrade either way)."""
    if key.hybrid and not manifest.hybrid:
        return [Problem(name, None, f"classic-only signature from a hybrid key: manifest version {manifest.version} "
                                    "has no ML-DSA-65 signature (stripped, or signed by a downgraded device)")]
    if manifest.hybrid and not key.hybrid:
        return [Problem(name, None, "hybrid manifest (version 3) but no ML-DSA-65 key to check it: the trusted "
                                    "device key is Ed25519 only")]
    message = manifest.signed_bytes()
    try:
        key.ed25519.verify(manifest.signature, message)
    except InvalidSignature:
        return [Problem(name, None, "manifest signature invalid (Ed25519): manifest altered or re-signed with "
                                    "another key")]
    if key.hybrid:
        try:
            key.mldsa65.verify(manifest.signature_mldsa65, message)
        except InvalidSignature:
            return [Problem(name, None, "manifest signature invalid (ML-DSA-65): manifest altered or re-signed "
                                        "with another key")]
    return []


def verify_segment(path: Path, device_key: TrustedKeys = None,
                   device_id: str | None = None) -> tuple[VerifiedSegment | None, list[Problem]]:
    """Verify one ``.seg`` file against the ``.manifest`` beside it.

    ``device_key``: the device's public key, or several (keys retired by re-provisioning
    stay valid for what they signed); None to use the key found beside the evidence.
    """
    path = as_path(path)
    manifest_path = path.with_suffix(MANIFEST_SUFFIX)
    if not manifest_path.exists():
        return None, [Problem(path.name, None, "no manifest: segment never sealed, or its manifest removed")]
    try:
        manifest = read_manifest(manifest_path)
    except FormatError as exc:
        return None, [Problem(manifest_path.name, None, str(exc))]
    if device_key is None:
        try:
            found = find_device_key(path.parent)
        except FormatError as exc:
            return None, [Problem(path.name, None, str(exc))]
        if found is None:
            return None, [Problem(path.name, None, "no device public key given or found beside the evidence")]
        device_key, device_id = found.all, device_id or found.device_id
    problems = check_manifest(manifest, manifest_path.name, device_key, device_id)
    if problems:
        return None, problems
    seg = VerifiedSegment(str(path), manifest, manifest.device_key_fp.hex())
    if not path.exists():
        return seg, [Problem(path.name, None, "segment file missing for a signed manifest")]
    headers: list = []
    problems = check_segment_file(path, manifest, headers.append)  # one read of the file, also from a bucket
    return replace(seg, suite=headers[0].suite if headers else None), problems


def check_chain(segments: list[VerifiedSegment]) -> list[Problem]:
    """Continuity of each device's manifests (one chain per device ID, across key changes)."""
    problems: list[Problem] = []
    by_device: dict[str, list[VerifiedSegment]] = {}
    for s in segments:
        by_device.setdefault(s.manifest.device_id, []).append(s)
    for group in by_device.values():
        group.sort(key=lambda s: (s.manifest.segment_seq, s.path))
        for prev, cur in zip(group, group[1:]):
            a, b, name = prev.manifest, cur.manifest, Path(cur.path).name
            if b.segment_seq == a.segment_seq:
                problems.append(Problem(name, None, f"duplicate: sequence {b.segment_seq} also in "
                                                    f"{Path(prev.path).name}"))
            elif b.segment_seq != a.segment_seq + 1:
                problems.append(Problem(name, None, f"missing: sequence {a.segment_seq + 1}"
                                        + (f"..{b.segment_seq - 1}" if b.segment_seq - a.segment_seq > 2 else "")
                                        + f" absent between {Path(prev.path).name} and {name}"))
            elif b.prev_digest != a.digest:
                problems.append(Problem(name, None, f"chain broken: previous-manifest digest does not match "
                                                    f"{Path(prev.path).name}"))
        for prev, cur in zip(group, group[1:]):
            a, b = prev.manifest, cur.manifest
            if b.segment_seq != a.segment_seq + 1:
                continue
            want = a.index + 1 if b.recording_id == a.recording_id else 0
            if b.index != want:
                problems.append(Problem(Path(cur.path).name, None,
                                        f"recording {b.recording_id}: segment index {b.index} where {want} follows "
                                        f"{Path(prev.path).name}"))
    return problems


def device_dirs(path: Path) -> list[tuple[Path, Path]]:
    """(device directory, its evidence directory) for every device under ``path`` (FORMAT.md, "Dock store").

    A device directory holds ``evidence/`` and/or ``audit/`` (a device root, or one device
    in a dock store); ``path`` may be one, a device's ``evidence/``, or a store of many.
    A directory of bare segment files is its own device directory.
    """
    if path.name == "evidence" and not (path / "evidence").is_dir():
        return [(path.parent, path)]
    if (path / "evidence").is_dir():
        return [(path, path / "evidence")]
    if (path / "audit").is_dir():
        return [(path, path)]  # a flat copy: segments beside audit/
    found = [d for child in sorted(path.iterdir()) if child.is_dir() and not child.name.startswith(".")
             for d in device_dirs(child)] if path.is_dir() else []
    if not found and path.is_dir() and any(_EVIDENCE_NAME.fullmatch(p.name) for p in path.iterdir()):
        found.insert(0, (path, path))
    return found


def verify_path(path: Path, device_key: TrustedKeys = None, *, trust_root=None, crls: Iterable = (),
                anchors: Iterable[AuditHead] = ()) -> VerifyReport:
    """Verify a segment file, a device directory, or a dock store of many (FORMAT.md, "Reader rules").

    ``device_key``: keys the caller trusts (else those beside the evidence); ``trust_root``:
    the agency root certificate, which replaces both with certificates that chain to it;
    ``anchors``: audit heads recorded elsewhere that each device's log must still reach.
    """
    path = as_path(path)
    report = VerifyReport()
    given = trusted_keys(device_key) or None
    crls = list(crls)
    if path.is_file():
        if path.suffix not in (SEGMENT_SUFFIX, MANIFEST_SUFFIX):
            report.problems.append(Problem(path.name, None, "not a segment or manifest file"))
            return report
        device_dir = path.parent.parent if path.parent.name == "evidence" else path.parent
        trust = resolve_trust(device_dir, given, trust_root, crls)
        report.add_trust(str(device_dir), trust)
        seg, problems = verify_segment(path.with_suffix(SEGMENT_SUFFIX), trust)
        report.segments += [seg] if seg else []
        report.problems += problems
        report.warnings.append(Problem(path.name, None, "only this segment was checked: its place in the chain, "
                                                        "the audit log and receipts need its device directory"))
        return report
    if not path.is_dir():
        raise VerifyError(f"{path}: no such file or directory")
    anchors = [(AuditHead(*a), f"anchor {a[0]}:{a[1][:16]}") for a in anchors]
    for device_dir, evidence in device_dirs(path):
        _verify_device_dir(device_dir, evidence, given, trust_root, crls, anchors, report)
    return report


def _verify_device_dir(device_dir: Path, evidence: Path, given, trust_root, crls: list, anchors: list,
                       report: VerifyReport) -> None:
    """Every reader rule over one device directory; problems and warnings go to ``report``."""
    trust = resolve_trust(device_dir, given, trust_root, crls)
    report.add_trust(str(device_dir), trust)
    where = lambda name: str(device_dir / name)  # noqa: E731
    report.problems += [Problem(str(device_dir), None, p) for p in trust.problems]
    report.warnings += [Problem(str(device_dir), None, w) for w in trust.warnings]  # W5, W6
    if not trust.anchored:
        report.warnings.append(Problem(str(device_dir), None, trust.source))
    names = sorted({p.stem for p in evidence.iterdir() if _EVIDENCE_NAME.fullmatch(p.name)}) \
        if evidence.is_dir() else []
    segments = []
    for stem in names:
        seg, problems = verify_segment(evidence / (stem + SEGMENT_SUFFIX), trust)
        segments += [seg] if seg else []
        report.problems += problems
    report.segments += segments
    report.problems += check_chain(segments)
    entries, audit_failed = _read_audit(device_dir / "audit", trust, report)
    present = {s.manifest.segment_seq: s.manifest.digest.hex() for s in segments}
    receipts, receipt_problems = read_receipts(device_dir)
    report.problems += [Problem(where(file), None, reason) for file, reason in receipt_problems]
    if receipts:
        _trust_receipts(device_dir, receipts, trust_root, crls, report)
    findings = check_evidence_against_audit(present, entries, audit_failed)
    findings += check_receipts(receipts, present, {s.manifest.device_id for s in segments} | (
        {trust.device_id} if trust.device_id else set()), set(trust.ids))
    if not audit_failed:
        findings += check_anchors(entries, receipt_anchors(receipts) + anchors)
    report.problems += [Problem(where(f.file), None, f.reason) for f in findings]
    report.warnings += [Problem(where(f.file), None, f.reason) for f in event_warnings(entries)]


def _read_audit(audit_dir: Path, trust: DeviceTrust, report: VerifyReport) -> tuple[list | None, bool]:
    """Verify the device's audit log; (its entries or None if it has none, whether it failed)."""

    if not audit_files(audit_dir):
        return None, False
    report.audit_logs.append(str(audit_dir))
    if not trust.keys:
        report.problems.append(Problem(str(audit_dir), None, "no trusted device key for this audit log"))
        return [], True
    problems = verify_audit(audit_dir, trust.keys)
    report.problems += [Problem(str(audit_dir), None, f"audit log: {p}") for p in problems]
    try:
        return read_entries(audit_dir), bool(problems)
    except AuditError:
        return [], True


def _trust_receipts(device_dir: Path, receipts: list, trust_root, crls: list, report: VerifyReport) -> None:
    """With a trust root, a receipt counts only if its dock key is certified (R2); else say it is not anchored."""
    if trust_root is None:
        report.warnings.append(Problem(str(device_dir / "receipts"), None, "dock keys of the receipts are not "
                                       "anchored to an agency root (give --trust agency-root.pem)"))
        return
    docks, problems = certified_keys(device_dir, "dock", trust_root, crls)
    for r in receipts:
        if keys.fingerprint(r.dock_key) not in docks:
            report.problems.append(Problem(str(device_dir / r.file), None, "signed by a dock key that no dock "
                                                                          "certificate chained to the agency root"))
        elif problem := certification_problem(r, docks[keys.fingerprint(r.dock_key)]):
            report.problems.append(Problem(str(device_dir / r.file), None, problem))


def decrypt_chunks(segment: Path, agency_private_key: "x25519.X25519PrivateKey | hybrid.HybridAgencyKey",
                   device_key: TrustedKeys = None) -> Iterator[bytes]:
    """Verify a segment, then yield each chunk's plaintext (recorder.chunk format) in order.

    Raises VerifyError before yielding anything if the segment does not verify,
    and if any chunk fails to authenticate while decrypting.
    """
    segment = as_path(segment)
    verified, problems = verify_segment(segment, device_key)
    if problems or verified is None:
        raise VerifyError("; ".join(str(p) for p in problems))
    expected = verified.manifest.chunk_digests
    with segment.open("rb", buffering=0) as f:  # re-checked as it is read: the file may change after verification
        header, raw = read_header(f, segment.name)
        header_digest = sha256(raw)
        if header_digest != verified.manifest.header_digest:
            raise VerifyError(f"{segment.name}: header changed since it was verified")
        wrong_kind = suite_mismatch(header.suite, agency_private_key, segment.name)
        if wrong_kind:
            raise VerifyError(wrong_kind)
        if header.agency_key_fp != sha256(keys.raw_public(agency_private_key.public_key())):
            raise VerifyError(f"{segment.name}: sealed to another agency key")
        aead = AESGCM(unwrap_data_key(header.wrapped_key, agency_private_key, segment.name, header.suite))
        count = 0
        for record in iter_records(f, len(raw), segment.name):
            if record.index >= len(expected) or record.digest != expected[record.index]:
                raise VerifyError(f"{segment.name}: chunk {record.index} changed since it was verified")
            plaintext = open_record(aead, header_digest, record, segment.name)
            count += 1
            if not record.meta.final:
                yield plaintext
        if count != len(expected):
            raise VerifyError(f"{segment.name}: {count} of {len(expected)} chunks read (changed since verified)")
