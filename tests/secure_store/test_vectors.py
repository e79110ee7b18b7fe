"""The test vectors in docs/FORMAT.md: the real sealer must produce exactly those bytes.

Run this file as a script to print the vector block for the spec:
``.venv/bin/python tests/secure_store/test_vectors.py`` (``... pq`` for the hybrid block).
"""

from __future__ import annotations

import hashlib
import re
import struct
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from buffer.frame import Frame  # noqa: E402
from recorder.chunk import encode_chunk  # noqa: E402
from secure_store import hybrid, keys, sealer as sealer_module  # noqa: E402
from secure_store.audit import AuditLog  # noqa: E402
from secure_store.chain import ChainHead, save_head  # noqa: E402
from secure_store.format import HPKE_INFO, HPKE_SUITE, Manifest, SegmentHeader, iter_records  # noqa: E402
from secure_store.layout import DeviceRoot  # noqa: E402
from secure_store.store import EvidenceStore  # noqa: E402

SPEC = ROOT / "docs" / "FORMAT.md"
INPUTS = {
    "device_private_key": bytes(range(0x00, 0x20)).hex(),
    "agency_private_key": bytes(range(0x20, 0x40)).hex(),
    "data_key": bytes(range(0x40, 0x60)).hex(),
    "device_id": "CAM-0001",
    "recording_id": "20261124T170000Z",
    "index": "2",
    "previous_seq": "6",
    "previous_manifest_digest": hashlib.sha256(b"bodycam test vector: previous manifest").hexdigest(),
    "clock_utc_us": "1764003600000000",
    "clock_source": "dock-sync",
    "marker": "1500000 suspect fled",
}
INPUTS_PQ = {  # the same segment, sealed by a hybrid device to a hybrid agency key (suite 2, manifest version 3)
    **INPUTS,
    "device_mldsa65_seed": bytes(range(0x60, 0x80)).hex(),
    "agency_mlkem768_seed": bytes(range(0x80, 0xC0)).hex(),
}
FRAMES = [
    [Frame(bytes.fromhex("00000001") + b"\x67SPS\x68PPS\x65IDR-0", True, 1_000_000),
     Frame(bytes.fromhex("00000001") + b"\x41P-1", False, 1_033_333)],
    [Frame(bytes.fromhex("00000001") + b"\x67SPS\x68PPS\x65IDR-2", True, 2_000_000)],
]


def vector_keys(inputs: dict[str, str]):
    """The device signing key and the agency private key of a vector (hybrid when it gives their seeds)."""
    device = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(inputs["device_private_key"]))
    agency = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(inputs["agency_private_key"]))
    if "device_mldsa65_seed" in inputs:
        device = hybrid.SigningKey(device, mldsa.MLDSA65PrivateKey.from_seed_bytes(
            bytes.fromhex(inputs["device_mldsa65_seed"])))
        agency = hybrid.HybridAgencyKey(mlkem.MLKEM768PrivateKey.from_seed_bytes(
            bytes.fromhex(inputs["agency_mlkem768_seed"])), agency)
    return device, agency


