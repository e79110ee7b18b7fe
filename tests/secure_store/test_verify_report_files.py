"""What ``verify_path`` reports, and against which file: the problems, warnings and segments are the product.

A court reads each problem next to the file it names; a store of many devices must report every
device's segments and warnings, not only the last one's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from secure_store import hybrid, keys, pki
from secure_store.audit_format import AuditHead
from secure_store.receipts import write_receipt
from secure_store.segment_rules import Problem
from secure_store.errors import StoreError
from secure_store.verify import decrypt_chunks, verify_path, verify_segment

SEG, MAN = "seg-{:010d}.seg", "seg-{:010d}.manifest"
NOT_ANCHORED = "device key taken from identity.json beside the evidence; not anchored to an agency root " \
               "(give --trust agency-root.pem)"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, keyset, h) -> Path:
    root = h.provision_root(tmp_path_factory.mktemp("rep") / "device", keyset)
    h.record(h.open_store(root, keyset), "rec-1", segments=4, chunks=1, frames_per_chunk=2)
    return root.root


@pytest.fixture
def case(pristine, tmp_path) -> Path:
    target = tmp_path / "case"
    shutil.copytree(pristine, target)
    return target


def _copy_segment(case: Path, seq: int, to_seq: int) -> None:
    for pattern in (SEG, MAN):
        shutil.copy(case / "evidence" / pattern.format(seq), case / "evidence" / pattern.format(to_seq))


# --- a store of many devices ----------------------------------------------------------------------

def test_a_store_of_two_devices_reports_both_and_skips_hidden_copies(tmp_path, keyset, h) -> None:
    store = tmp_path / "store"
    a = h.provision_root(store / "CAM-0001", keyset)
    h.record(h.open_store(a, keyset), segments=2, chunks=1, frames_per_chunk=2)
    b = h.provision_root(store / "CAM-0002", keyset, keyset.other_device, "CAM-0002")
    h.record(h.open_store(b, keyset, device_key=keyset.other_device, device_id="CAM-0002"), segments=1, chunks=1,
             frames_per_chunk=2)
    shutil.copytree(a.root, store / ".trash" / "CAM-0001")  # a hidden copy is not evidence
    report = verify_path(store)
    assert report.ok, [str(p) for p in report.problems]
    assert sorted((Path(s.path).parent.parent.name, s.manifest.segment_seq) for s in report.segments) == \
        [("CAM-0001", 1), ("CAM-0001", 2), ("CAM-0002", 1)]
    assert report.warnings == [Problem(str(a.root), None, NOT_ANCHORED), Problem(str(b.root), None, NOT_ANCHORED)]
    assert report.audit_logs == [str(a.root / "audit"), str(b.root / "audit")]


def test_loose_segment_files_beside_device_directories_are_not_a_device_directory(tmp_path, keyset, h) -> None:
    """FORMAT.md F2 rule 5: P itself is a device directory only if its subdirectories hold none."""
    store = tmp_path / "store"
    a = h.provision_root(store / "CAM-0001", keyset)
    h.record(h.open_store(a, keyset), segments=1, chunks=1, frames_per_chunk=2)
    (store / SEG.format(7)).write_bytes(b"stray")
    report = verify_path(store)
    assert report.ok and list(report.trust) == [str(a.root)], report.problems


# --- problems and warnings name their file -------------------------------------------------------

def test_an_audit_log_without_any_trusted_key_is_named(case) -> None:
    shutil.rmtree(case / "keys")
    (case / "identity.json").unlink()
    report = verify_path(case)
    assert Problem(str(case / "audit"), None, "no trusted device key for this audit log") in report.problems


def test_a_segment_without_any_key_is_named(case) -> None:
    shutil.rmtree(case / "keys")
    (case / "identity.json").unlink()
    seg, problems = verify_segment(case / "evidence" / SEG.format(1))
    assert seg is None
    assert problems == [Problem(SEG.format(1), None, "no device public key given or found beside the evidence")]


def test_a_segment_checked_alone_against_the_identity_beside_it_must_be_from_that_device(case) -> None:
    identity = case / "identity.json"
    identity.write_text(identity.read_text().replace("CAM-0001", "CAM-0009"))
    seg, problems = verify_segment(case / "evidence" / SEG.format(1))
    assert seg is None and len(problems) == 1
    assert problems[0].file == MAN.format(1) and "expected 'CAM-0009'" in problems[0].reason


def test_one_segment_checked_alone_says_what_was_not_checked(case) -> None:
    report = verify_path(case / "evidence" / SEG.format(2))
    assert report.ok and [s.manifest.segment_seq for s in report.segments] == [2]
    assert report.warnings == [Problem(SEG.format(2), None, "only this segment was checked: its place in the chain, "
                                                            "the audit log and receipts need its device directory")]


def test_an_audit_warning_names_the_audit_log(tmp_path, keyset, h) -> None:
    root = h.provision_root(tmp_path / "device", keyset)
    store = h.open_store(root, keyset)
    h.record(store, segments=1, chunks=1, frames_per_chunk=2)
    store.audit.append("tripod_mounted", angle=12)
    report = verify_path(root.root)
    assert report.ok
    assert Problem(str(root.root / "audit"), None, "event name(s) not in the version-1 list: tripod_mounted") \
        in report.warnings


# --- the chain across segments ------------------------------------------------------------------

def test_a_duplicated_sequence_is_named(case) -> None:
    _copy_segment(case, 2, 9)  # seq 2 again under another name
    report = verify_path(case)
    assert Problem(SEG.format(9), None, f"duplicate: sequence 2 also in {SEG.format(2)}") in report.problems


def test_a_run_of_missing_segments_is_named_as_a_range(case) -> None:
    for seq in (2, 3):
        for pattern in (SEG, MAN):
            (case / "evidence" / pattern.format(seq)).unlink()
    report = verify_path(case)
    assert Problem(SEG.format(4), None, f"missing: sequence 2..3 absent between {SEG.format(1)} and {SEG.format(4)}") \
        in report.problems


def test_a_segment_index_out_of_order_is_named(tmp_path, keyset, h) -> None:
    root = h.provision_root(tmp_path / "device", keyset)
    store = h.open_store(root, keyset)
    sealer = store.open_sealer()
    h.record(store, "rec-1", segments=1, chunks=1, frames_per_chunk=2, sealer=sealer)
    h.record(store, "rec-1", segments=1, chunks=1, frames_per_chunk=2, first_index=5, sealer=sealer)
    report = verify_path(root.root)
    assert Problem(SEG.format(2), None, f"recording rec-1: segment index 5 where 1 follows {SEG.format(1)}") \
        in report.problems


# --- receipts under the agency root -------------------------------------------------------------

@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> pki.CertificateAuthority:
    authority = pki.CertificateAuthority(tmp_path_factory.mktemp("ca") / "ca")
    authority.init("Metro Police", pq=True)
    return authority


def test_a_receipt_from_an_uncertified_dock_is_named(case, keyset, ca) -> None:
    dock = keys.generate("dock")
    receipt = write_receipt(case, dock, "CAM-0001", keys.fingerprint(keyset.device.public_key()), "", None, [])
    report = verify_path(case, trust_root=ca.root)
    assert Problem(str(receipt), None, "signed by a dock key that no dock certificate chained to the agency root") \
        in report.problems



def _certify(case: Path, ca, role: str, name: str, key) -> None:
    (case / "certs").mkdir(exist_ok=True)
    (case / "certs" / f"{role}-{name}.pem").write_bytes(pki.chain_pem(ca.issue(role, name, key)))


def test_under_two_roots_a_classic_device_key_and_a_hybrid_receipt_on_a_classic_dock_certificate_are_named(
        case, keyset, ca) -> None:
    _certify(case, ca, "device", "CAM-0001", keyset.device.public_key())
    dock = hybrid.SigningKey.generate(True)
    _certify(case, ca, "dock", "DOCK-1", dock.public_key().ed25519)
    receipt = write_receipt(case, dock, "CAM-0001", keys.fingerprint(keyset.device.public_key()), "", None, [])
    report = verify_path(case, trust_root=ca.roots)
    fp = keys.fingerprint(keyset.device.public_key())
    assert Problem(str(case), None, f"device key {fp[:16]} is certified by the Ed25519 root only: its signatures "
                                    "rest on Ed25519 alone") in report.warnings
    assert report.problems == [Problem(str(receipt), None, "hybrid receipt, but the dock's certificate has no "
                                                           "ML-DSA-65 key to check it")]


# --- anchors given to the verifier ----------------------------------------------------------------

def test_an_anchor_past_the_log_is_named_by_its_sequence_and_digest_prefix(case) -> None:
    report = verify_path(case, anchors=[AuditHead(99, "ab" * 32)])
    assert len(report.problems) == 1 and report.problems[0].file == str(case / "audit")
    assert report.problems[0].reason.startswith(f"anchor 99:{'ab' * 8} anchors entry 99, but "), report.problems


def test_a_receipt_is_not_held_against_a_device_id_nobody_named(tmp_path, keyset, h) -> None:
    """Keys given without a device ID and no segments left: no device ID to compare the receipt with."""
    root = h.provision_root(tmp_path / "device", keyset)
    (root.root / "evidence").mkdir()  # every segment freed after the dock confirmed it
    write_receipt(root.root, keys.generate("dock"), "CAM-0001", keys.fingerprint(keyset.device.public_key()), "",
                  None, [])
    report = verify_path(root.root, keyset.device.public_key())
    assert list(report.trust) == [str(root.root)] and report.problems == [], report.problems


# --- decrypting names the file it stops at --------------------------------------------------------

def test_a_segment_torn_while_decrypting_is_named(case, keyset) -> None:
    seg = case / "evidence" / SEG.format(2)
    chunks = decrypt_chunks(seg, keyset.agency)
    assert next(chunks)  # verified, first chunk decrypted
    with open(seg, "r+b") as f:
        f.truncate(f.seek(0, 2) - 10)  # the final record cut short
    with pytest.raises(StoreError, match=rf"^{SEG.format(2)}: chunk 1 at byte [0-9]+ is cut short"):
        list(chunks)
