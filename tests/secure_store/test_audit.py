"""The audit log: real files, real fsync, real Ed25519; every kind of tampering named."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, strategies as st

from secure_store import audit, audit_format
from secure_store.audit import AuditHead, AuditLog, Event, read_entries
from secure_store.audit_verify import verify_audit
from secure_store.errors import AuditError, StoreError

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cam-0001"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def make_log(directory: Path, key: Ed25519PrivateKey, n: int = 6, **kw) -> AuditLog:
    log = AuditLog(directory, key, DEVICE, **kw)
    for i in range(n):
        log.append(Event.MARKER, label=f"m{i}", at_us=i * 1000)
    return log


def only_file(directory: Path) -> Path:
    (path,) = sorted(directory.glob("audit-*.log"))
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")  # [header, entry 0, ..., b""]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines))


def test_round_trip_reopen_and_head(tmp_path: Path, key) -> None:
    log = make_log(tmp_path, key, 5)
    log.append(Event.RECORD_START, recording="r1", utc_offset_s=0.25, note="naïve ✓")
    head = log.head()
    assert head.seq == 5
    assert verify_audit(tmp_path, key.public_key(), device_id=DEVICE, anchor=head) == []

    again = AuditLog(tmp_path, key, DEVICE)  # a reboot continues the same chain
    assert again.head() == head
    again.append(Event.BOOT)
    entries = read_entries(tmp_path)
    assert [e.seq for e in entries] == list(range(7))
    assert [e.event for e in entries] == ["marker"] * 5 + ["record_start", "boot"]
    assert entries[2].details == {"label": "m2", "at_us": 2000}
    assert entries[5].details["note"] == "naïve ✓"
    assert entries[0].prev == audit.ZERO_DIGEST
    assert all(b.prev == a.digest for a, b in zip(entries, entries[1:]))
    assert entries[-1].digest == again.head().digest
    assert verify_audit(tmp_path, key.public_key(), device_id=DEVICE, anchor=head) == []


def test_byte_format_matches_spec(tmp_path: Path, key) -> None:
    clock = lambda: 1_700_000_000.5  # noqa: E731
    AuditLog(tmp_path, key, DEVICE, clock=clock).append(Event.MARKER, label="é")
    header, line, end = lines_of(only_file(tmp_path))
    assert header == b'{"format":"bodycam-audit","version":1}' and end == b""
    assert line.startswith(b'{"body":{"details":{"label":"\\u00e9"},"device":"cam-0001","event":"marker","mono_us":')
    body, sig = line[len(b'{"body":'):-len(b',"sig":"') - 130], line[-130:-2]
    assert line.endswith(b'"}') and line[-138:-130] == b',"sig":"'
    obj = json.loads(body)
    assert obj["utc"] == "2023-11-14T22:13:20.500000Z" and obj["seq"] == 0 and obj["v"] == 1
    assert audit.canonical_json(obj) == body
    key.public_key().verify(bytes.fromhex(sig.decode()), b"bodycam-audit-v1\x00" + body)  # raises if wrong
    assert AuditLog(tmp_path, key, DEVICE).head() == AuditHead(0, hashlib.sha256(line).hexdigest())


def test_spec_test_vector(tmp_path: Path) -> None:
    """The audit test vector in docs/FORMAT.md is what the code writes, byte for byte."""
    docs = [ROOT / "docs" / "FORMAT.md", ROOT / "docs" / "FORMAT-audit.md"]
    text = next(p.read_text() for p in docs if p.exists() and "<!-- audit-vector -->" in p.read_text())
    block = text.split("<!-- audit-vector -->", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    seed = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    clocks, monos = iter([1700000000.5, 1700000001.25]), iter([1234, 2000234])
    log = AuditLog(tmp_path, seed, "cam-0001", clock=lambda: next(clocks), monotonic_us=lambda: next(monos))
    log.append(Event.BOOT, reason="power_on")
    log.append(Event.MARKER, label="door", timestamp_us=2000000)
    assert (tmp_path / "audit-000000000000.log").read_text() == block
    assert log.head() == AuditHead(1, "a1e7547892abef3d2d1d2c24f8414deb28ffbed93bb3070956fb8cc026a37c1f")
    assert "a1e7547892abef3d2d1d2c24f8414deb28ffbed93bb3070956fb8cc026a37c1f" in text


def test_rotation_chains_across_files(tmp_path: Path, key) -> None:
    make_log(tmp_path, key, 12, max_file_bytes=1500)
    files = sorted(p.name for p in tmp_path.glob("audit-*.log"))
    assert len(files) >= 3 and files[0] == "audit-000000000000.log"
    assert verify_audit(tmp_path, key.public_key()) == []
    middle = tmp_path / files[1]
    first_seq = int(files[1][6:18])
    count = len(lines_of(middle)) - 2
    middle.unlink()
    problems = verify_audit(tmp_path, key.public_key())
    want = f"entry {first_seq}" if count == 1 else f"entries {first_seq}-{first_seq + count - 1}"
    assert problems == [f"{want} missing (removed)"]


def test_altered_entry_is_named(tmp_path: Path, key) -> None:
    make_log(tmp_path, key)
    path = only_file(tmp_path)
    lines = lines_of(path)
    lines[4] = lines[4].replace(b'"label":"m3"', b'"label":"m9"')
    write_lines(path, lines)
    problems = verify_audit(tmp_path, key.public_key())
    assert len(problems) == 1 and problems[0].startswith("entry 3 (") and "bad signature" in problems[0]


def test_removed_middle_entry_is_named(tmp_path: Path, key) -> None:
    make_log(tmp_path, key)
    path = only_file(tmp_path)
    lines = lines_of(path)
    del lines[3]  # entry 2
    write_lines(path, lines)
    assert verify_audit(tmp_path, key.public_key()) == ["entry 2 missing (removed)"]


def test_removed_first_entries_are_named(tmp_path: Path, key) -> None:
    make_log(tmp_path, key)
    path = only_file(tmp_path)
    lines = lines_of(path)
    del lines[1:3]  # entries 0 and 1
    write_lines(path, lines)
    problems = verify_audit(tmp_path, key.public_key())
    assert "entries 0-1 missing (removed)" in problems


def test_removed_tail_needs_an_anchor(tmp_path: Path, key) -> None:
    log = make_log(tmp_path, key)
    anchor = log.head()
    path = only_file(tmp_path)
    lines = lines_of(path)
    write_lines(path, lines[:-3] + [b""])  # entries 4 and 5 removed
    # The limit, stated honestly: the log alone cannot show its newest entries are gone ...
    assert verify_audit(tmp_path, key.public_key()) == []
    # ... but a head recorded earlier (by a manifest or a dock) can.
    assert verify_audit(tmp_path, key.public_key(), anchor=anchor) == [
        "log ends at entry 3 but entry 5 was recorded (newest entries removed)"]


def test_reordered_entries_are_named(tmp_path: Path, key) -> None:
    make_log(tmp_path, key)
    path = only_file(tmp_path)
    lines = lines_of(path)
    lines[4], lines[5] = lines[5], lines[4]  # entries 3 and 4
    write_lines(path, lines)
    assert verify_audit(tmp_path, key.public_key()) == ["entry 3: out of order (appears after entry 4)"]


def test_duplicated_entry_is_named(tmp_path: Path, key) -> None:
    make_log(tmp_path, key)
    path = only_file(tmp_path)
    lines = lines_of(path)
    lines.insert(5, lines[2])  # entry 1 again
    write_lines(path, lines)
    assert verify_audit(tmp_path, key.public_key()) == ["entry 1: duplicated"]


def test_other_key_and_other_device_are_named(tmp_path: Path, key) -> None:
    make_log(tmp_path, key, 3)
    other = Ed25519PrivateKey.generate()
    assert verify_audit(tmp_path, other.public_key()) == [
        "no entry is signed by the given device key (3 checked: wrong key, or the whole log re-signed)"]
    assert verify_audit(tmp_path, key.public_key(), device_id="cam-0002") == [
        "all 3 entries are from device 'cam-0001', not 'cam-0002'"]
    # One entry from another device (signed with the same key, e.g. a re-provisioned ID) is named.
    path = only_file(tmp_path)
    lines = lines_of(path)
    obj = json.loads(lines[2][len(b'{"body":'):-138])
    obj["device"] = "cam-0002"
    body = audit.canonical_json(obj)
    lines[2] = b'{"body":' + body + b',"sig":"' + key.sign(b"bodycam-audit-v1\x00" + body).hex().encode() + b'"}'
    write_lines(path, lines)
    assert verify_audit(tmp_path, key.public_key()) == [
        "entry 1: from device 'cam-0002', not 'cam-0001'",
        "entry 2: does not chain to entry 1 (previous-entry digest mismatch)"]


def test_entry_re_signed_by_another_key_is_caught(tmp_path: Path, key) -> None:
    """An attacker rewrites entry 2 and re-signs it (and re-chains) with a key of their own."""
    make_log(tmp_path, key, 4)
    path = only_file(tmp_path)
    lines = lines_of(path)
    attacker = Ed25519PrivateKey.generate()
    obj = json.loads(lines[3][len(b'{"body":'):-138])
    obj["details"]["label"] = "forged"
    body = audit.canonical_json(obj)
    sig = attacker.sign(b"bodycam-audit-v1\x00" + body).hex().encode()
    lines[3] = b'{"body":' + body + b',"sig":"' + sig + b'"}'
    write_lines(path, lines)
    problems = verify_audit(tmp_path, key.public_key())
    assert len(problems) == 1 and problems[0].startswith("entry 2 (") and "bad signature" in problems[0]


def test_validly_signed_fork_breaks_the_chain(tmp_path: Path, key) -> None:
    """Entries from a second log of the same device (same key) cannot be spliced in."""
    make_log(tmp_path / "a", key, 4)
    make_log(tmp_path / "b", key, 4)  # same seqs, different times
    a, b = only_file(tmp_path / "a"), only_file(tmp_path / "b")
    lines = lines_of(a)
    lines[3] = lines_of(b)[3]  # entry 2 from the other log
    write_lines(a, lines)
    assert verify_audit(tmp_path / "a", key.public_key()) == [
        "entry 2: does not chain to entry 1 (previous-entry digest mismatch)",
        "entry 3: does not chain to entry 2 (previous-entry digest mismatch)"]


def test_key_hand_over_is_followed(tmp_path: Path, key) -> None:
    """Re-provisioning: the old key signs a hand-over naming the new key; later entries use the new key."""
    from secure_store.keys import fingerprint
    new = Ed25519PrivateKey.generate()
    old_log = make_log(tmp_path, key, 3)
    old_log.append(Event.PROVISION, action="reprovision_begin", device_id="cam-0002",
                   device_key=fingerprint(new.public_key()))
    new_log = AuditLog(tmp_path, new, "cam-0002")
    new_log.append(Event.PROVISION, action="reprovision")
    new_log.append(Event.BOOT)
    old_pub, new_pub = key.public_key(), new.public_key()
    assert verify_audit(tmp_path, [old_pub, new_pub], device_id=DEVICE) == []
    assert verify_audit(tmp_path, [new_pub, old_pub]) == []
    fp = fingerprint(new_pub)[:16]
    assert verify_audit(tmp_path, new_pub) == [
        f"entries 0-3: not signed by any given key (before the hand-over to key {fp} at entry 3; give the retired key)"]
    only_old = verify_audit(tmp_path, old_pub)
    assert only_old[0] == f"entry 3: hands the log over to device key {fp}, which was not given"
    assert [p.split(" (")[0] for p in only_old[1:]] == ["entry 4", "entry 5"]
    # The retired key cannot write after the hand-over.
    AuditLog(tmp_path, key, "cam-0002").append(Event.MARKER, label="forged with the retired key")
    problems = verify_audit(tmp_path, [old_pub, new_pub])
    assert len(problems) == 1 and problems[0].startswith("entry 6 (") and "bad signature" in problems[0]


def test_unknown_versions_are_refused(tmp_path: Path, key) -> None:
    make_log(tmp_path, key, 2)
    path = only_file(tmp_path)
    lines = lines_of(path)
    obj = json.loads(lines[2][len(b'{"body":'):-138])
    for v, reason in ((2, "a version-2 entry without its ML-DSA-65 signature (sig_mldsa65)"),
                      (3, "unknown audit entry version 3")):  # 2 is hybrid (test_audit_hybrid.py)
        obj["v"] = v
        body = audit.canonical_json(obj)
        sig = key.sign(b"bodycam-audit-v1\x00" + body).hex().encode()
        lines[2] = b'{"body":' + body + b',"sig":"' + sig + b'"}'
        write_lines(path, lines)
        assert verify_audit(tmp_path, key.public_key()) == [f"{path.name} line 3: {reason}"]

    lines[0] = b'{"format":"bodycam-audit","version":2}'
    write_lines(path, lines)
    assert verify_audit(tmp_path, key.public_key()) == [f"{path.name}: unknown audit format version 2"]
    with pytest.raises(AuditError, match="unknown audit format version 2"):
        AuditLog(tmp_path, key, DEVICE)
    with pytest.raises(AuditError, match="unknown audit format version 2"):
        read_entries(tmp_path)


def test_torn_tail_is_recovered_and_logged(tmp_path: Path, key) -> None:
    make_log(tmp_path, key, 4)
    path = only_file(tmp_path)
    before = lines_of(path)
    spare = tmp_path / "spare"
    make_log(spare, key, 5)
    half = lines_of(only_file(spare))[5][:150]  # half a record, as a power cut leaves it
    with open(path, "ab") as f:
        f.write(half)
    problems = verify_audit(tmp_path, key.public_key())
    assert problems == [f"{path.name}: torn last entry of 150 bytes (power cut, not yet recovered)"]
    assert [e.seq for e in read_entries(tmp_path)] == [0, 1, 2, 3]

    log = AuditLog(tmp_path, key, DEVICE)  # boot: recovery
    assert verify_audit(tmp_path, key.public_key()) == []
    after = lines_of(path)
    assert after[:5] == before[:5]  # earlier entries byte for byte
    entries = read_entries(tmp_path)
    assert entries[-1].seq == 4 and entries[-1].event == Event.POWER_RECOVERY
    assert entries[-1].details == {"what": "audit_log", "file": path.name, "dropped_bytes": 150,
                                   "dropped_sha256": hashlib.sha256(half).hexdigest()}
    log.append(Event.BOOT)
    assert verify_audit(tmp_path, key.public_key()) == []


def test_whole_entry_missing_only_its_line_feed_is_kept(tmp_path: Path, key) -> None:
    make_log(tmp_path, key, 3)
    path = only_file(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    assert AuditLog(tmp_path, key, DEVICE).head().seq == 2
    assert [e.event for e in read_entries(tmp_path)] == ["marker"] * 3
    assert verify_audit(tmp_path, key.public_key()) == []


CHILD = """
import os, signal, sys
from pathlib import Path
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from secure_store.audit import AuditLog
key = load_pem_private_key(Path(sys.argv[2]).read_bytes(), None)
log = AuditLog(Path(sys.argv[1]), key, "cam-0001", max_file_bytes=20000)
calls, kill_at = [0], int(sys.argv[3])

