"""Hybrid key files: two PEM blocks in one file, each half checked, nothing dropped by accident."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, x25519

from secure_store import hybrid, keys


def _raw(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_hybrid_agency_key_file_round_trips_and_names_both_halves(tmp_path):
    key_path, pub_path = keys.write_keypair("agency", tmp_path / "agency", pq=True)
    private = keys.load_private_key(key_path, "agency")
    public = keys.load_public_key(pub_path, "agency")
    assert isinstance(private, hybrid.HybridAgencyKey) and isinstance(public, hybrid.HybridAgencyPublicKey)
    assert key_path.read_bytes().count(b"-----BEGIN PRIVATE KEY-----") == 2
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    raw = public.mlkem768.public_bytes_raw() + _raw(public.x25519)
    assert len(raw) == 1216 and keys.raw_public(public) == raw
    assert keys.fingerprint(public) == hashlib.sha256(raw).hexdigest()
    assert private.public_key().raw() == raw
    # The classic block comes first, so a tool reading one block sees the X25519 key.
    first = serialization.load_pem_public_key(pub_path.read_bytes().split(b"-----END PUBLIC KEY-----")[0]
                                              + b"-----END PUBLIC KEY-----\n")
    assert _raw(first) == _raw(public.x25519)


def test_classic_agency_key_still_loads_as_x25519(tmp_path):
    key_path, pub_path = keys.write_keypair("agency", tmp_path / "agency")
    assert isinstance(keys.load_private_key(key_path, "agency"), x25519.X25519PrivateKey)
    assert isinstance(keys.load_public_key(pub_path, "agency"), x25519.X25519PublicKey)


def test_hybrid_signing_key_signs_with_both_and_is_named_by_its_ed25519_half(tmp_path):
    key_path, pub_path = keys.write_keypair("device", tmp_path / "device", pq=True)
    signer = keys.load_signing_key(key_path, "device")
    verifier = keys.load_verify_key(pub_path, "device")
    assert signer.hybrid and verifier.hybrid
    sigs = signer.sign(b"manifest bytes")
    assert len(sigs.ed25519) == 64 and len(sigs.mldsa65) == hybrid.MLDSA65_SIGNATURE_LEN
    verifier.verify(sigs, b"manifest bytes")
    assert keys.fingerprint(verifier) == hashlib.sha256(_raw(verifier.ed25519)).hexdigest()


@pytest.mark.parametrize("broken", ["ed25519", "mldsa65", "missing_mldsa65"])
def test_a_hybrid_key_needs_both_signatures_valid(broken):
    signer = hybrid.SigningKey.generate(True)
    sigs = signer.sign(b"m")
    if broken == "ed25519":
        sigs = hybrid.Signatures(bytes([sigs.ed25519[0] ^ 1]) + sigs.ed25519[1:], sigs.mldsa65)
    elif broken == "mldsa65":
        sigs = hybrid.Signatures(sigs.ed25519, sigs.mldsa65[:-1] + bytes([sigs.mldsa65[-1] ^ 1]))
    else:
        sigs = hybrid.Signatures(sigs.ed25519, None)
    with pytest.raises(InvalidSignature):
        signer.public_key().verify(sigs, b"m")


def test_a_classic_key_refuses_an_ml_dsa_signature_it_cannot_check():
    signer = hybrid.SigningKey.generate(True)
    classic = hybrid.VerifyKey(signer.ed25519.public_key())
    with pytest.raises(InvalidSignature):
        classic.verify(signer.sign(b"m"), b"m")
    classic.verify(hybrid.Signatures(signer.ed25519.sign(b"m")), b"m")


def test_the_plain_loaders_refuse_a_hybrid_signing_key_rather_than_drop_its_pq_half(tmp_path):
    key_path, pub_path = keys.write_keypair("vendor", tmp_path / "vendor", pq=True)
    with pytest.raises(keys.KeyFileError, match="hybrid vendor key"):
        keys.load_private_key(key_path, "vendor")
    with pytest.raises(keys.KeyFileError, match="hybrid vendor key"):
        keys.load_public_key(pub_path, "vendor")


def test_classic_files_load_as_classic_signing_keys(tmp_path):
    key_path, pub_path = keys.write_keypair("dock", tmp_path / "dock")
    assert not keys.load_signing_key(key_path, "dock").hybrid
    assert isinstance(keys.load_verify_key(pub_path, "dock").ed25519, ed25519.Ed25519PublicKey)


def _blocks(*keys_):
    return b"".join(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()) for k in keys_)


@pytest.mark.parametrize("content, message", [
    (lambda: _blocks(mldsa.MLDSA65PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()), "first block"),
    (lambda: _blocks(ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()), "second block"),
    (lambda: _blocks(*[ed25519.Ed25519PrivateKey.generate()] * 3), "3 PEM blocks"),
    (lambda: _blocks(ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate()) + b"junk\n",
     "outside the PEM blocks"),
])
def test_a_malformed_hybrid_key_file_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "device.key"
    path.write_bytes(content())
    with pytest.raises(keys.KeyFileError, match=message) as err:
        keys.load_signing_key(path, "device")
    assert "\n" not in str(err.value)


def test_an_export_key_has_no_post_quantum_form(tmp_path):
    with pytest.raises(keys.KeyFileError, match="no post-quantum form"):
        keys.write_keypair("export", tmp_path / "export", pq=True)
    assert not list(tmp_path.iterdir())
