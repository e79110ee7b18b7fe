"""Hybrid post-quantum protection of segments: suite 2 key wrap and version-3 manifests (issue 17).

Everything goes through the real SegmentSealer, real HPKE (ML-KEM-768 + X25519), real
Ed25519 and ML-DSA-65; assertions are on frame numbers, bytes and the verifier's reasons.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hpke
from hypothesis import HealthCheck, given, settings, strategies as st
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from recorder.chunk import decode_chunk
from secure_store import hybrid, keys
from secure_store.audit import AuditLog
from secure_store.errors import FormatError, VerifyError
from secure_store.format import HPKE_INFO, Manifest, SegmentHeader, read_header
from secure_store.keywrap import HPKE_SUITE, HPKE_SUITE_PQ, unwrap_data_key
from secure_store.store import EvidenceStore
from secure_store.verify import decrypt_chunks, read_manifest, verify_segment

from export.salvage import salvage_chunks

CLASSIC_DEVICE = hybrid.SigningKey(ed25519.Ed25519PrivateKey.generate())
HYBRID_DEVICE = hybrid.SigningKey.generate(True)
CLASSIC_AGENCY = x25519.X25519PrivateKey.generate()
HYBRID_AGENCY = hybrid.HybridAgencyKey.generate()
SEG = "seg-0000000001.seg"


def seal(root: Path, h, device_key, agency_key, *, segments: int = 1, plain_key: bool = False) -> Path:
    """Seal ``segments`` segments of 2 GOPs (frames 0-9, 10-19 ...) through the real store; the evidence dir."""
    signing = device_key.ed25519 if plain_key else device_key
    store = EvidenceStore(h.provision_root(root, _Agency(agency_key), device_key.ed25519), device_id=h.DEVICE_ID,
                          signing_key=signing, agency_public_key=agency_key.public_key(),
                          audit=AuditLog(root / "audit", device_key.ed25519, h.DEVICE_ID), reserve_bytes=0)
    h.record(store, "rec-1", segments=segments, chunks=2, frames_per_chunk=5)
    return store.root.evidence


class _Agency:
    """What ``provision_root`` reads of a keyset (the agency public key file)."""

    def __init__(self, agency_key) -> None:
        self.agency = agency_key


def frames(segment: Path, agency_key, device_key) -> list[int]:
    return [int.from_bytes(f.data[4:8], "big") for c in decrypt_chunks(segment, agency_key, device_key)
            for f in decode_chunk(c)]


@pytest.mark.parametrize("device_key, agency_key, suite, version", [
    (CLASSIC_DEVICE, CLASSIC_AGENCY, 1, 2), (HYBRID_DEVICE, HYBRID_AGENCY, 2, 3),
    (CLASSIC_DEVICE, HYBRID_AGENCY, 2, 2), (HYBRID_DEVICE, CLASSIC_AGENCY, 1, 3)])
def test_round_trip_each_suite_and_signature_kind(tmp_path, h, device_key, agency_key, suite, version) -> None:
    evidence = seal(tmp_path / "dev", h, device_key, agency_key, segments=2)
    verify_key = device_key.public_key()
    for n, seg in enumerate(sorted(evidence.glob("*.seg"))):
        with open(seg, "rb") as f:
            header, raw = read_header(f)
        assert header.suite == suite and len(header.wrapped_key) == (1168 if suite == 2 else 80)
        assert header.agency_key_fp.hex() == keys.fingerprint(agency_key.public_key())
        manifest_bytes = seg.with_suffix(".manifest").read_bytes()
        m = Manifest.parse(manifest_bytes)
        assert m.version == version and manifest_bytes[8:10] == struct.pack(">H", version)
        assert len(manifest_bytes) - 14 - struct.unpack(">I", manifest_bytes[10:14])[0] == \
            (64 + 3309 if version == 3 else 64)
        verified, problems = verify_segment(seg, verify_key)
        assert problems == [] and verified.summary()["suite"] == suite
        assert verified.summary()["signatures"] == ("ed25519+mldsa65" if version == 3 else "ed25519")
        assert frames(seg, agency_key, verify_key) == list(range(n * 10, n * 10 + 10))


def test_hybrid_device_key_given_as_plain_ed25519_key_writes_version_2(tmp_path, h) -> None:
    """A caller that hands the store a plain Ed25519 key gets exactly the classic evidence it always got."""
    evidence = seal(tmp_path / "dev", h, HYBRID_DEVICE, HYBRID_AGENCY, plain_key=True)
    assert read_manifest(evidence / "seg-0000000001.manifest").version == 2
    assert verify_segment(evidence / SEG, HYBRID_DEVICE.public_key().ed25519)[1] == []


@pytest.fixture(scope="module")
def hybrid_evidence(tmp_path_factory, h) -> Path:
    return seal(tmp_path_factory.mktemp("pq") / "dev", h, HYBRID_DEVICE, HYBRID_AGENCY)


def _header(evidence: Path) -> SegmentHeader:
    with open(evidence / SEG, "rb") as f:
        return read_header(f)[0]


def test_hybrid_wrap_needs_both_private_halves(hybrid_evidence) -> None:
    header = _header(hybrid_evidence)
    right = HYBRID_AGENCY
    assert len(HPKE_SUITE_PQ.decrypt(header.wrapped_key, right.hpke_key(), info=HPKE_INFO)) == 32
    wrong_mlkem = hpke.MLKEM768X25519PrivateKey(mlkem.MLKEM768PrivateKey.generate(), right.x25519)
    wrong_x25519 = hpke.MLKEM768X25519PrivateKey(right.mlkem768, x25519.X25519PrivateKey.generate())
    for half_right in (wrong_mlkem, wrong_x25519):
        with pytest.raises(Exception):
            HPKE_SUITE_PQ.decrypt(header.wrapped_key, half_right, info=HPKE_INFO)
    for agency in (hybrid.HybridAgencyKey(mlkem.MLKEM768PrivateKey.generate(), right.x25519),
                   hybrid.HybridAgencyKey(right.mlkem768, x25519.X25519PrivateKey.generate())):
        with pytest.raises(VerifyError, match="does not unwrap"):
            unwrap_data_key(header.wrapped_key, agency, SEG, suite=2)
    # The X25519 half alone, as a classic suite-1 key: refused by name, and HPKE over X25519 cannot open it.
    with pytest.raises(VerifyError, match=r"sealed with suite 2 \(hybrid ML-KEM-768 \+ X25519\); this agency key is "
                                          r"X25519 only"):
        unwrap_data_key(header.wrapped_key, right.x25519, SEG, suite=2)
    with pytest.raises(Exception):
        HPKE_SUITE.decrypt(header.wrapped_key[-80:], right.x25519, info=HPKE_INFO)


def test_wrong_kind_of_agency_key_is_one_clear_line(tmp_path, h, hybrid_evidence) -> None:
    device = HYBRID_DEVICE.public_key()
    with pytest.raises(VerifyError, match=f"{SEG}: sealed with suite 2 .*this agency key is X25519 only"):
        list(decrypt_chunks(hybrid_evidence / SEG, HYBRID_AGENCY.x25519, device))
    classic = seal(tmp_path / "classic", h, CLASSIC_DEVICE, CLASSIC_AGENCY)
    with pytest.raises(VerifyError, match=f"{SEG}: sealed with suite 1 \\(X25519 only\\); this agency key is hybrid"):
        list(decrypt_chunks(classic / SEG, HYBRID_AGENCY, CLASSIC_DEVICE.public_key()))
    from export.errors import ExportError
    with pytest.raises(ExportError, match="sealed with suite 2"):
        list(salvage_chunks(hybrid_evidence / SEG, read_manifest(hybrid_evidence / "seg-0000000001.manifest"),
                            HYBRID_AGENCY.x25519))


def test_salvage_opens_a_hybrid_segment(hybrid_evidence) -> None:
    manifest = read_manifest(hybrid_evidence / "seg-0000000001.manifest")
    chunks = list(salvage_chunks(hybrid_evidence / SEG, manifest, HYBRID_AGENCY))
    assert [int.from_bytes(f.data[4:8], "big") for c in chunks for f in decode_chunk(c.plaintext)] == list(range(10))


def _copy(evidence: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    out.mkdir(parents=True)
    for p in evidence.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    return out


def test_flipped_wrapped_key_byte_fails(hybrid_evidence, tmp_path) -> None:
    header = _header(hybrid_evidence)
    for at in (0, 1087, 1088, 1119, 1120, 1167):  # ML-KEM ciphertext, X25519 share, sealed data key
        bad = bytearray(header.wrapped_key)
        bad[at] ^= 0x01
        with pytest.raises(VerifyError, match="does not unwrap"):
            unwrap_data_key(bytes(bad), HYBRID_AGENCY, SEG, suite=2)
    copy = _copy(hybrid_evidence, tmp_path)
    data = bytearray((copy / SEG).read_bytes())
    raw_len = len(header.encode())
    data[raw_len - 5] ^= 0x01  # inside the wrapped key, in the file
    (copy / SEG).write_bytes(bytes(data))
    _, problems = verify_segment(copy / SEG, HYBRID_DEVICE.public_key())
    assert [p.reason for p in problems] == ["header altered: its SHA-256 differs from the signed manifest"]


def _problems(manifest_bytes: bytes, evidence: Path, tmp_path: Path, key) -> list[str]:
    copy = _copy(evidence, tmp_path)
    (copy / "seg-0000000001.manifest").write_bytes(manifest_bytes)
    return [p.reason for p in verify_segment(copy / SEG, key)[1]]


@pytest.mark.parametrize("at, algorithm", [(-3309 - 64, "Ed25519"), (-3309 - 1, "Ed25519"), (-3309, "ML-DSA-65"),
                                           (-1000, "ML-DSA-65"), (-1, "ML-DSA-65")])
def test_flipped_signature_byte_fails(hybrid_evidence, tmp_path, at, algorithm) -> None:
    data = bytearray((hybrid_evidence / "seg-0000000001.manifest").read_bytes())
    data[at] ^= 0x80
    reasons = _problems(bytes(data), hybrid_evidence, tmp_path, HYBRID_DEVICE.public_key())
    assert len(reasons) == 1 and reasons[0].startswith(f"manifest signature invalid ({algorithm})")


def _resigned(manifest: Manifest, ed_key, pq_key) -> bytes:
    message = manifest.signed_bytes()
    return dataclasses.replace(manifest, signature=ed_key.sign(message),
                               signature_mldsa65=pq_key.sign(message)).encode()


def test_one_good_signature_is_not_enough(hybrid_evidence, tmp_path) -> None:
    m = read_manifest(hybrid_evidence / "seg-0000000001.manifest")
    m = dataclasses.replace(m, frame_count=m.frame_count)  # the real manifest, re-signed below
    valid_ed_bad_pq = _resigned(m, HYBRID_DEVICE.ed25519, mldsa.MLDSA65PrivateKey.generate())
    bad_ed_valid_pq = _resigned(m, ed25519.Ed25519PrivateKey.generate(), HYBRID_DEVICE.mldsa65)
    assert _resigned(m, HYBRID_DEVICE.ed25519, HYBRID_DEVICE.mldsa65) != valid_ed_bad_pq  # ML-DSA is hedged
    key = HYBRID_DEVICE.public_key()
    assert _problems(_resigned(m, HYBRID_DEVICE.ed25519, HYBRID_DEVICE.mldsa65), hybrid_evidence, tmp_path / "a",
                     key) == []
    assert _problems(valid_ed_bad_pq, hybrid_evidence, tmp_path / "b", key)[0].startswith(
        "manifest signature invalid (ML-DSA-65)")
    assert _problems(bad_ed_valid_pq, hybrid_evidence, tmp_path / "c", key)[0].startswith(
        "manifest signature invalid (Ed25519)")


def test_stripping_the_mldsa_signature_and_relabelling_version_2_fails(hybrid_evidence, tmp_path) -> None:
    data = (hybrid_evidence / "seg-0000000001.manifest").read_bytes()
    stripped = data[:8] + struct.pack(">H", 2) + data[10:-3309]
    m = Manifest.parse(stripped)  # it parses: a well-formed version-2 manifest...
    assert m.version == 2 and not m.hybrid
    hybrid_key, classic_form = HYBRID_DEVICE.public_key(), hybrid.VerifyKey(HYBRID_DEVICE.public_key().ed25519)
    assert _problems(stripped, hybrid_evidence, tmp_path / "a", hybrid_key) == [
        "classic-only signature from a hybrid key: manifest version 2 has no ML-DSA-65 signature (stripped, or "
        "signed by a downgraded device)"]
    # ...but even a verifier that knows only the Ed25519 half refuses it: the signature covers the version.
    assert _problems(stripped, hybrid_evidence, tmp_path / "b", classic_form)[0].startswith(
        "manifest signature invalid (Ed25519)")


def test_classic_manifest_under_a_hybrid_key_fails(tmp_path, h) -> None:
    """The same Ed25519 key, used without its ML-DSA half: a downgraded device's evidence is refused."""
    downgraded = hybrid.SigningKey(HYBRID_DEVICE.ed25519)
    evidence = seal(tmp_path / "dev", h, downgraded, HYBRID_AGENCY)
    assert read_manifest(evidence / "seg-0000000001.manifest").version == 2
    reasons = [p.reason for p in verify_segment(evidence / SEG, HYBRID_DEVICE.public_key())[1]]
    assert reasons and reasons[0].startswith("classic-only signature from a hybrid key")
    # Known both ways (e.g. a retired classic copy beside the hybrid one): the hybrid form wins.
    both = [hybrid.VerifyKey(HYBRID_DEVICE.public_key().ed25519), HYBRID_DEVICE.public_key()]
    assert verify_segment(evidence / SEG, both)[1][0].reason.startswith("classic-only signature from a hybrid key")
    with pytest.raises(VerifyError, match="classic-only signature from a hybrid key"):
        list(decrypt_chunks(evidence / SEG, HYBRID_AGENCY, HYBRID_DEVICE.public_key()))


