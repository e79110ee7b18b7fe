"""Hybrid audit entries (version 2: Ed25519 + ML-DSA-65): real files, real fsync, real ML-DSA.

Both signatures must verify, the envelope has one exact form, and a hybrid key's log can
neither be downgraded to classic entries nor read under a key without its ML-DSA-65 half.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from hypothesis import HealthCheck, given, settings, strategies as st

from secure_store import audit, hybrid, keys
from secure_store.audit import AuditHead, AuditLog, Event, read_entries
from secure_store.audit_format import MAX_LINE_BYTES, SIGNATURE_CONTEXT
from secure_store.audit_verify import verify_audit
from secure_store.errors import AuditError

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cam-0001"
CTX = SIGNATURE_CONTEXT
PQ_MARK = b'","sig_mldsa65":"'


@pytest.fixture(scope="module")
def hkey() -> hybrid.SigningKey:
    return hybrid.SigningKey.generate(True)


def make_log(directory: Path, key, n: int = 4, device: str = DEVICE) -> AuditLog:
    log = AuditLog(directory, key, device)
    for i in range(n):
        log.append(Event.MARKER, label=f"m{i}", at_us=i * 1000)
    return log


def file_lines(directory: Path) -> tuple[Path, list[bytes]]:
    (path,) = sorted(directory.glob("audit-*.log"))
    return path, path.read_bytes().split(b"\n")  # [header, entry 0, ..., b""]


def parts(line: bytes) -> tuple[bytes, bytes, bytes]:
    """(BODY, Ed25519 signature, ML-DSA-65 signature) of a version-2 line, sliced as FORMAT.md says."""
    assert line.endswith(b'"}') and line[-4431:-4414] == PQ_MARK and line[-4567:-4559] == b',"sig":"'
    return line[8:-4567], bytes.fromhex(line[-4559:-4431].decode()), base64.b64decode(line[-4414:-2])


def v2_line(body: bytes, ed_sig: bytes, pq_sig: bytes) -> bytes:
    return b'{"body":' + body + b',"sig":"' + ed_sig.hex().encode() + PQ_MARK + base64.b64encode(pq_sig) + b'"}'


def test_hybrid_round_trip_writes_version_2(tmp_path: Path, hkey) -> None:
    log = make_log(tmp_path, hkey, 3)
    log.append(Event.RECORD_START, recording="r1", note="naïve ✓")
    path, lines = file_lines(tmp_path)
    assert lines[0] == b'{"format":"bodycam-audit","version":1}' and lines[-1] == b""
    for n, line in enumerate(lines[1:-1]):
        body, ed_sig, pq_sig = parts(line)
        obj = json.loads(body)
        assert obj["v"] == 2 and obj["seq"] == n and audit.canonical_json(obj) == body
        assert len(pq_sig) == 3309 and len(line[-4414:-2]) == 4412
        hkey.ed25519.public_key().verify(ed_sig, CTX + body)  # both over the same bytes, same context
        hkey.mldsa65.public_key().verify(pq_sig, CTX + body)
    head = log.head()
    assert head == AuditHead(3, hashlib.sha256(lines[-2]).hexdigest())
    assert verify_audit(tmp_path, hkey.public_key(), device_id=DEVICE, anchor=head) == []
    assert [e.version for e in read_entries(tmp_path)] == [2, 2, 2, 2]
    # Reopened, the log continues the chain.
    AuditLog(tmp_path, hkey, DEVICE).append(Event.SHUTDOWN)
    assert verify_audit(tmp_path, hkey.public_key(), anchor=head) == []
    assert read_entries(tmp_path)[-1].prev == head.digest


def test_bad_mldsa_with_good_ed25519_fails_and_the_reverse(tmp_path: Path, hkey) -> None:
    make_log(tmp_path, hkey, 4)
    path, lines = file_lines(tmp_path)
    good = list(lines)
    body, ed_sig, pq_sig = parts(lines[2])  # entry 1
    other_pq = mldsa.MLDSA65PrivateKey.generate().sign(CTX + body)  # valid ML-DSA, wrong key
    lines[2] = v2_line(body, ed_sig, other_pq)
    path.write_bytes(b"\n".join(lines))
    assert verify_audit(tmp_path, hkey.public_key()) == [
        f"entry 1 ({path.name} line 3): bad ML-DSA-65 signature (altered, or not signed by this device's key)"]
    flipped = bytearray(pq_sig)
    flipped[100] ^= 1
    lines[2] = v2_line(body, ed_sig, bytes(flipped))
    path.write_bytes(b"\n".join(lines))
    assert "bad ML-DSA-65 signature" in verify_audit(tmp_path, hkey.public_key())[0]
    # The reverse: ML-DSA-65 good, Ed25519 by another key.
    other_ed = ed25519.Ed25519PrivateKey.generate().sign(CTX + body)
    lines = list(good)
    lines[2] = v2_line(body, other_ed, pq_sig)
    path.write_bytes(b"\n".join(lines))
    problems = verify_audit(tmp_path, hkey.public_key())
    assert problems[0] == f"entry 1 ({path.name} line 3): bad signature (altered, or not signed by this device's key)"
    path.write_bytes(b"\n".join(good))
    assert verify_audit(tmp_path, hkey.public_key()) == []


def test_stripped_pq_signature_never_passes(tmp_path: Path, hkey) -> None:
    make_log(tmp_path, hkey, 3)
    path, lines = file_lines(tmp_path)
    body, ed_sig, _ = parts(lines[2])
    # Stripped, v left at 2: the envelope no longer matches the version.
    lines[2] = b'{"body":' + body + b',"sig":"' + ed_sig.hex().encode() + b'"}'
    path.write_bytes(b"\n".join(lines))
    assert verify_audit(tmp_path, hkey.public_key())[0] == \
        f"{path.name} line 3: a version-2 entry without its ML-DSA-65 signature (sig_mldsa65)"
    # Stripped and v rewritten to 1: the Ed25519 signature no longer covers the body...
    obj = json.loads(body)
    obj["v"] = 1
    v1_body = audit.canonical_json(obj)
    lines[2] = b'{"body":' + v1_body + b',"sig":"' + ed_sig.hex().encode() + b'"}'
    path.write_bytes(b"\n".join(lines))
    assert "bad signature" in verify_audit(tmp_path, hkey.public_key())[0]
    # ...and even re-signed with the Ed25519 half alone (a stolen classic key), a classic
    # entry under a hybrid key is a downgrade.
    lines[2] = b'{"body":' + v1_body + b',"sig":"' + hkey.ed25519.sign(CTX + v1_body).hex().encode() + b'"}'
    path.write_bytes(b"\n".join(lines))
    assert verify_audit(tmp_path, hkey.public_key())[0] == (
        f"entry 1 ({path.name} line 3): classic-only signature from a hybrid key (ML-DSA-65 signature missing)")


def test_classic_log_under_a_hybrid_key_fails(tmp_path: Path, hkey) -> None:
    make_log(tmp_path, hkey.ed25519, 3)  # the same Ed25519 key, writing classic entries
    assert verify_audit(tmp_path, hkey.ed25519.public_key()) == []
    problems = verify_audit(tmp_path, hkey.public_key())
    assert len(problems) == 3 and all("classic-only signature from a hybrid key" in p for p in problems)
    # Given both forms of the key, the hybrid one wins: its ML-DSA-65 half is never dropped.
    assert verify_audit(tmp_path, [hkey.ed25519.public_key(), hkey.public_key()]) == problems
    assert verify_audit(tmp_path, [hkey.public_key(), hkey.ed25519.public_key()]) == problems


def test_hybrid_log_under_a_classic_only_key_fails(tmp_path: Path, hkey) -> None:
    make_log(tmp_path, hkey, 2)
    path, _ = file_lines(tmp_path)
    assert verify_audit(tmp_path, hkey.ed25519.public_key()) == [
        f"entry {n} ({path.name} line {n + 2}): hybrid entry, but no ML-DSA-65 key to check it" for n in range(2)]


def test_version_1_line_with_a_pq_signature_is_refused(tmp_path: Path, hkey) -> None:
    make_log(tmp_path, hkey.ed25519, 2)
    path, lines = file_lines(tmp_path)
    body = lines[2][8:-138]
    lines[2] = v2_line(body, hkey.ed25519.sign(CTX + body), hkey.mldsa65.sign(CTX + body))
    path.write_bytes(b"\n".join(lines))
    assert verify_audit(tmp_path, hkey.public_key())[0] == \
        f"{path.name} line 3: a version-1 entry with an ML-DSA-65 signature (only version 2 carries sig_mldsa65)"


@pytest.mark.parametrize("mangle, reason", [
    (lambda b64: b64.replace(b"+", b"-").replace(b"/", b"_"), "canonical base64"),   # URL-safe alphabet
    (lambda b64: b64[:-4] + b"AA==", "canonical base64"),                               # padding inside
    (lambda b64: b64[:-1], "bad envelope"),                                             # 4411 characters
    (lambda b64: b64 + b"A", "bad envelope"),                                           # 4413 characters
    (lambda b64: b64 + b"AAAA", "bad envelope"),                                        # 3312 bytes
    (lambda b64: b64[:-4] + b"\\u41", "canonical base64"),                              # an escape
    (lambda b64: b64[:2000] + b" " + b64[2001:], "canonical base64"),                   # whitespace
])
def test_pq_signature_has_exactly_one_encoding(tmp_path: Path, hkey, mangle, reason) -> None:
    make_log(tmp_path, hkey, 2)
    path, lines = file_lines(tmp_path)
    b64 = lines[2][-4414:-2]
    if b"+" not in b64 and b"/" not in b64 and "URL" in reason:
        pytest.skip("no + or / in this signature")
    lines[2] = lines[2][:-4414] + mangle(b64) + b'"}'
    path.write_bytes(b"\n".join(lines))
    problems = verify_audit(tmp_path, hkey.public_key())
    assert problems and problems[0].startswith(f"{path.name} line 3: ") and reason in problems[0]
    with pytest.raises(AuditError):
        read_entries(tmp_path)


def test_details_can_not_fake_the_hybrid_envelope(tmp_path: Path, hkey) -> None:
    """A classic entry whose details put `","sig_mldsa65":"` exactly where a version-2 line has it
    stays a classic entry: the 4412 bytes after it hold a `"` (FORMAT.md, "Entry line")."""
    def write(d: Path, n: int) -> bytes:
        log = AuditLog(d, hkey.ed25519, DEVICE, clock=lambda: 1700000000.5, monotonic_us=lambda: 1234)
        log.append(Event.MARKER, a="x", sig_mldsa65="A" * n)
        return file_lines(d)[1][1]

    probe = write(tmp_path / "probe", 5000)
    n = 5000 + probe.rindex(PQ_MARK) + 4431 - len(probe)  # the marker lands at offset len - 4431
    line = write(tmp_path / "aligned", n)
    assert line[-4431:-4414] == PQ_MARK and line[-131:-130] == b'"'
    assert verify_audit(tmp_path / "aligned", hkey.ed25519.public_key()) == []
    (entry,) = read_entries(tmp_path / "aligned")
    assert entry.version == 1 and entry.details["sig_mldsa65"] == "A" * n


def test_hand_over_classic_to_hybrid_and_back(tmp_path: Path, hkey) -> None:
    classic = ed25519.Ed25519PrivateKey.generate()
    log = make_log(tmp_path, classic, 2)
    log.append(Event.PROVISION, action="reprovision_begin", device_key=keys.fingerprint(hkey.public_key()),
               device_id="cam-0002")
    make_log(tmp_path, hkey, 2, device="cam-0002")  # entries 3, 4: version 2 under the hybrid key
    back = ed25519.Ed25519PrivateKey.generate()
    AuditLog(tmp_path, hkey, "cam-0002").append(Event.PROVISION, action="reprovision_begin",
                                                device_key=keys.fingerprint(back.public_key()), device_id="cam-0003")
    make_log(tmp_path, back, 2, device="cam-0003")  # entries 6, 7: classic again
    assert [e.version for e in read_entries(tmp_path)] == [1, 1, 1, 2, 2, 2, 1, 1]
    trusted = [classic.public_key(), hkey.public_key(), back.public_key()]
    assert verify_audit(tmp_path, trusted) == []
    # The middle key given without its ML-DSA-65 half: its entries cannot be checked.
    problems = verify_audit(tmp_path, [classic.public_key(), hkey.ed25519.public_key(), back.public_key()])
    pq = [p for p in problems if "no ML-DSA-65 key to check it" in p]
    assert [p.split(" (")[0] for p in pq] == ["entry 3", "entry 4", "entry 5"]
    assert problems[0] == pq[0]  # (and the hand-over at entry 5 that did not verify is not followed)
    # The retired hybrid key can not write after its hand-over.
    AuditLog(tmp_path, hkey, "cam-0003").append(Event.MARKER, label="forged with the retired key")
    problems = verify_audit(tmp_path, trusted)
    assert len(problems) == 1 and problems[0].startswith("entry 8 (") and "bad signature" in problems[0]


def test_a_hand_over_to_a_hybrid_key_commits_to_its_ml_dsa_half(tmp_path: Path, hkey) -> None:
    """The old key's signed hand-over names the new key's ML-DSA-65 key: it cannot later pass as classic."""
    classic = ed25519.Ed25519PrivateKey.generate()
    log = make_log(tmp_path, classic, 1)
    new = hkey.public_key()
    log.append(Event.PROVISION, action="reprovision_begin", device_key=keys.fingerprint(new),
               device_key_mldsa65=new.mldsa65_fingerprint(), device_id=DEVICE)
    make_log(tmp_path, hkey, 2)
    assert verify_audit(tmp_path, [classic.public_key(), new]) == []
    # The new key given as classic: the hand-over itself says it is hybrid.
    problems = verify_audit(tmp_path, [classic.public_key(), new.ed25519])
    assert any(p.startswith("entry 1: hands the log over to a hybrid key") for p in problems)
    assert (f"entry 1: hands the log over to a hybrid key (ML-DSA-65 {new.mldsa65_fingerprint()[:16]}) "
            f"that the given key {keys.fingerprint(new)[:16]} is not") in problems  # both named, 16 digits each
    # A hybrid key with another ML-DSA-65 half under the same Ed25519 key: refused too.
    other = hybrid.VerifyKey(new.ed25519, mldsa.MLDSA65PrivateKey.generate().public_key())
    problems = verify_audit(tmp_path, [classic.public_key(), other])
    assert any(p.startswith("entry 1: hands the log over to a hybrid key") for p in problems)


def test_torn_hybrid_line_is_recovered(tmp_path: Path, hkey) -> None:
    make_log(tmp_path, hkey, 3)
    path, lines = file_lines(tmp_path)
    whole = path.read_bytes()
    # Cut inside the ML-DSA-65 signature: the torn entry is dropped and logged.
    path.write_bytes(whole[:-2000])
    log = AuditLog(tmp_path, hkey, DEVICE)
    entries = read_entries(tmp_path)
    assert [e.seq for e in entries] == [0, 1, 2] and entries[2].event == Event.POWER_RECOVERY
    assert entries[2].details["dropped_bytes"] == len(lines[3]) + 1 - 2000
    assert entries[2].details["dropped_sha256"] == hashlib.sha256(lines[3][:-1999]).hexdigest()
    assert verify_audit(tmp_path, hkey.public_key(), anchor=log.head()) == []
    # Only the line feed missing: the whole entry is kept.
    before = path.read_bytes()
    path.write_bytes(before[:-1])
    AuditLog(tmp_path, hkey, DEVICE)
    assert path.read_bytes() == before
    assert verify_audit(tmp_path, hkey.public_key()) == []


def test_hybrid_entries_still_fit_max_line_bytes(tmp_path: Path, hkey) -> None:
    log = AuditLog(tmp_path, hkey, DEVICE)
    log.append(Event.MARKER, note="x" * 50_000)
    path, lines = file_lines(tmp_path)
    assert 50_000 < len(lines[1]) <= MAX_LINE_BYTES
    with pytest.raises(AuditError, match="longer than"):
        log.append(Event.MARKER, note="x" * (MAX_LINE_BYTES - 4600))
    assert verify_audit(tmp_path, hkey.public_key()) == []


def _vector_key() -> hybrid.SigningKey:
    return hybrid.SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
                             mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(range(0x20, 0x40))))


def test_spec_hybrid_vector() -> None:
    """The hybrid audit vector in docs/FORMAT.md: its key, its file, its verdicts."""
    text = (ROOT / "docs" / "FORMAT.md").read_text()
    block = text.split("<!-- audit-hybrid-vector -->", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    key = _vector_key()
    pq_pub = key.mldsa65.public_key().public_bytes_raw()
    assert hashlib.sha256(pq_pub).hexdigest() in text  # the ML-DSA-65 public key the vector names
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "audit-000000000000.log").write_text(block)
        assert verify_audit(d, key.public_key(), device_id="cam-0001") == []
        entries = read_entries(d)
        assert [(e.seq, e.event, e.version) for e in entries] == [(0, "boot", 2), (1, "marker", 2)]
        after = text.split("<!-- audit-hybrid-vector -->", 1)[1].split("```", 2)[2]
        digests = re.findall(r"(\d) → `([0-9a-f]{64})`", after[:400])
        assert [(int(s), d_) for s, d_ in digests[:2]] == [(e.seq, e.digest) for e in entries]
        assert verify_audit(d, key.ed25519.public_key())[0].endswith("hybrid entry, but no ML-DSA-65 key to check it")
        other = hybrid.VerifyKey(key.ed25519.public_key(), mldsa.MLDSA65PrivateKey.generate().public_key())
        assert "bad ML-DSA-65 signature" in verify_audit(d, other)[0]


@pytest.fixture(scope="module")
def v2_log(tmp_path_factory, hkey) -> bytes:
    d = tmp_path_factory.mktemp("v2log")
    make_log(d, hkey, 2)
    return file_lines(d)[0].read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.integers(min_value=39, max_value=10_000), xor=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_of_a_hybrid_entry_fails(v2_log: bytes, hkey, where: int, xor: int) -> None:
    """Flip any byte after the header of a two-entry hybrid log: it never verifies."""
    data = bytearray(v2_log)
    where %= len(data)
    where = max(where, 39)
    data[where] ^= xor
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "audit-000000000000.log").write_bytes(bytes(data))
        assert verify_audit(Path(tmp), hkey.public_key()) != []
