"""Verify sealed evidence with public keys only; decrypt it with the agency key.

``verify_path`` checks one segment, a recording's directory or a whole tree:
manifest signatures, header digests, every chunk's SHA-256, truncation, and
the device-wide chain (nothing missing, reordered, duplicated or from another
device), then any audit logs with ``secure_store.audit.verify_audit``. Each
failure is a ``Problem`` naming the file, the chunk (if any) and the reason.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_store import keys
from secure_store.errors import FormatError, TornRecordError, VerifyError
from secure_store.format import Manifest, iter_records, open_record, read_header, sha256, unwrap_data_key
from secure_store.sealer import MANIFEST_SUFFIX, SEGMENT_SUFFIX, segment_stem
from secure_store.trust import DeviceKey, find_device_key

log = logging.getLogger(__name__)
TrustedKeys = Union[ed25519.Ed25519PublicKey, DeviceKey, Iterable[ed25519.Ed25519PublicKey], None]
MAX_MANIFEST_FILE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Problem:
    """One verification failure: which file, which chunk (or None), why."""

    file: str
    chunk: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: chunk {self.chunk}" if self.chunk is not None else self.file
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class VerifiedSegment:
    """A segment whose manifest signature verified (its chunks may still have problems)."""

    path: str
    manifest: Manifest = field(repr=False)
    device_key_fp: str

    def summary(self) -> dict:
        m = self.manifest
        return {"file": self.path, "device_id": m.device_id, "seq": m.segment_seq, "recording_id": m.recording_id,
                "index": m.index, "chunks": len(m.chunk_digests), "frames": m.frame_count,
                "first_utc_us": m.first_utc_us, "last_utc_us": m.last_utc_us, "recovered": m.recovered,
                "storage_full": m.storage_full, "markers": [asdict(x) for x in m.markers],
                "clock_error_us": m.clock.error_us, "clock": m.clock.describe(),
                "manifest_sha256": m.digest.hex()}


@dataclass
class VerifyReport:
    segments: list[VerifiedSegment] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    audit_logs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.segments or self.audit_logs)

    def to_json(self) -> dict:
        return {"ok": self.ok, "segments": [s.summary() for s in self.segments],
                "problems": [asdict(p) for p in self.problems], "audit_logs": self.audit_logs}


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest file (FormatError on anything malformed or oversized)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_FILE + 1)
    except OSError as exc:
        raise FormatError(f"{path.name}: cannot read manifest ({exc.strerror})") from None
    if len(data) > MAX_MANIFEST_FILE:
        raise FormatError(f"{path.name}: manifest file too large")
    return Manifest.parse(data, path.name)


def trusted_keys(device_key: TrustedKeys) -> list[ed25519.Ed25519PublicKey]:
    """One key, a DeviceKey (current + retired keys) or several keys, as a list."""
    if device_key is None:
        return []
    if isinstance(device_key, ed25519.Ed25519PublicKey):
        return [device_key]
    if isinstance(device_key, DeviceKey):
        return list(device_key.all)
    return list(device_key)


def check_manifest(manifest: Manifest, name: str, device_key: TrustedKeys,
                   device_id: str | None = None) -> list[Problem]:
    """Origin and signature of one manifest, against the device's trusted key(s)."""
    by_fp = {sha256(keys.raw_public(k)): k for k in trusted_keys(device_key)}
    if device_id is not None and manifest.device_id != device_id:
        return [Problem(name, None, f"from another device: manifest says device {manifest.device_id!r}, "
                                    f"expected {device_id!r}")]
    if manifest.device_key_fp not in by_fp:
        trusted = ", ".join(fp.hex()[:16] for fp in by_fp)
        return [Problem(name, None, f"signed by another key: manifest names key {manifest.device_key_fp.hex()[:16]}, "
                                    f"device key is {trusted}")]
    device_key = by_fp[manifest.device_key_fp]
    try:
        device_key.verify(manifest.signature, manifest.signed_bytes())
    except InvalidSignature:
        return [Problem(name, None, "manifest signature invalid: manifest altered or re-signed with another key")]
    return []