def test_hybrid_manifest_under_a_classic_only_key_fails(hybrid_evidence) -> None:
    classic_only = HYBRID_DEVICE.public_key().ed25519  # what an old verifier's --device-pub would give
    (problem,) = verify_segment(hybrid_evidence / SEG, classic_only)[1]
    assert problem.reason.startswith("hybrid manifest (version 3) but no ML-DSA-65 key to check it")


def test_version_3_parse_is_strict_and_canonical(hybrid_evidence) -> None:
    data = (hybrid_evidence / "seg-0000000001.manifest").read_bytes()
    m = Manifest.parse(data)
    assert m.encode() == data and len(m.signature) == 64 and len(m.signature_mldsa65) == 3309
    with pytest.raises(FormatError, match="body_len"):
        Manifest.parse(data + b"\x00")
    with pytest.raises(FormatError):
        Manifest.parse(data[:-1])
    with pytest.raises(FormatError, match="body_len"):  # version 3 without its ML-DSA-65 signature
        Manifest.parse(data[:-3309])
    with pytest.raises(FormatError, match="body_len"):  # a version-2 label on a hybrid trailer
        Manifest.parse(data[:8] + struct.pack(">H", 2) + data[10:])
    with pytest.raises(FormatError, match="needs an ML-DSA-65 signature"):
        dataclasses.replace(m, signature_mldsa65=b"").encode()
    with pytest.raises(FormatError, match="no room for an ML-DSA-65 signature"):
        dataclasses.replace(m, version=2).encode()


