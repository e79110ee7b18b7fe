"""Format-2 firmware images (hybrid vendor key: Ed25519 + ML-DSA-65): build, verify, install, refuse.

Real images on disk, real signatures, a real provisioned device root.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from firmware import update
from firmware.cli import main
from firmware.provision import provision
from firmware.update import image as fwimage
from firmware.update.image import ImageError
from firmware.update.slots import load_state
from secure_store import hybrid, keys
from secure_store.audit import read_entries
from secure_store.durable import write_atomic
from secure_store.layout import DeviceRoot

HDR = fwimage.HEADER.size


@pytest.fixture(scope="module")
def vendor() -> hybrid.SigningKey:
    return hybrid.SigningKey.generate(True)


def source(tmp: Path, version: str) -> Path:
    src = tmp / f"src-{version}"
    (src / "lib").mkdir(parents=True)
    (src / "app.py").write_bytes(f"print('{version}')\n".encode())
    (src / "lib" / "codec.bin").write_bytes(os.urandom(20_000))
    return src


def build(tmp: Path, key, version: str = "1.1.0") -> Path:
    out = tmp / f"fw-{version}-{'pq' if hybrid.as_signing_key(key).hybrid else 'classic'}.img"
    fwimage.build_image(source(tmp, version), version, key, out)
    return out


def split(blob: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(format, manifest, signature block, payload) of an image."""
    _, fmt, mlen, slen = fwimage.HEADER.unpack(blob[:HDR])
    return fmt, blob[HDR:HDR + mlen], blob[HDR + mlen:HDR + mlen + slen], blob[HDR + mlen + slen:]


def repack(fmt: int, manifest: bytes, block: bytes, payload: bytes) -> bytes:
    return fwimage.HEADER.pack(fwimage.MAGIC, fmt, len(manifest), len(block)) + manifest + block + payload


def test_hybrid_image_layout_and_round_trip(tmp_path: Path, vendor) -> None:
    img = build(tmp_path, vendor)
    fmt, manifest, block, payload = split(img.read_bytes())
    assert fmt == 2 and len(block) == 32 + 64 + 3309 == fwimage.HYBRID_SIGNATURE_BLOCK
    assert json.loads(manifest)["image_format"] == 2
    assert block[:32].hex() == keys.fingerprint(vendor.public_key())  # named by its Ed25519 half
    message = fwimage.SIGNING_CONTEXT + manifest
    vendor.ed25519.public_key().verify(block[32:96], message)
    vendor.mldsa65.public_key().verify(block[96:], message)
    checked = fwimage.verify_image(img, vendor.public_key())
    assert checked.image_format == 2 and checked.version == "1.1.0" and checked.payload_size == len(payload)


def test_each_signature_must_verify(tmp_path: Path, vendor) -> None:
    fmt, manifest, block, payload = split(build(tmp_path, vendor).read_bytes())
    message = fwimage.SIGNING_CONTEXT + manifest
    bad = tmp_path / "bad.img"
    other_pq = mldsa.MLDSA65PrivateKey.generate().sign(message)
    bad.write_bytes(repack(fmt, manifest, block[:96] + other_pq, payload))
    with pytest.raises(ImageError, match="ML-DSA-65 signature does not verify .*manifest tampered"):
        fwimage.verify_image(bad, vendor.public_key())
    other_ed = ed25519.Ed25519PrivateKey.generate().sign(message)
    bad.write_bytes(repack(fmt, manifest, block[:32] + other_ed + block[96:], payload))
    with pytest.raises(ImageError, match="^signature does not verify with the vendor key"):
        fwimage.verify_image(bad, vendor.public_key())


def test_downgrades_are_refused(tmp_path: Path, vendor) -> None:
    fmt, manifest, block, payload = split(build(tmp_path, vendor).read_bytes())
    bad = tmp_path / "bad.img"
    # The ML-DSA-65 signature stripped and the header turned into format 1.
    bad.write_bytes(repack(1, manifest, block[:96], payload))
    with pytest.raises(ImageError, match="classic-only signature from a hybrid vendor key"):
        fwimage.verify_image(bad, vendor.public_key())
    # Even for a reader with the Ed25519 half alone, the signed manifest still says format 2.
    with pytest.raises(ImageError, match="manifest says image format 2 in a format-1 image"):
        fwimage.verify_image(bad, vendor.public_key().ed25519)
    # A format-2 header with a 96-byte block.
    bad.write_bytes(repack(2, manifest, block[:96], payload))
    with pytest.raises(ImageError, match="expected 3405 in format 2"):
        fwimage.verify_image(bad, vendor.public_key())
    # A classic image (the vendor's Ed25519 half alone signing format 1) under the hybrid key.
    classic = build(tmp_path, vendor.ed25519, "1.2.0")
    assert fwimage.verify_image(classic, vendor.public_key().ed25519).image_format == 1
    with pytest.raises(ImageError, match="classic-only signature from a hybrid vendor key"):
        fwimage.verify_image(classic, vendor.public_key())
    # A hybrid image under a classic key: a signature the device cannot check protects nothing.
    with pytest.raises(ImageError, match="no ML-DSA-65 key to check it"):
        fwimage.verify_image(build(tmp_path, vendor, "1.3.0"), vendor.public_key().ed25519)


def test_header_and_manifest_format_must_agree(tmp_path: Path, vendor) -> None:
    src = source(tmp_path, "1.4.0")
    entries = [e for _, e in fwimage.collect_source(src)]
    raw = fwimage.manifest_bytes("1.4.0", "0.0.0", entries, image_format=1)   # says 1, signed by both halves
    payload = b"".join((src / e.path).read_bytes() for e in entries)
    bad = tmp_path / "bad.img"
    bad.write_bytes(repack(2, raw, fwimage.sign_manifest(raw, vendor), payload))
    with pytest.raises(ImageError, match="manifest says image format 1 in a format-2 image"):
        fwimage.verify_image(bad, vendor.public_key())


