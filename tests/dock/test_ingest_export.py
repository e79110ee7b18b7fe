"""Export straight from the evidence store: real H.264 (sim camera → libx264 → sealer), ingested by
``bodycam store ingest`` into the real SeaweedFS server, exported from ``s3://`` and compared with
the export of the same evidence from local disk."""

from __future__ import annotations

import hashlib
import json
import shutil

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dock.store_config import store_config_toml
from firmware.cli import main
from secure_store import keys
from secure_store.durable import write_atomic
from secure_store.layout import DeviceRoot
from secure_store.trust import identity_json

DEVICE = "CAM-0042"


def test_export_from_the_store_equals_the_local_export(record_h264, store_config, s3, bucket, seaweed, tmp_path,
                                                        monkeypatch, capsys):
    signing, agency = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    root = DeviceRoot(tmp_path / "device")
    root.keys.mkdir(parents=True)
    record_h264(root, signing, agency, DEVICE)
    archive = tmp_path / "archive"                                      # what a dock holds after a pull
    shutil.copytree(root.evidence, archive / DEVICE / "evidence")
    shutil.copytree(root.audit, archive / DEVICE / "audit")
    write_atomic(archive / DEVICE / "identity.json", identity_json(DEVICE, signing.public_key()))
    cfg = tmp_path / "dock.toml"
    write_atomic(cfg, store_config_toml(store_config).encode(), 0o600)
    agency_file = tmp_path / "agency.key"
    write_atomic(agency_file, keys.private_pem(agency), 0o600)

    assert main(["store", "ingest", "--config", str(cfg), "--archive", str(archive)]) == 0
    assert "0 still queued; 0 conflict(s); 0 segment(s) not verified" in capsys.readouterr().out

    for name, value in {"AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_ACCESS_KEY_ID": seaweed.access_key,
                        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    url = f"s3://{bucket}/v1/test-force/{DEVICE}"
    assert main(["export", url, "--agency-key", str(agency_file), "--out", str(tmp_path / "from-store")]) == 0
    assert main(["export", str(archive / DEVICE), "--agency-key", str(agency_file),
                 "--out", str(tmp_path / "from-disk")]) == 0
    from_store = sorted((tmp_path / "from-store").glob("*.mp4"))
    from_disk = sorted((tmp_path / "from-disk").glob("*.mp4"))
    assert [p.name for p in from_store] == [p.name for p in from_disk] and len(from_store) == 2
    for a, b in zip(from_store, from_disk):                              # the very same MP4, byte for byte
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    report = json.loads(from_store[0].with_suffix(".json").read_text())
    assert {(s["suite"], s["signatures"]) for s in report["segments"]} == {(1, "ed25519")}  # headers read from the bucket
    # the frames are the camera's: numbers drawn into the picture, read back after H.264
    from hw_sim.camera import read_frame_number
    import av
    with av.open(str(from_store[0])) as container:
        numbers = [read_frame_number(f.to_ndarray(format="bgr24")) for f in container.decode(video=0)]
    assert numbers == list(range(25))

    # and a wrong agency key exports nothing, one line
    other = tmp_path / "other.key"
    write_atomic(other, keys.private_pem(X25519PrivateKey.generate()), 0o600)
    assert main(["export", url, "--agency-key", str(other), "--out", str(tmp_path / "nothing")]) == 1
    assert "sealed to another agency key" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists() or not list((tmp_path / "nothing").glob("*.mp4"))
