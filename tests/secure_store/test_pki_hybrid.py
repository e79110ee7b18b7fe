"""The hybrid agency PKI: ML-DSA-65 companion certificates, two-root trust files, hybrid trust resolution.

Real certificates throughout (cryptography.x509, Ed25519 and ML-DSA-65); every failure case
builds the forged or mismatched certificate for real and checks the reason given.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from firmware.cli import main
from secure_store import companion, hybrid, keys, pki
from secure_store.admission import AdmissionError, DeviceTrustAnchor, admit_device
from secure_store.trust import find_device_key, identity_json, pulled_device_keys, resolve_trust


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> pki.CertificateAuthority:
    authority = pki.CertificateAuthority(tmp_path_factory.mktemp("ca") / "ca")
    authority.init("Metro Police", pq=True)
    return authority


@pytest.fixture(scope="module")
def rogue(tmp_path_factory) -> pki.CertificateAuthority:
    """Another agency with the same name: its certificates must not pass for Metro Police's."""
    authority = pki.CertificateAuthority(tmp_path_factory.mktemp("rogue") / "ca")
    authority.init("Metro Police", pq=True)
    return authority


def _raw(key) -> bytes:
    return key.public_bytes_raw()


def _device_dir(tmp_path: Path, chain: list) -> Path:
    d = tmp_path / "device"
    (d / "certs").mkdir(parents=True)
    (d / "certs" / "device-x.pem").write_bytes(pki.chain_pem(chain))
    return d


def test_ca_init_pq_makes_a_second_hierarchy_and_a_two_root_file(ca) -> None:
    roots = pki.read_roots(ca.path(pki.TRUST_ROOTS))
    assert roots.hybrid and roots.ed25519 == ca.root and roots.mldsa65 == pki.read_certs(ca.path("root-mldsa65.pem"))[0]
    assert isinstance(roots.ed25519.public_key(), ed25519.Ed25519PublicKey)
    assert isinstance(roots.mldsa65.public_key(), mldsa.MLDSA65PublicKey)
    assert roots.mldsa65.signature_algorithm_oid == pki.x509.oid.SignatureAlgorithmOID.ML_DSA_65
    assert roots.mldsa65.subject == roots.ed25519.subject  # same names, second algorithm
    inter = pki.read_certs(ca.path("provisioning-mldsa65.pem"))[0]
    inter.verify_directly_issued_by(roots.mldsa65)
    assert ca.path("provisioning-mldsa65.crl.pem").is_file() and ca.path("root-mldsa65.key").stat().st_mode & 0o077 == 0
    # the file a court is given: Ed25519 first, then ML-DSA-65
    text = ca.path(pki.TRUST_ROOTS).read_bytes()
    assert text == pki.pem(roots.ed25519) + pki.pem(roots.mldsa65)


def test_hybrid_issue_certifies_both_halves(ca) -> None:
    key = hybrid.SigningKey.generate(True)
    chain = ca.issue("device", "CAM-7", key.public_key())
    assert len(chain) == 6 and [companion.key_algorithm(c) for c in chain] == ["ed25519"] * 3 + ["mldsa65"] * 3
    certified = pki.check_chain(chain, ca.roots, "device")
    assert certified.hybrid and certified.name == "CAM-7"
    assert _raw(certified.verify_key.mldsa65) == _raw(key.mldsa65.public_key())
    assert certified.key_fingerprint == keys.fingerprint(key.public_key())
    assert companion.bound_digest(chain[3]) == companion.ed25519_digest(key.ed25519.public_key())
    assert chain[3].extensions.get_extension_for_oid(companion.BINDING_OID).critical is False
    message = b"one manifest"
    certified.verify_key.verify(key.sign(message), message)  # both halves check what the key signs
    assert certified.certificates == tuple(chain)
    # the Ed25519 certificate is the classic one: a verifier with only the Ed25519 root sees a classic key
    classic = pki.check_chain(chain, ca.root, "device")
    assert not classic.hybrid and classic.companion_unchecked
    assert pki.check_chain(chain[:3], ca.roots, "device").hybrid is False


@pytest.mark.parametrize("role", ["dock", "vendor"])
def test_other_roles_get_companions_from_their_issuer(ca, role) -> None:
    key = hybrid.SigningKey.generate(True).public_key()
    chain = ca.issue(role, f"{role} 1", key)
    certified = pki.check_chain(chain, ca.roots, role)
    assert certified.hybrid and len(certified.companion_chain) == (3 if role == "dock" else 2)