@pytest.fixture()
def hybrid_device(tmp_path: Path, vendor) -> DeviceRoot:
    """A provisioned device whose trusted vendor key (keys/vendor.pub) is hybrid."""
    for kind in ("agency", "vendor", "dock"):
        keys.write_keypair(kind, tmp_path / kind)
    root = DeviceRoot(tmp_path / "dev")
    provision(root, "CAM-7", tmp_path / "agency.pub", tmp_path / "vendor.pub", [tmp_path / "dock.pub"])
    write_atomic(root.vendor_pub, keys.public_pem(vendor.public_key()), 0o644)
    return root


def test_device_with_a_hybrid_vendor_key(tmp_path: Path, vendor, hybrid_device: DeviceRoot) -> None:
    root = hybrid_device
    classic = build(tmp_path, vendor.ed25519, "1.1.0")
    with pytest.raises(ImageError, match="classic-only signature from a hybrid vendor key"):
        update.install_image(classic, root)
    assert load_state(root)["active"] == "a"
    rejected = [e.details for e in read_entries(root.audit) if e.event == "firmware_rejected"]
    assert rejected and "classic-only signature" in rejected[-1]["reason"]
    result = update.install_image(build(tmp_path, vendor, "1.2.0"), root)
    assert (result.slot, result.version) == ("b", "1.2.0")
    assert (root.root / "firmware" / "slot-b" / "files" / "app.py").read_bytes() == b"print('1.2.0')\n"
    update.boot_slot(root)            # verified boot re-reads the format-2 manifest.bin
    update.mark_healthy(root)
    state = load_state(root)
    assert state["active"] == "b" and state["slots"]["b"]["status"] == "good"


def test_cli_build_and_inspect_with_a_hybrid_key(tmp_path: Path, vendor, capsys) -> None:
    write_atomic(tmp_path / "v.key", keys.private_pem(vendor), 0o600)
    write_atomic(tmp_path / "v.pub", keys.public_pem(vendor.public_key()), 0o644)
    write_atomic(tmp_path / "ed.pub", keys.public_pem(vendor.public_key().ed25519), 0o644)
    src = source(tmp_path, "2.0.0")
    img = tmp_path / "fw.img"
    assert main(["firmware", "build", "--version", "2.0.0", "--key", str(tmp_path / "v.key"),
                 "--out", str(img), str(src)]) == 0
    assert struct.unpack(">H", img.read_bytes()[8:10])[0] == 2
    assert main(["firmware", "inspect", str(img), "--vendor-pub", str(tmp_path / "v.pub")]) == 0
    out = capsys.readouterr().out
    assert "Ed25519 + ML-DSA-65, image format 2" in out and "OK: 2 files" in out
    assert main(["firmware", "inspect", str(img), "--vendor-pub", str(tmp_path / "ed.pub")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no ML-DSA-65 key to check it" in err and "\n" not in err


def test_flash_with_a_hybrid_dock_key_onto_a_hybrid_device(tmp_path: Path, vendor, hybrid_device: DeviceRoot,
                                                           capsys) -> None:
    """`bodycam firmware flash --dock-key` with a hybrid dock key (the link uses its Ed25519 half), over a
    real pty: the format-2 image installs; a format-1 image is refused by the device with its reason."""
    import threading

    from firmware.offload import OffloadServer, load_enrolled_docks
    from firmware.provision import open_audit
    from firmware.update.flash import FlashError, attach_firmware_commands, flash
    from hw_sim.link import LinkedPtys

    root = hybrid_device
    dock = hybrid.SigningKey.generate(True)
    write_atomic(tmp_path / "pqdock.key", keys.private_pem(dock), 0o600)
    write_atomic(root.docks / f"{keys.fingerprint(dock.public_key())[:16]}.pub",
                 keys.public_pem(dock.public_key().ed25519), 0o644)   # enrolled: the link checks Ed25519

    def served(port: str) -> threading.Thread:
        server = OffloadServer(port, store=None, audit=open_audit(root),
                               device_key=keys.load_private_key(root.device_key, "device"), device_id="CAM-7",
                               enrolled_docks=load_enrolled_docks(root.docks), idle_timeout=5.0)
        attach_firmware_commands(server, root)
        thread = threading.Thread(target=server.serve_session, kwargs={"wait": 10.0}, daemon=True)
        thread.start()
        return thread

    with LinkedPtys() as cable:
        thread = served(cable.a_path)
        with pytest.raises(FlashError, match="classic-only signature from a hybrid vendor key"):
            flash(cable.b_path, keys.load_signing_key(tmp_path / "pqdock.key", "dock"),
                  build(tmp_path, vendor.ed25519, "1.5.0"))
        thread.join(20)
    assert load_state(root)["active"] == "a"
    with LinkedPtys() as cable:
        thread = served(cable.a_path)
        assert main(["firmware", "flash", "--quiet", "--port", cable.b_path, "--dock-key",
                     str(tmp_path / "pqdock.key"), str(build(tmp_path, vendor, "1.6.0"))]) == 0
        thread.join(20)
    assert "firmware 1.6.0 installed in slot b" in capsys.readouterr().out
    assert load_state(root)["active"] == "b"
    assert (root.root / "firmware" / "slot-b" / "files" / "app.py").read_bytes() == b"print('1.6.0')\n"
