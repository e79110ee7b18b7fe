"""One test per loophole of issue 12: each tampering, even when re-signed with the genuine key, fails for its own reason.

The attacker here often holds the device key (a defence expert's worst case, or a battery
built with it): what is signed must still be consistent with everything around it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import struct
from pathlib import Path

import pytest

from secure_store import keys
from secure_store.audit_format import BODY_PREFIX, SIG_PREFIX, SIGNATURE_CONTEXT, SUFFIX, AuditHead
from secure_store.format import RECORD_META, Manifest, iter_records, read_header
from secure_store.receipts import write_receipt
from secure_store.trust import identity_json
from secure_store.verify import verify_path

SEG, MAN = "seg-{:010d}.seg", "seg-{:010d}.manifest"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, keyset, h) -> Path:
    root = h.provision_root(tmp_path_factory.mktemp("loop") / "device", keyset)
    store = h.open_store(root, keyset)
    h.record(store, "rec-1", segments=3, chunks=3)
    return root.root


@pytest.fixture
def case(pristine, tmp_path) -> Path:
    target = tmp_path / "case"
    shutil.copytree(pristine, target, ignore=shutil.ignore_patterns("keys"))
    return target


def reasons(tree: Path, **kw) -> list[str]:
    report = verify_path(tree, **kw)
    assert not report.ok
    return [p.reason for p in report.problems]


def only(tree: Path, words: str, **kw) -> None:
    found = reasons(tree, **kw)
    assert len(found) == 1 and words in found[0], found


def resign(path: Path, key, **changes) -> Manifest:
    m = Manifest.parse(path.read_bytes())
    m = dataclasses.replace(m, signature=b"", **changes)
    m = dataclasses.replace(m, signature=key.sign(m.signed_bytes()))
    path.write_bytes(m.encode())
    return m


def audit_lines(case: Path) -> tuple[Path, list[bytes]]:
    path = next((case / "audit").glob("audit-*.log"))
    return path, path.read_bytes().split(b"\n")


def sign_line(body: bytes, key) -> bytes:
    return BODY_PREFIX + body + SIG_PREFIX + key.sign(SIGNATURE_CONTEXT + body).hex().encode() + SUFFIX


def replace_last_entry_body(case: Path, key, edit) -> None:
    """Re-sign the newest entry with ``edit(body bytes)`` applied (nothing chains to it)."""
    path, lines = audit_lines(case)
    last = lines[-2]
    body = last[len(BODY_PREFIX):-(len(SIG_PREFIX) + 128 + len(SUFFIX))]
    lines[-2] = sign_line(edit(body), key)
    path.write_bytes(b"\n".join(lines))


# --- key-less truncation -----------------------------------------------------------------------

def test_pristine_verifies(case) -> None:
    report = verify_path(case)
    assert report.ok and len(report.segments) == 3 and not report.anchored
    assert any("not anchored" in w.reason for w in report.warnings)


def test_newest_segment_and_manifest_deleted(case) -> None:
    for pattern in (SEG, MAN):
        (case / "evidence" / pattern.format(3)).unlink()
    only(case, "missing: the audit log records this segment as sealed and never released")


def test_audit_directory_deleted(case) -> None:
    shutil.rmtree(case / "audit")
    only(case, "no audit log, but 3 sealed segment(s)")


def test_newest_segment_and_audit_deleted(case) -> None:
    for pattern in (SEG, MAN):
        (case / "evidence" / pattern.format(3)).unlink()
    shutil.rmtree(case / "audit")
    only(case, "no audit log, but 2 sealed segment(s)")


def test_audit_cut_before_a_present_segment(case) -> None:
    path, lines = audit_lines(case)
    cut = next(i for i, line in enumerate(lines) if b'"seq":3' in line and b"segment_sealed" in line)
    path.write_bytes(b"\n".join(lines[:cut]) + b"\n")
    only(case, "not in the audit log: no segment_sealed entry names it")


# --- the trust root beside the evidence --------------------------------------------------------

def test_resigned_with_swapped_identity_but_headers_name_the_real_key(case, keyset) -> None:
    attacker = keyset.other_device
    fp = hashlib.sha256(keys.raw_public(attacker.public_key())).digest()
    prev = bytes(32)
    for seq in (1, 2, 3):
        prev = resign(case / "evidence" / MAN.format(seq), attacker, device_key_fp=fp, prev_digest=prev).digest
    shutil.rmtree(case / "audit")
    (case / "identity.json").write_bytes(identity_json("CAM-0001", attacker.public_key()))
    found = reasons(case)
    assert sum("header and manifest disagree on device_key_fp" in r for r in found) == 3, found


# --- signed fields checked against each other --------------------------------------------------

@pytest.mark.parametrize("change, words", [
    ({"frame_count": 14}, "manifest says 14 frames, its chunks hold 15"),
    ({"last_ts_us": "+1", "last_utc_us": None}, "first/last timestamp differs from its chunks'"),
    ({"first_utc_us": 1}, "first/last UTC is not timestamp + UTC offset"),
    ({"clock_source": "forged"}, "header and manifest disagree on clock_source"),
    ({"utc_offset_us": 7, "first_utc_us": None, "last_utc_us": None}, "header and manifest disagree on utc_offset_us"),
])
def test_signed_but_inconsistent_manifest(case, keyset, change, words) -> None:
    path = case / "evidence" / MAN.format(3)
    m = Manifest.parse(path.read_bytes())
    change = {k: getattr(m, k) + 1 if v == "+1" else v for k, v in change.items()}
    offset = change.get("utc_offset_us", m.utc_offset_us)
    for k, ts in (("first_utc_us", "first_ts_us"), ("last_utc_us", "last_ts_us")):
        if change.get(k, 0) is None:
            change[k] = change.get(ts, getattr(m, ts)) + offset
    resign(path, keyset.device, **change)
    replace_sealed_digest(case, keyset.device, 3, path)
    found = reasons(case)
    assert any(words in r for r in found), found


def replace_sealed_digest(case: Path, key, seq: int, manifest: Path) -> None:
    """Point the (newest) segment_sealed entry for ``seq`` at the re-signed manifest, re-signed."""
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest().encode()
    path, lines = audit_lines(case)
    name = f'"segment":"seg-{seq:010d}"'.encode()
    i = max(j for j, line in enumerate(lines) if b"segment_sealed" in line and name in line)
    assert i == len(lines) - 2  # the newest entry: nothing chains to it
    import re
    body = lines[i][len(BODY_PREFIX):-(len(SIG_PREFIX) + 128 + len(SUFFIX))]
    lines[i] = sign_line(re.sub(rb'"manifest_sha256":"[0-9a-f]{64}"', b'"manifest_sha256":"' + digest + b'"', body), key)
    path.write_bytes(b"\n".join(lines))


def rewrite_record(case: Path, key, seq: int, index: int, meta_edit, plaintext_len: int | None = None) -> None:
    """Change one record's clear meta, fix its digests, re-sign the manifest (as a key holder could)."""
    seg = case / "evidence" / SEG.format(seq)
    data = bytearray(seg.read_bytes())
    with open(seg, "rb") as f:
        _, raw = read_header(f)
        recs = list(iter_records(f, len(raw)))
    r = recs[index]
    flags, frames, first, last = RECORD_META.unpack(r.meta.encode())
    new_body = RECORD_META.pack(*meta_edit(flags, frames, first, last)) + r.ciphertext
    if plaintext_len is not None:
        new_body += bytes(plaintext_len)
    new_record = struct.pack(">I", len(new_body)) + new_body + hashlib.sha256(new_body).digest()
    end = r.offset + 4 + len(r.body) + 32
    data[r.offset:end] = new_record
    seg.write_bytes(bytes(data))
    man = case / "evidence" / MAN.format(seq)
    digests = list(Manifest.parse(man.read_bytes()).chunk_digests)
    digests[index] = hashlib.sha256(new_body).digest()
    resign(man, key, chunk_digests=tuple(digests))
    replace_sealed_digest(case, key, seq, man)


