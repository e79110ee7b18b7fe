"""Export of segments wrapped with the hybrid suite 2: real H.264, real ML-KEM-768 + X25519, read back."""

from __future__ import annotations

import json
from pathlib import Path

import av

from firmware.cli import main
from hw_sim.camera import read_frame_number
from secure_store import hybrid, keys
from secure_store.store import EvidenceStore


def _frame_numbers(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [read_frame_number(f.to_ndarray(format="gray")) for f in container.decode(container.streams.video[0])]


def test_cli_exports_a_hybrid_wrapped_recording(tmp_path: Path, make_device, capsys) -> None:
    device = make_device(tmp_path / "device")
    device.agency_key = hybrid.HybridAgencyKey.generate()  # provisioned with a hybrid agency key: suite 2
    device.store = EvidenceStore(device.root, device_id="CAM-0042", signing_key=device.signing_key,
                                 agency_public_key=device.agency_key.public_key(), audit=device.audit,
                                 clock=lambda: device.now, reserve_bytes=0)
    device.record("rec-pq", 0, 25)
    pulled = device.offload(tmp_path / "pulled")
    agency = tmp_path / "agency.key"
    agency.write_bytes(keys.private_pem(device.agency_key))

    assert main(["export", str(pulled), "--agency-key", str(agency), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert _frame_numbers(tmp_path / "out" / "CAM-0042_rec-pq.mp4") == list(range(25))
    report = json.loads((tmp_path / "out" / "CAM-0042_rec-pq.json").read_text())
    assert {(s["suite"], s["key_wrap"], s["signatures"]) for s in report["segments"]} == {
        (2, "hpke-mlkem768-x25519", "ed25519")}
    html = (tmp_path / "out" / "CAM-0042_rec-pq.html").read_text()
    assert "signed Ed25519; key wrapped ML-KEM-768 + X25519 (post-quantum)" in html

    # The X25519 half alone: refused with one line that says why, nothing written.
    half = tmp_path / "x25519-only.key"
    half.write_bytes(keys.private_pem(device.agency_key.x25519))
    assert main(["export", str(pulled), "--agency-key", str(half), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "sealed with suite 2 (hybrid ML-KEM-768 + X25519); this agency key is X25519 only" in err
    assert "Traceback" not in err and not (tmp_path / "o2").exists()