def test_suite_2_header_round_trips_and_refuses_a_suite_1_length(hybrid_evidence) -> None:
    header = _header(hybrid_evidence)
    raw = header.encode()
    assert SegmentHeader.parse(raw) == header and raw[12:14] == b"\x00\x02"
    with pytest.raises(FormatError, match="wrapped_key must be 1168 bytes"):
        dataclasses.replace(header, wrapped_key=header.wrapped_key[:80]).encode()
    with pytest.raises(FormatError, match="wrapped_key must be 80 bytes for suite 1"):
        SegmentHeader.parse(raw[:12] + b"\x00\x01" + raw[14:])


def test_recovery_seals_a_torn_hybrid_segment_with_a_version_3_manifest(tmp_path, h) -> None:
    root = tmp_path / "dev"
    store = EvidenceStore(h.provision_root(root, _Agency(HYBRID_AGENCY), HYBRID_DEVICE.ed25519),
                          device_id=h.DEVICE_ID, signing_key=HYBRID_DEVICE,
                          agency_public_key=HYBRID_AGENCY.public_key(),
                          audit=AuditLog(root / "audit", HYBRID_DEVICE.ed25519, h.DEVICE_ID), reserve_bytes=0)
    sealer = store.open_sealer()
    sealer.begin_segment("rec-1", 0)
    for g in range(3):
        sealer.write_chunk(h.gop(g * 5))
    os.close(sealer._fd)  # power lost: nothing else flushed
    rebooted = EvidenceStore(store.root, device_id=h.DEVICE_ID, signing_key=HYBRID_DEVICE,
                             agency_public_key=HYBRID_AGENCY.public_key(),
                             audit=AuditLog(root / "audit", HYBRID_DEVICE.ed25519, h.DEVICE_ID), reserve_bytes=0)
    assert rebooted.recover() == ["seg-0000000001"]
    m = read_manifest(store.root.evidence / "seg-0000000001.manifest")
    assert m.recovered and m.version == 3
    assert frames(store.root.evidence / SEG, HYBRID_AGENCY, HYBRID_DEVICE.public_key()) == list(range(15))
    assert rebooted.recover() == []  # its own v3 manifest is recognised on the next boot


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    from firmware.cli import main
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_keys_new_agency_is_hybrid_by_default(tmp_path, capsys) -> None:
    code, out, _ = _run(capsys, "keys", "new", "agency", "--out", str(tmp_path / "agency"))
    assert code == 0 and "hybrid agency key" in out
    key = keys.load_private_key(tmp_path / "agency.key", "agency")
    assert isinstance(key, hybrid.HybridAgencyKey)
    assert keys.fingerprint(key.public_key()) in out and len(keys.raw_public(key.public_key())) == 1216
    assert (tmp_path / "agency.pub").read_bytes().count(b"-----BEGIN PUBLIC KEY-----") == 2
    code, out, _ = _run(capsys, "keys", "new", "agency", "--classic", "--out", str(tmp_path / "old"))
    assert code == 0 and isinstance(keys.load_private_key(tmp_path / "old.key", "agency"), x25519.X25519PrivateKey)