def test_final_chunk_not_empty(case, keyset) -> None:
    rewrite_record(case, keyset.device, 3, 3, lambda fl, n, a, b: (fl, n, a, b), plaintext_len=5)
    only(case, "final chunk is not empty")


def test_final_chunk_mistimed(case, keyset) -> None:
    rewrite_record(case, keyset.device, 3, 3, lambda fl, n, a, b: (fl, n, a - 1, b - 1))
    only(case, "final chunk's timestamps are not the segment's last timestamp")


def test_zero_frame_gop_chunk(case, keyset) -> None:
    path = case / "evidence" / MAN.format(3)
    frames = Manifest.parse(path.read_bytes()).frame_count
    rewrite_record(case, keyset.device, 3, 1, lambda fl, n, a, b: (fl, 0, a, b))
    found = reasons(case)  # the manifest's total (signed before) no longer adds up either
    assert found == ["a GOP chunk with no frames", f"manifest says {frames} frames, its chunks hold {frames - 5}"]


# --- strict audit JSON ---------------------------------------------------------------------

@pytest.mark.parametrize("edit, words", [
    (lambda b: b.replace(b'"event":"segment_sealed"', b'"event":"segment_sealed","event":"boot"'), "repeated"),
    (lambda b: b.replace(b'"v":1', b'"v":true'), "unknown audit entry version"),
    (lambda b: b[:b.index(b'"utc":"') + 7] + b"2026-13-01" + b[b.index(b'"utc":"') + 17:], "is not a UTC time"),
    (lambda b: b.replace(b'"event":"segment_sealed"', b'"event":"Segment_sealed"'), "is not [a-z]"),
    (lambda b: b.replace(b'"device":"CAM-0001"', '"device":"CAM-000\u00e9"'.encode()), "only printable ASCII"),
    (lambda b: b.replace(b'"v":1', b'"v":1.0'), "non-integer number"),
    (lambda b: b.replace(b',"event"', b', "event"'), "canonical JSON"),
])
def test_audit_json_strictness(case, keyset, edit, words) -> None:
    replace_last_entry_body(case, keyset.device, edit)
    found = reasons(case)
    assert any(words in r for r in found), found