def seal_vector(inputs: dict[str, str], wrapped_key: bytes, monkeypatch=None) -> dict[str, str]:
    """Seal the vector segment with the real SegmentSealer; returns the named outputs.

    For the hybrid vector the ML-DSA-65 signature is randomised, so the outputs are the
    signed message and the Ed25519 signature; the spec's manifest is checked by verifying it.
    """
    device, agency = vector_keys(inputs)
    audit_key = device.ed25519 if isinstance(device, hybrid.SigningKey) else device
    data_key = bytes.fromhex(inputs["data_key"])
    patches = {"new_data_key": lambda: data_key, "wrap_data_key": lambda key, pub: wrapped_key}
    saved = {name: getattr(sealer_module, name) for name in patches}
    try:
        for name, value in patches.items():
            setattr(sealer_module, name, value)
        with tempfile.TemporaryDirectory() as tmp:
            root = DeviceRoot(tmp)
            save_head(root.state, ChainHead(int(inputs["previous_seq"]),
                                            bytes.fromhex(inputs["previous_manifest_digest"])))
            store = EvidenceStore(root, device_id=inputs["device_id"], signing_key=device,
                                  agency_public_key=agency.public_key(), audit=AuditLog(root.audit, audit_key, "v"),
                                  clock=lambda: int(inputs["clock_utc_us"]) / 1e6,
                                  clock_source=inputs["clock_source"], reserve_bytes=0)
            sealer = store.open_sealer()
            sealer.begin_segment(inputs["recording_id"], int(inputs["index"]))
            sealer.write_chunk(FRAMES[0])
            ts, label = inputs["marker"].split(" ", 1)
            sealer.add_marker(int(ts), label)
            sealer.write_chunk(FRAMES[1])
            sealer.end_segment()
            seq = int(inputs["previous_seq"]) + 1
            segment = (root.evidence / f"seg-{seq:010d}.seg").read_bytes()
            manifest = (root.evidence / f"seg-{seq:010d}.manifest").read_bytes()
    finally:
        for name, value in saved.items():
            setattr(sealer_module, name, value)
    header_len = struct.unpack(">H", segment[10:12])[0]
    out = {
        "device_public_key": keys.raw_public(device.public_key()).hex(),
        **({"device_mldsa65_public_key": device.public_key().mldsa65.public_bytes_raw().hex()}
           if isinstance(device, hybrid.SigningKey) else {}),
        "agency_public_key": keys.raw_public(agency.public_key()).hex(),
        **({"agency_key_fp": keys.fingerprint(agency.public_key())}
           if isinstance(agency, hybrid.HybridAgencyKey) else {}),
        "wrapped_key": wrapped_key.hex(),
        "chunk_plaintext_0": encode_chunk(FRAMES[0]).hex(),
        "chunk_plaintext_1": encode_chunk(FRAMES[1]).hex(),
        "header": segment[:header_len].hex(),
        "header_digest": hashlib.sha256(segment[:header_len]).hexdigest(),
    }
    pos = header_len
    for i in range(3):
        (n,) = struct.unpack(">I", segment[pos:pos + 4])
        out[f"record_{i}"] = segment[pos:pos + 4 + n + 32].hex()
        pos += 4 + n + 32
    assert pos == len(segment)
    out["segment_sha256"] = hashlib.sha256(segment).hexdigest()
    if isinstance(device, hybrid.SigningKey):
        out.update({"signed_message": manifest[:-64 - 3309].hex(), "signature": manifest[-64 - 3309:-3309].hex()})
        return out
    out.update({
        "manifest": manifest.hex(),
        "signature": manifest[-64:].hex(),
        "manifest_digest": hashlib.sha256(manifest).hexdigest(),
    })
    return out


def spec_vectors(block_name: str = "vectors") -> dict[str, str]:
    text = SPEC.read_text()
    block = re.search(f"<!-- {block_name}:begin -->\n```text\n(.*?)```\n<!-- {block_name}:end -->", text, re.S)
    assert block, "docs/FORMAT.md has no test-vector block"
    values = {}
    for line in block.group(1).splitlines():
        name, _, value = line.partition(" = ")
        values[name.strip()] = value.strip()
    return values


def test_sealer_reproduces_the_spec_vectors() -> None:
    spec = spec_vectors()
    inputs = {k: spec[k] for k in INPUTS}
    wrapped = bytes.fromhex(spec["wrapped_key"])
    agency = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(inputs["agency_private_key"]))
    assert HPKE_SUITE.decrypt(wrapped, agency, info=HPKE_INFO).hex() == inputs["data_key"]
    produced = seal_vector(inputs, wrapped)
    for name, value in produced.items():
        assert spec[name] == value, f"FORMAT.md vector {name} differs from what the sealer writes"