def wrap(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # a power cut just before this call
        return real(*args, **kwargs)
    return call

for name in ("write", "fsync", "replace", "link", "unlink"):
    setattr(os, name, wrap(getattr(os, name)))
i = 0
while True:
    log.append("marker", label="x" * 300, n=i)
    i += 1
"""


def test_sigkill_while_appending_then_recover(tmp_path: Path, key) -> None:
    from secure_store.keys import private_pem
    key_file = tmp_path / "device.key"
    key_file.write_bytes(private_pem(key))
    logdir = tmp_path / "audit"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the child dies just before its N-th write/fsync/rename: an entry's write, its fsync,
    # and (past 20000 bytes) the steps of starting the next file are each cut once
    kill_points = (1, 2, 3, 80, 81, 82, 83, 84, 85, 86, 87)
    for trial, kill_at in enumerate(kill_points):
        child = subprocess.run([sys.executable, "-c", CHILD, str(logdir), str(key_file), str(kill_at)], env=env)
        assert child.returncode == -signal.SIGKILL
        AuditLog(logdir, key, DEVICE).append(Event.BOOT, trial=trial)
        assert verify_audit(logdir, key.public_key(), device_id=DEVICE) == []
    entries = read_entries(logdir)
    assert [e.seq for e in entries] == list(range(len(entries)))
    assert [e.details["trial"] for e in entries if e.event == "boot"] == list(range(len(kill_points)))
    assert len(list(logdir.glob("audit-*.log"))) >= 2     # the cuts reached the start of a new file


def test_threads_and_two_writers_keep_one_chain(tmp_path: Path, key) -> None:
    first = AuditLog(tmp_path, key, DEVICE)
    second = AuditLog(tmp_path, key, DEVICE)  # e.g. another process on the same directory

    def work(log: AuditLog, tag: str) -> None:
        for i in range(15):
            log.append(Event.STATE_CHANGE, who=tag, i=i)

    threads = [threading.Thread(target=work, args=(log, f"{n}{j}"))
               for n, log in (("a", first), ("b", second)) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = read_entries(tmp_path)
    assert [e.seq for e in entries] == list(range(60))
    for tag in ("a0", "a1", "b0", "b1"):
        assert [e.details["i"] for e in entries if e.details["who"] == tag] == list(range(15))
    assert verify_audit(tmp_path, key.public_key()) == []


def test_bad_appends_write_nothing(tmp_path: Path, key) -> None:
    log = make_log(tmp_path, key, 1)
    size = only_file(tmp_path).stat().st_size
    for event, details in (("Bad Name", {}), ("", {}), ("marker", {"x": object()}),
                           ("marker", {"x": float("nan")}), ("marker", {"x": "y" * 70000})):
        with pytest.raises(AuditError):
            log.append(event, **details)
    assert only_file(tmp_path).stat().st_size == size
    assert issubclass(AuditError, StoreError)
    with pytest.raises(AuditError, match="Ed25519"):
        AuditLog(tmp_path, object(), DEVICE)  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="device ID"):
        AuditLog(tmp_path, key, "")
    log.append(Event.MARKER, event="a detail may be called event")
    assert read_entries(tmp_path)[-1].details == {"event": "a detail may be called event"}
    assert verify_audit(only_file(tmp_path), key.public_key()) == [f"{only_file(tmp_path)}: no audit log files"]


def test_oversized_file_is_refused(tmp_path: Path, key, monkeypatch) -> None:
    make_log(tmp_path, key, 3)
    monkeypatch.setattr(audit_format, "MAX_READ_BYTES", 500)
    name = only_file(tmp_path).name
    assert verify_audit(tmp_path, key.public_key()) == [f"{name}: larger than 500 bytes; not an audit log file"]


# --- what the verifier reports, word for word (a court reads these lines; FORMAT.md L1, L2, L6, L8, L9) ---

def resigned(line: bytes, key: Ed25519PrivateKey, **changes) -> bytes:
    """A version-1 entry line with body fields changed, validly signed again by ``key``."""
    obj = json.loads(line[len(b'{"body":'):-138])
    obj.update(changes)
    body = audit.canonical_json(obj)
    return b'{"body":' + body + b',"sig":"' + key.sign(b"bodycam-audit-v1\x00" + body).hex().encode() + b'"}'


def rotated_log(directory: Path, key: Ed25519PrivateKey) -> list[Path]:
    make_log(directory, key, 12, max_file_bytes=1500)
    files = sorted(directory.glob("audit-*.log"))
    assert len(files) >= 3
    return files


def test_entry_0_that_does_not_start_the_chain_is_named(tmp_path: Path, key) -> None:
    make_log(tmp_path, key, 3)
    path = only_file(tmp_path)
    lines = lines_of(path)
    lines[1] = resigned(lines[1], key, prev="1" * 64)  # validly signed, but claims a predecessor
    write_lines(path, lines)
    assert verify_audit(tmp_path, key.public_key()) == [
        "entry 0: does not start the chain (previous digest is not zero)",
        "entry 1: does not chain to entry 0 (previous-entry digest mismatch)"]


def test_anchor_at_entry_0_is_checked(tmp_path: Path, key) -> None:
    """L9 holds for the very first entry too: a replaced one-entry log does not reach its anchor."""
    AuditLog(tmp_path / "a", key, DEVICE).append(Event.BOOT, reason="power_on")
    AuditLog(tmp_path / "b", key, DEVICE).append(Event.BOOT, reason="watchdog")
    head_a, head_b = AuditLog(tmp_path / "a", key, DEVICE).head(), AuditLog(tmp_path / "b", key, DEVICE).head()
    assert head_a.seq == head_b.seq == 0 and head_a.digest != head_b.digest
    assert verify_audit(tmp_path / "a", key.public_key(), anchor=head_a) == []
    assert verify_audit(tmp_path / "a", key.public_key(), anchor=head_b) == [
        "entry 0: differs from the recorded head digest"]


def test_one_entry_from_another_device_is_named_by_its_seq(tmp_path: Path, key) -> None:
    make_log(tmp_path, key, 1)
    assert verify_audit(tmp_path, key.public_key(), device_id="cam-0002") == [
        "entry 0: from device 'cam-0001', not 'cam-0002'"]


def test_garbage_after_the_last_entry_of_an_older_file_is_not_a_torn_entry(tmp_path: Path, key) -> None:
    first, *_, newest = rotated_log(tmp_path, key)
    with open(first, "ab") as f:
        f.write(b"junk!")
    assert verify_audit(tmp_path, key.public_key()) == [f"{first.name}: 5 bytes of garbage after the last entry"]
    with open(newest, "ab") as f:
        f.write(b"half")
    assert verify_audit(tmp_path, key.public_key()) == [
        f"{first.name}: 5 bytes of garbage after the last entry",
        f"{newest.name}: torn last entry of 4 bytes (power cut, not yet recovered)"]


def test_file_without_entries_is_named(tmp_path: Path, key) -> None:
    _, middle, *_ = rotated_log(tmp_path, key)
    first_seq, count = int(middle.name[6:18]), len(lines_of(middle)) - 2
    middle.write_bytes(audit_format.HEADER)
    want = f"entry {first_seq}" if count == 1 else f"entries {first_seq}-{first_seq + count - 1}"
    assert verify_audit(tmp_path, key.public_key()) == [f"{middle.name}: holds no valid entries",
                                                        f"{want} missing (removed)"]
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "audit-000000000000.log").write_bytes(audit_format.HEADER)
    assert verify_audit(alone, key.public_key()) == ["audit-000000000000.log: holds no valid entries"]


def test_unreadable_file_does_not_stop_the_files_after_it(tmp_path: Path, key) -> None:
    first, *_, newest = rotated_log(tmp_path, key)
    count = len(lines_of(first)) - 2
    first.write_bytes(b"not an audit log\n" + first.read_bytes().split(b"\n", 1)[1])
    lines = lines_of(newest)
    lines[-2] = lines[-2].replace(b'"label":"m', b'"label":"x')  # the files after it are still read and checked
    write_lines(newest, lines)
    assert verify_audit(tmp_path, key.public_key()) == [
        f"{first.name}: not a bodycam audit log (bad header)",
        f"entry 11 ({newest.name} line {len(lines) - 1}): bad signature (altered, or not signed by this device's key)",
        f"entries 0-{count - 1} missing (removed)"]


# --- fuzzing: malformed input gives clear problems or AuditError, never a crash or a hang ---

_PROTO = tempfile.mkdtemp(prefix="audit-proto-")
_KEY = Ed25519PrivateKey.generate()
make_log(Path(_PROTO), _KEY, 4)
VALID = only_file(Path(_PROTO)).read_bytes()


def _check_parsers(data: bytes) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "audit-000000000000.log").write_bytes(data)
        problems = verify_audit(Path(d), _KEY.public_key())
        assert all(isinstance(p, str) and "\n" not in p for p in problems)
        try:
            read_entries(Path(d))
        except AuditError:
            pass
        try:
            AuditLog(Path(d), _KEY, DEVICE).append(Event.BOOT)
        except AuditError:
            pass
        return problems


@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_parsers(data)
    _check_parsers(audit.HEADER + data)


@given(st.integers(0, len(VALID) - 1), st.integers(1, 255))
def test_fuzz_any_flipped_byte_is_detected(pos: int, xor: int) -> None:
    data = bytearray(VALID)
    data[pos] ^= xor
    assert _check_parsers(bytes(data)) != []


@given(st.lists(st.sampled_from([b"{", b"[", b'"', b"\\", b"}", b",", b":", b"1e999999", b"9" * 5000,
                                 b'{"body":', b',"sig":"', b'"}', b"\n", b"a" * 128, b"\x00", b"\xff"]),
                max_size=300))
def test_fuzz_structured_junk(parts: list[bytes]) -> None:
    _check_parsers(audit.HEADER + b"".join(parts))


def teardown_module() -> None:
    shutil.rmtree(_PROTO, ignore_errors=True)