def test_audit_unknown_event_is_a_warning_not_a_failure(tmp_path, keyset, h) -> None:
    root = h.provision_root(tmp_path / "device", keyset)
    store = h.open_store(root, keyset)
    h.record(store, segments=1)
    store.audit.append("tripod_mounted", angle=12)
    report = verify_path(root.root)
    assert report.ok and any("tripod_mounted" in w.reason for w in report.warnings)


# --- anchors: receipts and --anchor ----------------------------------------------------------

def _head(case: Path) -> AuditHead:
    _, lines = audit_lines(case)
    import json
    return AuditHead(json.loads(lines[-2])["body"]["seq"], hashlib.sha256(lines[-2]).hexdigest())


def add_marker(case: Path, keyset) -> None:
    from secure_store.audit import AuditLog
    AuditLog(case / "audit", keyset.device, "CAM-0001").append("marker", label="door", timestamp_us=1)


def test_newest_audit_entries_dropped_after_a_pull(case, keyset) -> None:
    add_marker(case, keyset)
    dock = keys.generate("dock")
    head = _head(case)
    write_receipt(case, dock, "CAM-0001", keys.fingerprint(keyset.device.public_key()), "", tuple(head), [])
    assert verify_path(case).ok
    path, lines = audit_lines(case)
    path.write_bytes(b"\n".join(lines[:-2]) + b"\n")  # drop the newest entry
    only(case, f"anchors entry {head.seq}, but the log ends at entry {head.seq - 1}")


def test_anchor_given_on_the_command_line(case, keyset) -> None:
    add_marker(case, keyset)
    head = _head(case)
    assert verify_path(case, anchors=[head]).ok
    path, lines = audit_lines(case)
    path.write_bytes(b"\n".join(lines[:-2]) + b"\n")
    only(case, "entries removed", anchors=[head])


def test_segment_deleted_after_receipt_even_with_its_seal_released(case, keyset) -> None:
    dock = keys.generate("dock")
    digest = hashlib.sha256((case / "evidence" / MAN.format(2)).read_bytes()).hexdigest()
    write_receipt(case, dock, "CAM-0001", keys.fingerprint(keyset.device.public_key()), "", tuple(_head(case)),
                  [(2, digest)])
    assert verify_path(case).ok
    (case / "evidence" / MAN.format(2)).unlink()
    (case / "evidence" / SEG.format(2)).unlink()
    found = reasons(case)
    assert any("records that the dock received and confirmed it" in r for r in found), found


def test_receipt_removed_from_the_middle(case, keyset) -> None:
    dock = keys.generate("dock")
    fp = keys.fingerprint(keyset.device.public_key())
    for _ in range(3):
        write_receipt(case, dock, "CAM-0001", fp, "", tuple(_head(case)), [])
    (case / "receipts" / "receipt-000000000002.json").unlink()
    found = reasons(case)
    assert any("receipt(s) 2 missing" in r for r in found), found