def test_spec_vectors_follow_the_written_rules() -> None:
    """Recompute record 1 and the signature from the spec's formulas alone, not the codecs."""
    spec = spec_vectors()
    header_digest = bytes.fromhex(spec["header_digest"])
    assert hashlib.sha256(bytes.fromhex(spec["header"])).digest() == header_digest
    record = bytes.fromhex(spec["record_1"])
    body, digest = record[4:-32], record[-32:]
    assert struct.unpack(">I", record[:4])[0] == len(body) and hashlib.sha256(body).digest() == digest
    meta = body[:21]
    assert meta == struct.pack(">BIQQ", 0, 1, 2_000_000, 2_000_000)
    nonce = bytes(4) + struct.pack(">Q", 1)
    aad = header_digest + struct.pack(">Q", 1) + meta
    ct = AESGCM(bytes.fromhex(spec["data_key"])).encrypt(nonce, bytes.fromhex(spec["chunk_plaintext_1"]), aad)
    assert body[21:] == ct
    final = bytes.fromhex(spec["record_2"])
    assert final[4] == 1 and len(final) == 4 + 21 + 16 + 32  # empty final chunk
    manifest = bytes.fromhex(spec["manifest"])
    device = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(spec["device_public_key"]))
    device.verify(manifest[-64:], manifest[:-64])
    m = Manifest.parse(manifest)
    assert m.segment_seq == 7 and m.prev_digest.hex() == spec["previous_manifest_digest"]
    assert list(m.chunk_digests) == [bytes.fromhex(spec[f"record_{i}"])[-32:] for i in range(3)]
    header = SegmentHeader.parse(bytes.fromhex(spec["header"]))
    assert header.utc_offset_us == int(spec["clock_utc_us"]) - 1_033_333
    with tempfile.TemporaryFile() as f:
        f.write(bytes.fromhex(spec["header"] + spec["record_0"] + spec["record_1"] + spec["record_2"]))
        f.seek(0)
        assert [r.meta.final for r in iter_records(f, len(header.encode()))] == [False, False, True]


def test_sealer_reproduces_the_hybrid_spec_vectors(tmp_path) -> None:
    """Suite 2 + manifest version 3: every deterministic byte, and the spec's manifest verifies."""
    from secure_store.keywrap import HPKE_SUITE_PQ, unwrap_data_key
    from secure_store.verify import decrypt_chunks, verify_segment

    spec = spec_vectors("vectors-pq")
    inputs = {k: spec[k] for k in INPUTS_PQ}
    device, agency = vector_keys(inputs)
    wrapped = bytes.fromhex(spec["wrapped_key"])
    assert len(wrapped) == 1168
    assert unwrap_data_key(wrapped, agency, suite=2).hex() == inputs["data_key"]
    wrong_mlkem = hybrid.HybridAgencyKey(mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(64)), agency.x25519)
    try:
        HPKE_SUITE_PQ.decrypt(wrapped, wrong_mlkem.hpke_key(), info=HPKE_INFO)
        raise AssertionError("the X25519 half alone opened a suite-2 data key")
    except Exception as exc:  # noqa: BLE001 - cryptography's InvalidTag / ValueError
        assert not isinstance(exc, AssertionError)
    produced = seal_vector(inputs, wrapped)
    for name, value in produced.items():
        assert spec[name] == value, f"FORMAT.md hybrid vector {name} differs from what the sealer writes"
    manifest = bytes.fromhex(spec["manifest"])
    assert manifest[:-3309] == bytes.fromhex(spec["signed_message"] + spec["signature"])
    assert hashlib.sha256(manifest).hexdigest() == spec["manifest_digest"]
    mldsa_public = mldsa.MLDSA65PublicKey.from_public_bytes(bytes.fromhex(spec["device_mldsa65_public_key"]))
    mldsa_public.verify(manifest[-3309:], manifest[:-64 - 3309])  # FIPS 204, empty context
    segment = tmp_path / "seg-0000000007.seg"
    segment.write_bytes(bytes.fromhex(spec["header"] + spec["record_0"] + spec["record_1"] + spec["record_2"]))
    segment.with_suffix(".manifest").write_bytes(manifest)
    assert hashlib.sha256(segment.read_bytes()).hexdigest() == spec["segment_sha256"]
    key = device.public_key()
    assert verify_segment(segment, key)[1] == []
    assert [c.hex() for c in decrypt_chunks(segment, agency, key)] == [spec["chunk_plaintext_0"],
                                                                      spec["chunk_plaintext_1"]]
    # The expected verdicts the spec states: stripped to version 2 fails (M2, M6); Ed25519-only key fails (M6).
    segment.with_suffix(".manifest").write_bytes(manifest[:8] + b"\x00\x02" + manifest[10:-3309])
    assert verify_segment(segment, key)[1]
    segment.with_suffix(".manifest").write_bytes(manifest)
    assert verify_segment(segment, key.ed25519)[1]


