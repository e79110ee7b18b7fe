"""Fixed examples for checks that only a well-chosen input reaches: each test is the one attack.

- a forked chain: the same device key sealing in two copies of a store; a validly signed
  segment of one fork spliced into the other must break the chain (``prev_digest``);
- a record whose stored digest field alone was altered (its body still matches the manifest);
- a torn segment whose sequence number does not follow the chain head must be set aside
  at start-up, never sealed into the chain by recovery.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recorder.chunk import decode_chunk
from secure_store import keys
from secure_store.audit import read_entries
from secure_store.errors import VerifyError
from secure_store.format import iter_records, read_header
from secure_store.layout import DeviceRoot
from secure_store.verify import decrypt_chunks, verify_path


def _fork(store, keyset, tmp_path: Path, h):
    """A second store on a copy of ``store``'s device root: same key, same chain head, own future."""
    copy = tmp_path / "fork"
    shutil.copytree(store.root.root, copy)
    return h.open_store(DeviceRoot(copy), keyset)


def test_a_validly_signed_segment_from_a_fork_breaks_the_chain(device, keyset, tmp_path, h):
    """Guards the verifier's ``prev_digest`` comparison (check_chain).

    Both forks sign with the device key, so every manifest verifies on its own and the
    sequence numbers still run 1, 2, 3: only the previous-manifest digest tells them apart.
    """
    store = device("main")
    h.record(store, "rec-1", segments=1)
    fork = _fork(store, keyset, tmp_path, h)
    h.record(store, "rec-1", segments=2, first_index=1, first_frame=1000)
    h.record(fork, "rec-1", segments=2, first_index=1, first_frame=5000)
    evidence = store.root.evidence
    assert verify_path(evidence, keyset.device.public_key()).ok
    for suffix in (".seg", ".manifest"):                 # splice the fork's segment 2 into main
        target = evidence / f"seg-0000000002{suffix}"
        target.chmod(0o644)
        shutil.copyfile(fork.root.evidence / target.name, target)
    report = verify_path(evidence, keyset.device.public_key())
    assert not report.ok
    assert sorted(s.manifest.segment_seq for s in report.segments) == [1, 2, 3]   # each one verifies alone
    names = [Path(p.file).name for p in report.problems]
    assert "seg-0000000003.seg" in names, names          # its link to the spliced segment 2 is broken
    assert set(names) <= {"seg-0000000002.seg", "seg-0000000002.manifest", "seg-0000000003.seg"}, names


def test_a_record_digest_field_altered_alone_is_reported(device, keyset, h):
    """Guards ``record.stored_digest != record.digest`` in the verifier.

    Only the 32-byte digest stored after chunk 1's body changes; the body, and so the
    manifest's chunk digest, is untouched: no other check sees it.
    """
    store = device()
    h.record(store, segments=1, chunks=3)
    seg = store.root.evidence / "seg-0000000001.seg"
    with open(seg, "rb") as f:
        _, raw = read_header(f, seg.name)
        records = list(iter_records(f, len(raw), seg.name))
    body_len = len(records[1].body)
    stored_at = records[1].offset + 4 + body_len
    data = bytearray(seg.read_bytes())
    assert bytes(data[stored_at:stored_at + 32]) == records[1].stored_digest
    data[stored_at + 5] ^= 0x40
    seg.chmod(0o644)
    seg.write_bytes(bytes(data))
    report = verify_path(store.root.evidence, keyset.device.public_key())
    assert not report.ok
    assert [(p.file, p.chunk) for p in report.problems] == [("seg-0000000001.seg", 1)]


def test_recovery_sets_aside_a_torn_segment_that_does_not_follow_the_chain_head(device, keyset, tmp_path, h):
    """Guards recovery's "sequence follows the chain head" check.

    A fork (same key) sealed segment 2 and tore segment 3; that torn segment 3 copied into
    the main store, whose chain head is 1, is not the main chain's next segment: sealing it
    would put a fork's footage into the chain under a fresh signature.
    """
    store = device("main")
    h.record(store, "rec-1", segments=1)
    fork = _fork(store, keyset, tmp_path, h)
    h.record(fork, "rec-1", segments=1, first_index=1, first_frame=100)
    sealer = fork.open_sealer()
    sealer.begin_segment("rec-1", 2)
    sealer.write_chunk(h.gop(200))                   # power cut: segment 3 has no manifest
    torn = fork.root.evidence / "seg-0000000003.seg"
    assert torn.exists() and not torn.with_suffix(".manifest").exists()
    shutil.copyfile(torn, store.root.evidence / torn.name)
    rebooted = h.open_store(store.root, keyset)
    assert rebooted.recover() == []
    evidence = store.root.evidence
    assert not (evidence / "seg-0000000003.manifest").exists()
    assert (evidence / "seg-0000000003.seg.unsealed").exists()
    assert rebooted.chain_head.seq == 1
    assert [i.name for i in rebooted.list_evidence() if i.kind != "audit"] == [
        "seg-0000000001.seg", "seg-0000000001.manifest"]
    events = [e for e in read_entries(store.root.audit) if e.event == "power_recovery"]
    assert [e.details.get("set_aside") for e in events] == ["seg-0000000003.seg.unsealed"]


def test_decrypt_uses_the_key_it_is_given_not_the_one_beside_the_evidence(device, keyset, h):
    """A court gives the device key it trusts; a key file planted beside the evidence must not
    stand in for it (decrypt_chunks verifies with the given key)."""
    store = device()
    h.record(store, segments=1)
    seg = store.root.evidence / "seg-0000000001.seg"
    chunks = list(decrypt_chunks(seg, keyset.agency, keyset.device.public_key()))
    assert [h.frame_numbers(decode_chunk(c)) for c in chunks] == [list(range(0, 5)), list(range(5, 10)),
                                                                   list(range(10, 15))]
    with pytest.raises(VerifyError, match="signed by another key"):
        next(decrypt_chunks(seg, keyset.agency, keyset.other_device.public_key()))
    with pytest.raises(VerifyError, match="sealed to another agency key"):
        next(decrypt_chunks(seg, keys.generate("agency"), keyset.device.public_key()))


def test_decrypt_refuses_a_segment_with_any_problem_and_names_it(device, keyset, h):
    store = device()
    h.record(store, segments=1)
    seg = store.root.evidence / "seg-0000000001.seg"
    with open(seg, "rb") as f:
        _, raw = read_header(f, seg.name)
        second = list(iter_records(f, len(raw), seg.name))[1]
    data = bytearray(seg.read_bytes())
    data[second.offset + 4 + len(second.body) - 3] ^= 1     # inside chunk 1's ciphertext
    seg.chmod(0o644)
    seg.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match=r"^seg-0000000001\.seg: chunk 1: ciphertext altered"):
        next(decrypt_chunks(seg, keyset.agency, keyset.device.public_key()))
