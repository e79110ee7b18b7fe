"""Dock → evidence store against a real SeaweedFS S3 server: locked, create-only, checked, resumable.

No mocks: every test talks to the session's ``weed mini`` through boto3; network faults come
from a real TCP relay (hw_sim.network) between the dock and the server.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from dock.ingest import Ingestor, ObjectConflict, StoreRefused
from dock.store_config import StoreConfigError, load_store_config, store_config_toml
from hw_sim.network import TcpRelay

DEVICE = "CAM-0042"
PREFIX = f"v1/test-force/{DEVICE}"


def _device_dir(archive: Path, segments: dict[str, bytes]) -> Path:
    """A dock archive's device directory holding ``segments`` (name → bytes) and their manifests."""
    d = archive / DEVICE
    (d / "evidence").mkdir(parents=True)
    (d / "audit").mkdir()
    (d / "identity.json").write_bytes(b'{"device_id": "CAM-0042"}\n')
    (d / "audit" / "audit-0001.log").write_bytes(b"entry 1\n")
    for name, data in segments.items():
        (d / "evidence" / name).write_bytes(data)
        (d / "evidence" / name.replace(".seg", ".manifest")).write_bytes(hashlib.sha256(data).digest() * 9)
    return d


def _get(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def test_segment_goes_in_locked_create_only_and_byte_identical(store_config, s3, bucket, tmp_path):
    big, small = os.urandom(13 * 2**20 + 17), os.urandom(300_000)     # one in 3 parts, one in one put
    d = _device_dir(tmp_path, {"seg-0000000001.seg": big, "seg-0000000002.seg": small})
    ingestor = Ingestor(store_config, tmp_path)
    ingestor.check_bucket()
    assert ingestor.segment_held(d, "seg-0000000001.seg") and ingestor.segment_held(d, "seg-0000000002.seg")
    assert ingestor.pending() == []
    for name, data in (("seg-0000000001.seg", big), ("seg-0000000002.seg", small)):
        key = f"{PREFIX}/evidence/{name}"
        assert _get(s3, bucket, key) == data
        assert _get(s3, bucket, key.replace(".seg", ".manifest")) == (d / "evidence" / name).with_suffix(
            ".manifest").read_bytes()
        retention = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]
        assert retention["Mode"] == "COMPLIANCE"
        left = retention["RetainUntilDate"] - dt.datetime.now(dt.timezone.utc)
        assert dt.timedelta(hours=23) < left <= dt.timedelta(days=1)
    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/evidence/seg-0000000002.seg", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(small).digest()).decode()
    assert _get(s3, bucket, f"{PREFIX}/identity.json") == b'{"device_id": "CAM-0042"}\n'
    # idempotent: again, nothing changes and nothing is re-sent as a new object
    versions_before = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert Ingestor(store_config, tmp_path).segment_held(d, "seg-0000000002.seg")
    assert len(s3.list_object_versions(Bucket=bucket)["Versions"]) == len(versions_before)


def test_audit_log_snapshots_are_kept_each_under_its_own_key(store_config, s3, bucket, tmp_path):
    d = _device_dir(tmp_path, {})
    ingestor = Ingestor(store_config, tmp_path)
    ingestor.enqueue_device(d)
    assert ingestor.drain() == (2, 0)
    (d / "audit" / "audit-0001.log").write_bytes(b"entry 1\nentry 2\n")
    ingestor.enqueue_device(d)
    ingestor.drain()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/audit/")["Contents"])
    assert [_get(s3, bucket, k) for k in keys] == [b"entry 1\n", b"entry 1\nentry 2\n"]
    assert keys[1].endswith("/0000000000000016-" + hashlib.sha256(b"entry 1\nentry 2\n").hexdigest())