def test_hybrid_wrap_follows_the_written_rules() -> None:
    """Open the suite-2 vector from FORMAT.md's words alone: X-Wing combiner, then the RFC 9180 key schedule."""
    import hmac

    spec = spec_vectors("vectors-pq")
    _, agency = vector_keys({k: spec[k] for k in INPUTS_PQ})
    wrapped = bytes.fromhex(spec["wrapped_key"])
    ct_mlkem, ct_x25519, sealed = wrapped[:1088], wrapped[1088:1120], wrapped[1120:]
    ss_mlkem = agency.mlkem768.decapsulate(ct_mlkem)
    ss_x25519 = agency.x25519.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x25519))
    pk_x25519 = bytes.fromhex(spec["agency_public_key"])[1184:]
    shared = hashlib.sha3_256(ss_mlkem + ss_x25519 + ct_x25519 + pk_x25519 + bytes.fromhex("5c2e2f2f5e5c")).digest()
    suite_id = b"HPKE" + struct.pack(">HHH", 0x647A, 0x0001, 0x0002)

    def extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, "sha256").digest()

    def expand(prk: bytes, label: bytes, info: bytes, n: int) -> bytes:  # n ≤ 32: one HKDF block
        message = struct.pack(">H", n) + b"HPKE-v1" + suite_id + label + info + b"\x01"
        return hmac.new(prk, message, "sha256").digest()[:n]

    context = b"\x00" + extract(b"", b"psk_id_hash", b"") + extract(b"", b"info_hash", HPKE_INFO)
    secret = extract(shared, b"secret", b"")
    key, nonce = expand(secret, b"key", context, 32), expand(secret, b"base_nonce", context, 12)
    assert AESGCM(key).decrypt(nonce, sealed, b"").hex() == spec["data_key"]


def test_version_1_manifest_without_clock_block_still_parses() -> None:
    """Evidence sealed before the clock block existed (manifest version 1) stays readable."""
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric import ed25519

    import pytest

    from secure_store.errors import FormatError
    from secure_store.format import Manifest

    key = ed25519.Ed25519PrivateKey.generate()
    m = Manifest("CAM-1", b"\x01" * 32, 5, "rec-1", 0, b"\x02" * 32, False, False, 30, 0, 966_666, 10, "system",
                 10, 966_676, b"\x00" * 32, (b"\x03" * 32,), version=1)
    signed = dataclasses.replace(m, signature=key.sign(m.signed_bytes()))
    data = signed.encode()
    assert data[8:10] == b"\x00\x01"                       # version 1 on the wire
    v2 = dataclasses.replace(signed, version=2).signed_bytes()
    assert len(v2) - len(signed.signed_bytes()) == 21      # the clock block is what version 2 adds
    parsed = Manifest.parse(data)
    assert parsed.version == 1 and parsed.clock.error_us is None and parsed.encode() == data
    with pytest.raises(FormatError):
        Manifest.parse(data[:8] + b"\x00\x02" + data[10:])  # a v1 body relabelled v2 lacks the block


if __name__ == "__main__":
    from secure_store.keywrap import wrap_data_key

    pq = sys.argv[1:] == ["pq"]
    inputs, name = (INPUTS_PQ, "vectors-pq") if pq else (INPUTS, "vectors")
    _, agency_key = vector_keys(inputs)
    wrapped_key = wrap_data_key(bytes.fromhex(inputs["data_key"]), agency_key.public_key())
    outputs = seal_vector(inputs, wrapped_key)
    if pq:  # the manifest as the sealer wrote it: a (randomised) ML-DSA-65 signature makes it one of many valid ones
        device, _ = vector_keys(inputs)
        message = bytes.fromhex(outputs["signed_message"])
        manifest = message + bytes.fromhex(outputs["signature"]) + device.mldsa65.sign(message)
        outputs.update({"manifest": manifest.hex(), "manifest_digest": hashlib.sha256(manifest).hexdigest()})
    lines = [f"{k} = {v}" for k, v in {**inputs, **outputs}.items()]
    print(f"<!-- {name}:begin -->\n```text\n" + "\n".join(lines) + f"\n```\n<!-- {name}:end -->")