@pytest.mark.parametrize("kind", ["device", "dock", "vendor"])
def test_keys_new_pq_signing_keys(tmp_path, capsys, kind) -> None:
    code, out, _ = _run(capsys, "keys", "new", kind, "--pq", "--out", str(tmp_path / kind))
    assert code == 0
    key = keys.load_signing_key(tmp_path / f"{kind}.key", kind)
    assert key.hybrid and keys.load_verify_key(tmp_path / f"{kind}.pub", kind) == key.public_key()
    assert keys.fingerprint(key.public_key()) in out  # named by its Ed25519 half, as every report names it
    code, _, _ = _run(capsys, "keys", "new", kind, "--out", str(tmp_path / f"{kind}-classic"))
    assert code == 0 and not keys.load_signing_key(tmp_path / f"{kind}-classic.key", kind).hybrid


@pytest.mark.parametrize("argv, reason", [(["export", "--pq"], "no post-quantum form"),
                                          (["device", "--classic"], "--classic is for agency keys"),
                                          (["agency", "--pq", "--classic"], "contradict")])
def test_keys_new_refuses_flags_that_do_not_apply(tmp_path, capsys, argv, reason) -> None:
    code, out, err = _run(capsys, "keys", "new", *argv, "--out", str(tmp_path / "k"))
    assert code == 2 and reason in err and len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_verify_cli_takes_a_hybrid_device_pub(hybrid_evidence, tmp_path, capsys) -> None:
    pub = tmp_path / "device.pub"
    pub.write_bytes(keys.public_pem(HYBRID_DEVICE.public_key()))
    code, out, _ = _run(capsys, "verify", str(hybrid_evidence / SEG), "--device-pub", str(pub), "--json")
    import json
    report = json.loads(out)
    assert code == 0 and report["ok"], report["problems"]
    (segment,) = report["segments"]
    assert (segment["signatures"], segment["suite"], segment["key_wrap"]) == ("ed25519+mldsa65", 2,
                                                                               "hpke-mlkem768-x25519")
    classic = tmp_path / "classic.pub"
    classic.write_bytes(keys.public_pem(HYBRID_DEVICE.public_key().ed25519))
    code, out, _ = _run(capsys, "verify", str(hybrid_evidence / SEG), "--device-pub", str(classic))
    assert code == 1 and "no ML-DSA-65 key to check it" in out