def test_hybrid_keys_need_the_pq_hierarchy_and_export_stays_ed25519(tmp_path, ca) -> None:
    classic_ca = pki.CertificateAuthority(tmp_path / "classic")
    classic_ca.init("Metro Police")
    key = hybrid.SigningKey.generate(True).public_key()
    with pytest.raises(pki.PkiError, match="no ML-DSA-65 hierarchy"):
        classic_ca.issue("device", "CAM-1", key)
    with pytest.raises(pki.PkiError, match="Ed25519 alone"):
        ca.issue("export", "Exports", key)
    assert not any(classic_ca.dir.joinpath("issued").iterdir())
    # an agency moving to hybrid keys adds the ML-DSA-65 hierarchy to its CA and keeps its root
    root = classic_ca.root
    classic_ca.init("ignored", pq=True)
    assert classic_ca.root == root and classic_ca.roots.hybrid
    assert pki.check_chain(classic_ca.issue("device", "CAM-1", key), classic_ca.roots, "device").hybrid
    with pytest.raises(pki.PkiError, match="already holds a CA"):
        classic_ca.init("again", pq=True)


def test_companion_from_another_ml_dsa_root_fails(ca, rogue) -> None:
    key = hybrid.SigningKey.generate(True).public_key()
    ours, theirs = ca.issue("device", "CAM-2", key), rogue.issue("device", "CAM-2", key)
    with pytest.raises(pki.PkiError, match="ML-DSA-65 companion certificate.*not signed by"):
        pki.check_chain(ours[:3] + theirs[3:], ca.roots, "device")
    # even when the rogue ML-DSA-65 intermediate is left out and ours is there to be found
    with pytest.raises(pki.PkiError, match="companion certificate: not signed by"):
        pki.check_chain(ours[:3] + [theirs[3]] + ours[4:], ca.roots, "device")


def test_companion_binding_another_ed25519_key_fails(ca) -> None:
    a, b = hybrid.SigningKey.generate(True).public_key(), hybrid.SigningKey.generate(True).public_key()
    chain_a, chain_b = ca.issue("device", "CAM-3", a), ca.issue("device", "CAM-3", b)
    with pytest.raises(pki.PkiError, match="not bound to this Ed25519 key"):
        pki.check_chain(chain_a[:3] + chain_b[3:], ca.roots, "device")


def test_companion_for_another_subject_or_without_binding_fails(ca) -> None:
    key = hybrid.SigningKey.generate(True)
    chain = ca.issue("device", "CAM-4", key.public_key())
    pq_key, pq_inter = ca._issuer("provisioning-mldsa65")
    other_name = pki.make_certificate("device", "CAM-5", key.mldsa65.public_key(), pq_key, pq_inter, "Metro Police",
                                      binds=key.ed25519.public_key())
    with pytest.raises(pki.PkiError, match="names another subject"):
        pki.check_chain(chain[:3] + [other_name] + chain[4:], ca.roots, "device")
    unbound = pki.make_certificate("device", "CAM-4", key.mldsa65.public_key(), pq_key, pq_inter, "Metro Police")
    with pytest.raises(pki.PkiError, match="no \\(valid\\) Ed25519 binding"):
        pki.check_chain(chain[:3] + [unbound] + chain[4:], ca.roots, "device")


def test_an_ed25519_certificate_cannot_pass_as_ml_dsa(ca, tmp_path) -> None:
    key = hybrid.SigningKey.generate(True)
    chain = ca.issue("device", "CAM-6", key.public_key())
    # a companion whose ML-DSA-65 key is signed by the Ed25519 intermediate
    ed_key, ed_inter = ca._issuer("provisioning")
    cross = pki.make_certificate("device", "CAM-6", key.mldsa65.public_key(), ed_key, ed_inter, "Metro Police",
                                 binds=key.ed25519.public_key())
    with pytest.raises(pki.PkiError, match="not signed with ML-DSA-65"):
        pki.check_chain(chain[:3] + [cross] + chain[4:], ca.roots, "device")
    # an Ed25519 root in the ML-DSA-65 root's place of a trust root file
    fake = tmp_path / "roots.pem"
    fake.write_bytes(pki.pem(ca.root) + pki.pem(ca.root))
    with pytest.raises(pki.PkiError, match="optionally followed by the ML-DSA-65 root"):
        pki.read_roots(fake)
    with pytest.raises(pki.PkiError, match="key is not ML-DSA-65"):
        pki.check_roots(companion.TrustRoots(ca.root, ca.root))
    # and the ML-DSA-65 root where the Ed25519 root belongs
    with pytest.raises(pki.PkiError, match="key is not Ed25519"):
        pki.check_chain(chain, companion.TrustRoots(ca.roots.mldsa65), "device")
    fake.write_bytes(pki.pem(ca.roots.mldsa65))
    with pytest.raises(pki.PkiError, match="key is not Ed25519"):
        pki.read_roots(fake)


