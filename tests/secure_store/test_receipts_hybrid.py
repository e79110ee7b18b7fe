"""Hybrid receipts (version 2): a hybrid dock key signs with Ed25519 and ML-DSA-65, names both keys.

Real files, real ML-DSA-65. Readers check both signatures; stripping one, or reading a
classic receipt where the certified dock key is hybrid, fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from secure_store import hybrid, strict_json
from secure_store.errors import FormatError
from secure_store.receipts import SIGNATURE_CONTEXT, certification_problem, parse_receipt, read_receipts, \
    write_receipt

ROOT = Path(__file__).resolve().parents[2]
FORMAT = (ROOT / "docs" / "FORMAT.md").read_text()
FP = "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c"
HEAD = (1, "a1e7547892abef3d2d1d2c24f8414deb28ffbed93bb3070956fb8cc026a37c1f")
MANIFESTS = [(7, "46a0b8497ed778717de803a429fc2890138d11124c088067dc3b39a679f32b89")]
PQ_MARK = b'","sig_mldsa65":"'


@pytest.fixture(scope="module")
def dock() -> hybrid.SigningKey:
    return hybrid.SigningKey.generate(True)


def _write(directory: Path, key) -> tuple[Path, bytes]:
    path = write_receipt(directory, key, "cam-0001", FP, "", HEAD, MANIFESTS)
    return path, path.read_bytes()


def _split(line: bytes) -> tuple[bytes, bytes, bytes]:
    assert line[-4431:-4414] == PQ_MARK
    return line[8:-4567], bytes.fromhex(line[-4559:-4431].decode()), base64.b64decode(line[-4414:-2])


def _line(body: bytes, ed_sig: bytes, pq_sig: bytes | None) -> bytes:
    tail = PQ_MARK + base64.b64encode(pq_sig) if pq_sig is not None else b""
    return b'{"body":' + body + b',"sig":"' + ed_sig.hex().encode() + tail + b'"}\n'


def test_hybrid_receipt_round_trip(tmp_path: Path, dock) -> None:
    path, data = _write(tmp_path, dock)
    body, ed_sig, pq_sig = _split(data[:-1])
    obj = json.loads(body)
    assert obj["v"] == 2 and strict_json.dumps(obj) == body
    assert base64.b64decode(obj["dock_key_mldsa65"]) == dock.mldsa65.public_key().public_bytes_raw()
    assert obj["dock_key"] == dock.ed25519.public_key().public_bytes_raw().hex()
    dock.ed25519.public_key().verify(ed_sig, SIGNATURE_CONTEXT + body)     # same bytes, same context
    dock.mldsa65.public_key().verify(pq_sig, SIGNATURE_CONTEXT + body)
    receipt = parse_receipt(data, 1, path.name)
    assert receipt.version == 2 and receipt.verify_key.hybrid and receipt.manifests == tuple(MANIFESTS)
    assert receipt.digest == hashlib.sha256(data[:-1]).hexdigest()
    # The next receipt chains to it; a classic receipt after a hybrid one (a re-keyed dock) too.
    write_receipt(tmp_path, dock.ed25519, "cam-0001", FP, "", HEAD, [])
    found, problems = read_receipts(tmp_path)
    assert problems == [] and [r.version for r in found] == [2, 1] and found[1].prev == receipt.digest


def test_bad_mldsa_with_good_ed25519_fails_and_the_reverse(tmp_path: Path, dock) -> None:
    _, data = _write(tmp_path, dock)
    body, ed_sig, pq_sig = _split(data[:-1])
    other_pq = mldsa.MLDSA65PrivateKey.generate().sign(SIGNATURE_CONTEXT + body)
    with pytest.raises(FormatError, match="signature does not verify"):
        parse_receipt(_line(body, ed_sig, other_pq), 1, "r")
    other_ed = ed25519.Ed25519PrivateKey.generate().sign(SIGNATURE_CONTEXT + body)
    with pytest.raises(FormatError, match="signature does not verify"):
        parse_receipt(_line(body, other_ed, pq_sig), 1, "r")
    assert parse_receipt(_line(body, ed_sig, pq_sig), 1, "r").version == 2


def test_stripped_pq_signature_never_passes(tmp_path: Path, dock) -> None:
    _, data = _write(tmp_path, dock)
    body, ed_sig, _ = _split(data[:-1])
    with pytest.raises(FormatError, match="version-2 receipt without its ML-DSA-65 signature"):
        parse_receipt(_line(body, ed_sig, None), 1, "r")
    obj = json.loads(body)
    obj["v"] = 1
    del obj["dock_key_mldsa65"]
    classic_body = strict_json.dumps(obj)
    with pytest.raises(FormatError, match="signature does not verify"):
        parse_receipt(_line(classic_body, ed_sig, None), 1, "r")
    # Re-signed with the Ed25519 half alone it is a valid classic receipt on its own, but not
    # under the certified hybrid dock key (R2).
    resigned = parse_receipt(_line(classic_body, dock.ed25519.sign(SIGNATURE_CONTEXT + classic_body), None), 1, "r")
    assert resigned.version == 1
    assert certification_problem(resigned, dock.public_key()) == \
        "classic-only signature from a hybrid dock key (ML-DSA-65 signature missing)"
    assert certification_problem(resigned, dock.public_key().ed25519) is None


def test_certification_matches_the_hybrid_key(tmp_path: Path, dock) -> None:
    _, data = _write(tmp_path, dock)
    receipt = parse_receipt(data, 1, "r")
    assert certification_problem(receipt, dock.public_key()) is None
    assert certification_problem(receipt, SimpleNamespace(verify_key=dock.public_key())) is None  # pki.CertifiedKey
    assert certification_problem(receipt, dock.public_key().ed25519) == \
        "hybrid receipt, but the dock's certificate has no ML-DSA-65 key to check it"
    stranger = hybrid.VerifyKey(dock.public_key().ed25519, mldsa.MLDSA65PrivateKey.generate().public_key())
    assert certification_problem(receipt, stranger) == "names an ML-DSA-65 dock key that is not the certified one"


def test_v1_receipt_with_a_pq_signature_and_bad_key_fields_are_refused(tmp_path: Path, dock) -> None:
    classic = write_receipt(tmp_path / "c", dock.ed25519, "cam-0001", FP, "", HEAD, []).read_bytes()
    body = classic[8:-139]
    with pytest.raises(FormatError, match="version-1 receipt with an ML-DSA-65 signature"):
        parse_receipt(_line(body, dock.ed25519.sign(SIGNATURE_CONTEXT + body),
                            dock.mldsa65.sign(SIGNATURE_CONTEXT + body)), 1, "r")
    _, data = _write(tmp_path / "h", dock)
    body, _, _ = _split(data[:-1])
    obj = json.loads(body)
    good = obj["dock_key_mldsa65"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    unused_bits = good[:-2] + alphabet[alphabet.index(good[-2]) | 1] + "="  # same bytes to a lax decoder
    for bad in (good[:-4], good.replace("=", "A"), unused_bits, 5,
                base64.urlsafe_b64encode(base64.b64decode(good)).decode() if "+" in good or "/" in good else "@"):
        obj["dock_key_mldsa65"] = bad
        mangled = strict_json.dumps(obj)
        line = _line(mangled, dock.ed25519.sign(SIGNATURE_CONTEXT + mangled), dock.mldsa65.sign(SIGNATURE_CONTEXT + mangled))
        with pytest.raises(FormatError, match="dock_key_mldsa65 is not the base64"):
            parse_receipt(line, 1, "r")
    obj["dock_key_mldsa65"] = good
    obj["extra"] = 1
    mangled = strict_json.dumps(obj)
    with pytest.raises(FormatError, match="fields are not"):
        parse_receipt(_line(mangled, dock.ed25519.sign(SIGNATURE_CONTEXT + mangled),
                            dock.mldsa65.sign(SIGNATURE_CONTEXT + mangled)), 1, "r")


def test_spec_hybrid_receipt_vector(tmp_path: Path) -> None:
    """The hybrid receipt vector in docs/FORMAT.md: its keys, its line, its verdicts."""
    section = FORMAT.split("<!-- receipt-hybrid-vector -->")[1]
    line = section.split("```text\n")[1].split("\n```")[0].encode()
    digest = re.search(r"Its digest is\s+`([0-9a-f]{64})`", FORMAT).group(1)
    key = hybrid.SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(0x40, 0x60))),
                            mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(range(0x60, 0x80))))
    assert hashlib.sha256(key.mldsa65.public_key().public_bytes_raw()).hexdigest() in FORMAT
    receipt = parse_receipt(line + b"\n", 1, "vector")
    assert receipt.digest == digest == hashlib.sha256(line).hexdigest()
    assert receipt.version == 2 and receipt.manifests == tuple(MANIFESTS) and receipt.audit_head == HEAD
    assert certification_problem(receipt, key.public_key()) is None
    assert certification_problem(receipt, key.public_key().ed25519) is not None
    with pytest.raises(FormatError, match="signature"):
        parse_receipt(line.replace(b'"seq":7', b'"seq":8') + b"\n", 1, "vector")
    # The writer makes the same body; only the hedged ML-DSA-65 signature differs.
    written = write_receipt(tmp_path, key, receipt.device_id, receipt.device_key, "", receipt.audit_head,
                            receipt.manifests, utc=receipt.utc).read_bytes()
    assert written[:-4414 - 3] == line[:-4414 - 2] and parse_receipt(written, 1, "w").version == 2