def _mutations(data: bytes):
    n = len(data)
    return st.one_of(
        st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
            lambda t: data[:t[0]] + bytes([data[t[0]] ^ t[1]]) + data[t[0] + 1:]),
        st.integers(0, n - 1).map(lambda i: data[:i]),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=8)).map(lambda t: data[:t[0]] + t[1] + data[t[0]:]),
    )


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_mutated_hybrid_evidence_is_a_problem_never_a_crash(hybrid_evidence, tmp_path_factory, data) -> None:
    which = data.draw(st.sampled_from([SEG, "seg-0000000001.manifest"]))
    original = (hybrid_evidence / which).read_bytes()
    blob = data.draw(_mutations(original))
    copy = tmp_path_factory.mktemp("m")
    for p in hybrid_evidence.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / which).write_bytes(blob)
    if which != SEG:
        try:
            assert Manifest.parse(blob).encode() == blob  # only the canonical encoding parses
        except FormatError as exc:
            assert str(exc) and "\n" not in str(exc)
    _, problems = verify_segment(copy / SEG, HYBRID_DEVICE.public_key())
    assert bool(problems) == (blob != original) and all(p.reason for p in problems)


def test_verify_cli_says_how_each_segment_is_protected(hybrid_evidence, tmp_path, capsys) -> None:
    pub = tmp_path / "device.pub"
    pub.write_bytes(keys.public_pem(HYBRID_DEVICE.public_key()))
    code, out, _ = _run(capsys, "verify", str(hybrid_evidence / SEG), "--device-pub", str(pub))
    assert code == 0
    assert "PROTECTION 1 segment(s): signatures ed25519+mldsa65, key wrap suite 2 (hpke-mlkem768-x25519)" in out