def test_revoking_either_certificate_makes_the_key_fail(tmp_path) -> None:
    authority = pki.CertificateAuthority(tmp_path / "ca")
    authority.init("Metro Police", pq=True)
    for revoked_index in (0, 3):  # the Ed25519 certificate, then the companion
        key = hybrid.SigningKey.generate(True).public_key()
        chain = authority.issue("device", f"CAM-R{revoked_index}", key)
        crl = authority.revoke(chain[revoked_index])
        assert crl.name == ("provisioning.crl.pem" if revoked_index == 0 else "provisioning-mldsa65.crl.pem")
        crls = pki.read_crls([authority.path("provisioning.crl.pem"), authority.path("provisioning-mldsa65.crl.pem")])
        with pytest.raises(pki.PkiError, match="revoked on"):
            pki.check_chain(chain, authority.roots, "device", crls)
        trust = resolve_trust(_device_dir(tmp_path / f"r{revoked_index}", chain), root=authority.roots, crls=crls)
        assert trust.keys == [] and any("revoked on" in p for p in trust.problems)
    # a revoked companion does not leave a classic key behind: the CLI revokes either kind too
    key = hybrid.SigningKey.generate(True).public_key()
    chain = authority.issue("device", "CAM-R9", key)
    (tmp_path / "companion.pem").write_bytes(pki.pem(chain[3]))
    assert main(["ca", "revoke", str(tmp_path / "companion.pem"), "--ca", str(authority.dir)]) == 0
    crls = pki.read_crls([authority.path("provisioning-mldsa65.crl.pem")])
    assert crls[0].get_revoked_certificate_by_serial_number(chain[3].serial_number) is not None
    assert crls[0].is_signature_valid(authority.roots.mldsa65.public_key()) is False  # signed by the intermediate
    with pytest.raises(pki.PkiError, match="revoked on"):
        pki.check_chain(chain, authority.roots, "device", crls)


def test_k1_resolves_hybrid_keys_and_says_what_they_rest_on(tmp_path, ca) -> None:
    key = hybrid.SigningKey.generate(True).public_key()
    d = _device_dir(tmp_path, ca.issue("device", "CAM-8", key))
    trust = resolve_trust(d, root=ca.roots)
    assert trust.anchored and trust.problems == [] and trust.warnings == []
    assert [k.pem() for k in trust.keys] == [key.pem()] and trust.keys[0].hybrid
    doc = trust.to_json()
    assert doc["signatures"] == "ed25519+mldsa65" and doc["device_id"] == "CAM-8"
    assert doc["device_keys_mldsa65"] == [keys.fingerprint(key)] == doc["device_keys"]
    assert doc["root_sha256"] == pki.cert_fingerprint(ca.root)
    assert doc["root_mldsa65_sha256"] == pki.cert_fingerprint(ca.roots.mldsa65)
    # only the Ed25519 root given: the key is classic, and the verifier is told why (W6)
    classic = resolve_trust(d, root=ca.root)
    assert not classic.keys[0].hybrid and classic.to_json()["signatures"] == "ed25519"
    assert len(classic.warnings) == 1 and "no ML-DSA-65 root" in classic.warnings[0]


def test_k1_classic_key_under_two_roots_is_said_to_rest_on_ed25519(tmp_path, ca) -> None:
    key = keys.generate("device").public_key()
    trust = resolve_trust(_device_dir(tmp_path, ca.issue("device", "CAM-9", key)), root=ca.roots)
    assert trust.keys[0].ed25519.public_bytes_raw() == key.public_bytes_raw() and not trust.keys[0].hybrid
    assert len(trust.warnings) == 1 and "Ed25519 alone" in trust.warnings[0]