def check_segment_file(path: Path, manifest: Manifest) -> list[Problem]:
    """Header digest, every chunk digest, order, final chunk and truncation against a verified manifest."""
    name, problems = path.name, []
    if path.stem != segment_stem(manifest.segment_seq):
        problems.append(Problem(name, None, f"misplaced: file name says {path.stem} but its manifest is "
                                            f"sequence {manifest.segment_seq} (segments renamed or swapped)"))
    expected = manifest.chunk_digests
    try:
        with open(path, "rb") as f:
            header, raw = read_header(f, name)
            if sha256(raw) != manifest.header_digest:
                fields = [k for k, a, b in (("segment_seq", header.segment_seq, manifest.segment_seq),
                                            ("recording_id", header.recording_id, manifest.recording_id),
                                            ("index", header.index, manifest.index),
                                            ("device_id", header.device_id, manifest.device_id)) if a != b]
                problems.append(Problem(name, None, "header altered: its SHA-256 differs from the signed manifest"
                                        + (f" ({', '.join(fields)} changed)" if fields else "")))
            count = 0
            try:
                for record in iter_records(f, len(raw), name):
                    count += 1
                    problems.extend(_check_record(name, record, expected, manifest.recovered))
            except TornRecordError as exc:
                return problems + [Problem(name, exc.chunk, f"truncated: torn chunk record at byte {exc.good_end}; "
                                                            f"{count} of {len(expected)} chunks complete")]
    except FormatError as exc:
        return problems + [Problem(name, None, str(exc))]
    except OSError as exc:
        return problems + [Problem(name, None, f"cannot read: {exc.strerror}")]
    if count < len(expected):
        problems.append(Problem(name, count, f"truncated: {count} of {len(expected)} chunks present"))
    elif count > len(expected):
        problems.append(Problem(name, len(expected), f"{count - len(expected)} chunk(s) not in the signed manifest"))
    return problems


def _check_record(name: str, record, expected: tuple[bytes, ...], recovered: bool) -> list[Problem]:
    i = record.index
    if i >= len(expected):
        return []
    if record.digest != expected[i]:
        if record.digest in expected:
            j = expected.index(record.digest)
            return [Problem(name, i, f"out of order: this is chunk {j} of the signed manifest (chunks reordered)")]
        return [Problem(name, i, "ciphertext altered: SHA-256 does not match the signed manifest")]
    if record.stored_digest != record.digest:
        return [Problem(name, i, "record digest field altered")]
    last = i == len(expected) - 1
    if record.meta.final and not last:
        return [Problem(name, i, "final-chunk flag wrong: chunk marked final before the end")]
    if last and not record.meta.final and not recovered:
        return [Problem(name, i, "final-chunk flag wrong: sealed segment does not end in its final chunk")]
    return []


def verify_segment(path: Path, device_key: TrustedKeys = None,
                   device_id: str | None = None) -> tuple[VerifiedSegment | None, list[Problem]]:
    """Verify one ``.seg`` file against the ``.manifest`` beside it.

    ``device_key``: the device's public key, or several (keys retired by re-provisioning
    stay valid for what they signed); None to use the key found beside the evidence.
    """
    path = Path(path)
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
    return seg, check_segment_file(path, manifest)


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
        recordings: dict[str, list[VerifiedSegment]] = {}
        for s in group:
            recordings.setdefault(s.manifest.recording_id, []).append(s)
        for rec, segs in recordings.items():
            for prev, cur in zip(segs, segs[1:]):
                if cur.manifest.index not in (prev.manifest.index, prev.manifest.index + 1):
                    problems.append(Problem(Path(cur.path).name, None,
                                            f"recording {rec}: segment index jumps from {prev.manifest.index} "
                                            f"to {cur.manifest.index}"))
    return problems