def test_a_hybrid_device_directory_verifies_with_every_rule(tmp_path, h) -> None:
    """Hybrid store and hybrid audit log: verify_path passes every rule, and says so per segment."""
    root = tmp_path / "dev"
    store = EvidenceStore(h.provision_root(root, _Agency(HYBRID_AGENCY), HYBRID_DEVICE.ed25519),
                          device_id=h.DEVICE_ID, signing_key=HYBRID_DEVICE,
                          agency_public_key=HYBRID_AGENCY.public_key(),
                          audit=AuditLog(root / "audit", HYBRID_DEVICE, h.DEVICE_ID), reserve_bytes=0)
    h.record(store, "rec-1", segments=3, chunks=2, frames_per_chunk=5)
    from secure_store.verify import verify_path
    report = verify_path(root, HYBRID_DEVICE.public_key())
    assert report.ok, [str(p) for p in report.problems]
    assert [(s["seq"], s["signatures"], s["suite"]) for s in report.to_json()["segments"]] == [
        (1, "ed25519+mldsa65", 2), (2, "ed25519+mldsa65", 2), (3, "ed25519+mldsa65", 2)]
    downgraded = verify_path(root, HYBRID_DEVICE.public_key().ed25519)  # a verifier that lost the ML-DSA half
    assert not downgraded.ok and not downgraded.segments
    manifests = [p for p in downgraded.problems if p.file.endswith(".manifest")]
    assert len(manifests) == 3 and all("no ML-DSA-65 key to check it" in p.reason for p in manifests)