def test_the_server_refuses_delete_and_retention_shortening(store_config, s3, bucket, tmp_path):
    data = os.urandom(50_000)
    d = _device_dir(tmp_path, {"seg-0000000001.seg": data})
    assert Ingestor(store_config, tmp_path).segment_held(d, "seg-0000000001.seg")
    key = f"{PREFIX}/evidence/seg-0000000001.seg"
    version = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
    until = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]["RetainUntilDate"]
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
    assert _code(exc) == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True)
    assert _code(exc) == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        s3.put_object_retention(Bucket=bucket, Key=key, VersionId=version, Retention={
            "Mode": "COMPLIANCE", "RetainUntilDate": until - dt.timedelta(hours=1)})
    assert _code(exc) == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        s3.put_object_retention(Bucket=bucket, Key=key, VersionId=version, Retention={
            "Mode": "GOVERNANCE", "RetainUntilDate": until})
    assert _code(exc) == "AccessDenied"
    with pytest.raises(ClientError) as exc:      # create-only: a second write of the key is refused
        s3.put_object(Bucket=bucket, Key=key, Body=b"other", IfNoneMatch="*")
    assert _code(exc) == "PreconditionFailed"
    with pytest.raises(ClientError):
        s3.delete_bucket(Bucket=bucket)
    assert _get(s3, bucket, key) == data
    assert s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read() == data


def test_nothing_in_bodycam_calls_a_delete():
    root = Path(__file__).resolve().parents[2]
    for path in [*root.glob("dock/*.py"), *root.glob("secure_store/*.py"), *root.glob("export/*.py")]:
        text = path.read_text()
        for call in ("delete_object", "delete_bucket", "abort_multipart_upload", "put_object_retention",
                     "BypassGovernanceRetention"):
            assert call not in text, f"{path.name} calls {call}"


def test_other_bytes_at_the_key_are_a_conflict_and_both_copies_are_kept(store_config, s3, bucket, tmp_path):
    ours = os.urandom(40_000)
    d = _device_dir(tmp_path, {"seg-0000000001.seg": ours})
    key = f"{PREFIX}/evidence/seg-0000000001.seg"
    s3.put_object(Bucket=bucket, Key=key, Body=b"somebody else's bytes")
    ingestor = Ingestor(store_config, tmp_path)
    assert not ingestor.segment_held(d, "seg-0000000001.seg")
    assert ingestor.conflicts == [key]
    assert _get(s3, bucket, key) == b"somebody else's bytes"                       # never overwritten
    kept = f"{PREFIX}/conflicts/evidence/seg-0000000001.seg/{hashlib.sha256(ours).hexdigest()}"
    assert _get(s3, bucket, kept) == ours                                            # ours kept, locked
    assert s3.get_object_retention(Bucket=bucket, Key=kept)["Retention"]["Mode"] == "COMPLIANCE"
    assert (d / "evidence" / "seg-0000000001.seg").read_bytes() == ours             # and on the dock
    parked = list((tmp_path / ".ingest" / "conflicts").glob("*.json"))
    assert [json.loads(p.read_bytes())["key"] for p in parked] == [key]
    with pytest.raises(ObjectConflict):
        Ingestor(store_config, tmp_path).ingest(ingestor.enqueue(d, "evidence/seg-0000000001.seg"))


@pytest.mark.parametrize("fault, message", [
    ("missing", "does not exist"),
    ("no-lock", "has no Object Lock; refusing to ingest"),
    ("credentials", "refused the dock's credentials"),
])
def test_refuses_a_bad_bucket_or_credentials_in_one_line(store_config, s3, fault, message, tmp_path):
    config = store_config
    if fault == "missing":
        config = dataclasses.replace(config, bucket="no-such-bucket-here")
    elif fault == "no-lock":
        s3.create_bucket(Bucket=config.bucket + "-x")
        config = dataclasses.replace(config, bucket=config.bucket + "-x")
    else:
        config = dataclasses.replace(config, secret_access_key="not-the-secret")
    with pytest.raises(StoreRefused) as exc:
        Ingestor(config, tmp_path).check_bucket()
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_store_outage_queues_durably_and_a_restarted_dock_uploads_later(seaweed, store_config, s3, bucket,
                                                                         tmp_path):
    data = os.urandom(200_000)
    d = _device_dir(tmp_path, {"seg-0000000001.seg": data})
    with TcpRelay(("127.0.0.1", seaweed.s3_port)) as net:
        config = dataclasses.replace(store_config, endpoint=net.endpoint)
        net.cut()
        assert not Ingestor(config, tmp_path).segment_held(d, "seg-0000000001.seg")
        assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
        net.restore()
        restarted = Ingestor(config, tmp_path)                   # a new process: only the queue remains
        assert {u.key.rsplit("/", 1)[-1] for u in restarted.pending()} == {
            "identity.json", "seg-0000000001.seg", "seg-0000000001.manifest"}
        assert restarted.drain() == (3, 0)
    assert _get(s3, bucket, f"{PREFIX}/evidence/seg-0000000001.seg") == data