def test_k1_companion_in_a_file_that_fails_is_a_failure_not_a_downgrade(tmp_path, ca, rogue) -> None:
    key = hybrid.SigningKey.generate(True).public_key()
    ours, theirs = ca.issue("device", "CAM-10", key), rogue.issue("device", "CAM-10", key)
    trust = resolve_trust(_device_dir(tmp_path, ours[:3] + theirs[3:]), root=ca.roots)
    assert trust.keys == [] and any("companion certificate" in p for p in trust.problems)
    # the same key certified classic in one file and hybrid in another stays hybrid
    d = _device_dir(tmp_path / "two", ours)
    (d / "certs" / "device-classic.pem").write_bytes(pki.chain_pem(ours[:3]))
    both = resolve_trust(d, root=ca.roots)
    assert [k.hybrid for k in both.keys] == [True] and both.problems == []


def test_k2_and_k3_read_two_block_keys(tmp_path) -> None:
    key = hybrid.SigningKey.generate(True)
    pub = tmp_path / "device.pub"
    pub.write_bytes(key.public_key().pem())
    given = resolve_trust(tmp_path / "nowhere", [keys.load_verify_key(pub, "device")])
    assert given.keys[0].hybrid and given.to_json()["signatures"] == "ed25519+mldsa65"
    found = find_device_key(tmp_path)  # K3: device.pub beside the evidence
    assert found.key.pem() == key.public_key().pem()
    old = hybrid.SigningKey.generate(True).public_key()
    d = tmp_path / "dock-copy"
    (d / "keys" / "retired").mkdir(parents=True)
    (d / "keys" / "retired" / "device-old.pub").write_bytes(old.pem())
    doc = json.loads(identity_json("CAM-11", key.public_key()))
    assert doc["public_key_pem"].count("BEGIN PUBLIC KEY") == 2
    doc["retired_device_keys"] = [keys.fingerprint(old)]
    (d / "identity.json").write_text(json.dumps(doc))
    trust = resolve_trust(d)
    assert [k.pem() for k in trust.keys] == [key.public_key().pem(), old.pem()]
    assert trust.device_id == "CAM-11" and trust.to_json()["signatures"] == "ed25519+mldsa65"
    doc["public_key_pem"] = doc["public_key_pem"] + keys.public_pem(keys.generate("agency").public_key()).decode()
    (d / "identity.json").write_text(json.dumps(doc))
    assert "3 PEM blocks" in resolve_trust(d).problems[0]


def test_dock_admits_a_hybrid_device_and_records_both_halves(tmp_path, ca) -> None:
    key = hybrid.SigningKey.generate(True).public_key()
    chain_pem = pki.chain_pem(ca.issue("device", "CAM-12", key)).decode()
    d = tmp_path / "dock" / "CAM-12"
    fp = admit_device(d, "CAM-12", key.ed25519, chain_pem, ca.roots)  # the link names the Ed25519 half
    assert fp == pki.cert_fingerprint(pki.load_certs(chain_pem.encode(), "x")[0])
    assert find_device_key(d).key.pem() == key.pem()
    assert [k.pem() for k in pulled_device_keys(d, key.ed25519)] == [key.pem()]
    stored = pki.read_certs(next((d / "certs").glob("device-*.pem")))
    assert len(stored) == 6  # both chains, so that verify --trust finds the companion later
    assert resolve_trust(d, root=ca.roots).keys[0].hybrid
    # a pinning dock (no root) pins the companion's key with the Ed25519 key
    pinned = tmp_path / "pinning" / "CAM-12"
    admit_device(pinned, "CAM-12", key.ed25519, chain_pem)
    assert find_device_key(pinned).key.pem() == key.pem()


def test_dock_refuses_a_device_whose_companion_is_not_its_agencys(tmp_path, ca, rogue) -> None:
    key = hybrid.SigningKey.generate(True).public_key()
    ours, theirs = ca.issue("device", "CAM-15", key), rogue.issue("device", "CAM-15", key)
    d = tmp_path / "dock" / "CAM-15"
    with pytest.raises(AdmissionError, match="refused: .*companion certificate"):
        admit_device(d, "CAM-15", key.ed25519, pki.chain_pem(ours[:3] + theirs[3:]).decode(), ca.roots)
    assert not d.exists()  # nothing recorded for a device that was not admitted
    # a dock given only the Ed25519 root admits it as classic and keeps the companion for later verifiers
    admit_device(d, "CAM-15", key.ed25519, pki.chain_pem(ours).decode(), ca.root)
    assert not find_device_key(d).key.hybrid and len(pki.read_certs(next((d / "certs").glob("*.pem")))) == 6
    assert resolve_trust(d, root=ca.roots).keys[0].pem() == key.pem()