def verify_path(path: Path, device_key: TrustedKeys = None) -> VerifyReport:
    """Verify a segment file, a directory of segments, or a whole tree."""
    path = Path(path)
    report = VerifyReport()
    if path.is_file():
        seg_files = [path.with_suffix(SEGMENT_SUFFIX)] if path.suffix in (SEGMENT_SUFFIX, MANIFEST_SUFFIX) else []
        if not seg_files:
            report.problems.append(Problem(path.name, None, "not a segment or manifest file"))
            return report
        orphans: list[Path] = []
    elif path.is_dir():
        seg_files = sorted(p for p in path.rglob("*" + SEGMENT_SUFFIX) if not p.name.startswith("."))
        orphans = sorted(m.with_suffix(SEGMENT_SUFFIX) for m in path.rglob("*" + MANIFEST_SUFFIX)
                         if not m.name.startswith(".") and not m.with_suffix(SEGMENT_SUFFIX).exists())
    else:
        raise VerifyError(f"{path}: no such file or directory")
    for seg_path in seg_files + orphans:
        seg, problems = verify_segment(seg_path, device_key)
        if seg:
            report.segments.append(seg)
        report.problems.extend(problems)
    report.problems.extend(check_chain(report.segments))
    if path.is_dir():
        _verify_audit_logs(path, device_key, report)
    return report


def _verify_audit_logs(root: Path, device_key, report: VerifyReport) -> None:
    audit_dirs = [d for d in [root, *root.rglob("audit")] if d.is_dir() and d.name == "audit"]
    if not audit_dirs:
        return
    try:
        from secure_store.audit_verify import verify_audit
    except ImportError:
        report.problems.append(Problem(str(audit_dirs[0]), None, "audit log found but audit verifier unavailable"))
        return
    for d in audit_dirs:
        key = trusted_keys(device_key)
        if not key:
            try:
                found = find_device_key(d)
            except FormatError:
                found = None
            key = list(found.all) if found else []
        if not key:
            report.problems.append(Problem(str(d), None, "no device public key for this audit log"))
            continue
        report.audit_logs.append(str(d))
        problems = verify_audit(d, key)
        for problem in problems:
            report.problems.append(Problem(str(d), None, f"audit log: {problem}"))
        if not problems:
            report.problems.extend(_check_against_audit(d, key, report.segments))


def _check_against_audit(audit_dir: Path, key: list[ed25519.Ed25519PublicKey],
                         segments: list[VerifiedSegment]) -> list[Problem]:
    """Every segment the (verified) audit log says was sealed and never released must be here.

    This is what catches the deletion of a device's newest segments, which the chain alone cannot.
    """
    from secure_store.audit import read_entries

    fps = {sha256(keys.raw_public(k)).hex() for k in key}
    present = {s.manifest.segment_seq: s.manifest.digest.hex() for s in segments if s.device_key_fp in fps}
    sealed: dict[int, str] = {}
    released: set[str] = set()
    for entry in read_entries(audit_dir):
        if entry.event == "segment_sealed" and isinstance(entry.details.get("seq"), int):
            sealed[entry.details["seq"]] = str(entry.details.get("manifest_sha256"))
        elif entry.event == "delete":
            released.add(str(entry.details.get("segment")))
    problems = []
    for seq, digest in sorted(sealed.items()):
        name = segment_stem(seq)
        if seq not in present and name not in released:
            problems.append(Problem(name + SEGMENT_SUFFIX, None, "missing: the audit log records this segment as "
                                                                 "sealed and never released"))
        elif seq in present and present[seq] != digest:
            problems.append(Problem(name + MANIFEST_SUFFIX, None, "manifest differs from the one the audit log "
                                                                  "recorded when it was sealed"))
    return problems


def decrypt_chunks(segment: Path, agency_private_key: x25519.X25519PrivateKey,
                   device_key: TrustedKeys = None) -> Iterator[bytes]:
    """Verify a segment, then yield each chunk's plaintext (recorder.chunk format) in order.

    Raises VerifyError before yielding anything if the segment does not verify,
    and if any chunk fails to authenticate while decrypting.
    """
    segment = Path(segment)
    verified, problems = verify_segment(segment, device_key)
    if problems or verified is None:
        raise VerifyError("; ".join(str(p) for p in problems))
    expected = verified.manifest.chunk_digests
    with open(segment, "rb", buffering=0) as f:  # re-checked as it is read: the file may change after verification
        header, raw = read_header(f, segment.name)
        header_digest = sha256(raw)
        if header_digest != verified.manifest.header_digest:
            raise VerifyError(f"{segment.name}: header changed since it was verified")
        if header.agency_key_fp != sha256(keys.raw_public(agency_private_key.public_key())):
            raise VerifyError(f"{segment.name}: sealed to another agency key")
        aead = AESGCM(unwrap_data_key(header.wrapped_key, agency_private_key, segment.name))
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