def test_network_cut_mid_multipart_upload_resumes_with_the_parts_already_sent(seaweed, store_config, s3,
                                                                               bucket, tmp_path):
    data = os.urandom(16 * 2**20)                                 # 4 parts of 5 MiB (the last one 1 MiB)
    d = _device_dir(tmp_path, {"seg-0000000001.seg": data})
    config = dataclasses.replace(store_config, max_concurrency=1)
    with TcpRelay(("127.0.0.1", seaweed.s3_port)) as net:
        config = dataclasses.replace(config, endpoint=net.endpoint)
        ingestor = Ingestor(config, tmp_path)
        upload = ingestor.enqueue(d, "evidence/seg-0000000001.seg")
        net.stall_after(11 * 2**20)                               # two parts and a bit, then the line dies
        import threading
        cut = threading.Thread(target=lambda: (net.stalled.wait(30), net.cut()))
        cut.start()
        with pytest.raises(Exception):
            ingestor.ingest(upload)
        cut.join()
        queued = ingestor.pending()
        assert len(queued) == 1 and queued[0].upload_id                   # the upload ID survives for the resume
        net.restore()
        sent_before = net.bytes_up
        Ingestor(config, tmp_path).ingest(queued[0])
        resent = net.bytes_up - sent_before
    assert resent < 12 * 2**20                                           # the two parts already there were kept
    assert _get(s3, bucket, f"{PREFIX}/evidence/seg-0000000001.seg") == data


def test_store_config_file_must_be_private_and_well_formed(store_config, tmp_path):
    path = tmp_path / "dock.toml"
    path.write_text(store_config_toml(store_config))
    path.chmod(0o644)
    with pytest.raises(StoreConfigError, match="make it 0600"):
        load_store_config(path)
    path.chmod(0o600)
    loaded = load_store_config(path)
    assert (loaded.bucket, loaded.endpoint, loaded.retention_for("evidence")) == (
        store_config.bucket, store_config.endpoint, 1)
    for bad, message in (('[store]\nbucket = "x"\nagency = "a"\n', "bucket must be"),
                         ('[store]\nbucket = "abc"\nagency = "Officer Smith"\n', "no personal data"),
                         ('[store]\nbucket = "abc"\nagency = "a"\nconfirm_after = "never"\n', "confirm_after"),
                         ('[store]\nbucket = "abc"\nagency = "a"\n[retention]\nevidence_days = 0\n', "evidence_days"),
                         ("[store\n", "not valid TOML")):
        path.write_text(bad)
        with pytest.raises(StoreConfigError, match=message):
            load_store_config(path)


def test_the_embedded_server_listens_on_loopback_only(seaweed):
    """Its filer and volume ports can delete behind the S3 API: none of them may face the network."""
    import shutil
    import subprocess
    if not shutil.which("ss"):
        pytest.skip("ss (iproute2) not installed")
    listening = [line.split()[3] for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True,
                                                            check=True).stdout.splitlines()
                 if f"pid={seaweed.process.pid}," in line]
    assert len(listening) >= 5 and f"127.0.0.1:{seaweed.s3_port}" in listening
    assert all(address.startswith("127.0.0.1:") for address in listening), listening


def test_dock_commands_refuse_a_bucket_without_object_lock_in_one_line(store_config, s3, tmp_path, dock_key_file,
                                                                      capsys):
    from firmware.cli import main
    s3.create_bucket(Bucket=store_config.bucket + "-plain")
    path = tmp_path / "dock.toml"
    path.write_text(store_config_toml(dataclasses.replace(store_config, bucket=store_config.bucket + "-plain")))
    path.chmod(0o600)
    for argv in (["dock", "pull", "--port", str(tmp_path / "no-tty"), "--out", str(tmp_path / "a"),
                  "--dock-key", str(dock_key_file), "--store-config", str(path)],
                 ["dock", "watch", "--out", str(tmp_path / "a"), "--dock-key", str(dock_key_file),
                  "--store-config", str(path)],
                 ["store", "ingest", "--config", str(path), "--archive", str(tmp_path)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "has no Object Lock; refusing to ingest" in err and "Traceback" not in err
    path.chmod(0o644)
    assert main(["store", "ingest", "--config", str(path), "--archive", str(tmp_path)]) == 2
    assert "make it 0600" in capsys.readouterr().err