def test_device_takes_ml_dsa_revocation_lists_beside_the_ed25519_ones(tmp_path) -> None:
    authority = pki.CertificateAuthority(tmp_path / "ca")
    authority.init("Metro Police", pq=True)
    device = hybrid.SigningKey.generate(True).public_key()
    root_dir = tmp_path / "device"
    (root_dir / "keys").mkdir(parents=True)
    (root_dir / "keys" / "agency-root.pem").write_bytes(authority.roots.pem())
    (root_dir / "certs").mkdir()
    (root_dir / "certs" / f"device-{keys.fingerprint(device)[:16]}.pem").write_bytes(
        pki.chain_pem(authority.issue("device", "CAM-13", device)))
    anchor = DeviceTrustAnchor(root_dir, device)
    dock = hybrid.SigningKey.generate(True).public_key()
    dock_chain = authority.issue("dock", "Dock 1", dock)
    assert anchor.admit_dock(dock.ed25519.public_bytes_raw(), pki.chain_pem(dock_chain).decode()) is not None
    authority.revoke(dock_chain[3])  # its companion only
    names = {anchor.install_crl(authority.path(f"provisioning{s}.crl.pem").read_bytes()) for s in ("", "-mldsa65")}
    assert names == {"provisioning.crl.pem", "provisioning-mldsa65.crl.pem"}
    assert anchor.admit_dock(dock.ed25519.public_bytes_raw(), pki.chain_pem(dock_chain).decode()) is None


def test_ca_cli_pq(tmp_path, capsys) -> None:
    ca_dir = tmp_path / "ca"
    assert main(["ca", "init", str(ca_dir), "--org", "Metro Police", "--pq"]) == 0
    assert "trust-roots.pem" in capsys.readouterr().out
    keys.write_keypair("device", tmp_path / "cam", pq=True)
    out = tmp_path / "cam.pem"
    assert main(["ca", "issue", "device", "CAM-14", "--pub", str(tmp_path / "cam.pub"), "--ca", str(ca_dir),
                 "--out", str(out)]) == 0
    assert "ML-DSA-65 companion" in capsys.readouterr().out
    certified = pki.check_chain(pki.read_certs(out), pki.read_roots(ca_dir / pki.TRUST_ROOTS), "device")
    assert certified.verify_key.pem() == keys.load_verify_key(tmp_path / "cam.pub", "device").pem()
    # a CA without the ML-DSA-65 hierarchy refuses a hybrid key in one line, exit 1, nothing written
    assert main(["ca", "init", str(tmp_path / "old"), "--org", "Metro Police"]) == 0
    capsys.readouterr()
    code = main(["ca", "issue", "device", "CAM-14", "--pub", str(tmp_path / "cam.pub"), "--ca", str(tmp_path / "old"),
                 "--out", str(tmp_path / "refused.pem")])
    err = capsys.readouterr().err
    assert code == 1 and "no ML-DSA-65 hierarchy" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "refused.pem").exists()


def test_verify_cli_reads_a_two_root_trust_file(tmp_path, capsys) -> None:
    ca_dir = tmp_path / "ca"
    assert main(["ca", "init", str(ca_dir), "--org", "Metro Police", "--pq"]) == 0
    bad = tmp_path / "three.pem"
    bad.write_bytes((ca_dir / pki.TRUST_ROOTS).read_bytes() + (ca_dir / "provisioning.pem").read_bytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["verify", str(empty), "--trust", str(bad)]) == 2
    assert "--trust wants the agency root certificate" in capsys.readouterr().err
    assert main(["verify", str(empty), "--trust", str(ca_dir / pki.TRUST_ROOTS)]) == 1  # nothing there: no evidence


def test_binding_extension_vector_of_format_md(ca) -> None:
    """FORMAT.md, Agency PKI, "Test vector (binding extension)": the exact DER in a companion certificate."""
    key = hybrid.SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
                            mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(range(32, 64))))
    assert key.ed25519.public_key().public_bytes_raw().hex() == \
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    want = bytes.fromhex("303a06146982ea8cf8b3e09eca9297aab4c6f79fccd7a01b0422042056475aa75463474c0285df5dbf2bcab7"
                         "3da651358839e9b77481b2eab107708c")
    chain = ca.issue("device", "cam-0001", key.public_key())
    assert want in chain[3].tbs_certificate_bytes and want not in chain[0].tbs_certificate_bytes
    assert companion.BINDING_OID.dotted_string == "2.25.240657458978498196203840264463105511451"
    assert companion.bound_digest(chain[3]).hex() == want[-32:].hex()
    assert pki.check_chain(chain, ca.roots, "device").hybrid
