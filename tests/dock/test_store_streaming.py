"""Verify and export read straight from the evidence store: no local copy, the same verdict and
the same export as from the dock's disk. Real H.264 (sim camera → libx264 → sealer), ingested by
``bodycam store ingest`` into the real SeaweedFS server."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import sys
import tempfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dock.store_config import store_config_toml
from firmware.cli import main
from secure_store import keys, sources
from secure_store.durable import write_atomic
from secure_store.layout import DeviceRoot
from secure_store.trust import identity_json
from secure_store.verify import verify_path

DEVICE = "CAM-0042"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class FileSpy:
    """Every file opened while active, through Python's audit hook ("open": builtins, io, os.open)."""

    active: "FileSpy | None" = None
    installed = False

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.reads: list[str] = []

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        spy = cls.active
        if spy is None or event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path, mode, flags = os.fsdecode(args[0]), args[1] or "", args[2] or 0
        writing = any(c in mode for c in "wax+") or bool(flags & _WRITE_FLAGS)
        (spy.writes if writing else spy.reads).append(os.path.abspath(path))

    def __enter__(self) -> "FileSpy":
        if not FileSpy.installed:
            sys.addaudithook(FileSpy._hook)   # cannot be removed: it does nothing while no spy is active
            FileSpy.installed = True
        FileSpy.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        FileSpy.active = None


@pytest.fixture
def ingested(record_h264, store_config, s3, bucket, seaweed, tmp_path, monkeypatch, capsys):
    """(archive device directory, s3:// URL of the same device, agency key file) after a real ingest."""
    signing, agency = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    root = DeviceRoot(tmp_path / "device")
    root.keys.mkdir(parents=True)
    record_h264(root, signing, agency, DEVICE)
    device_dir = tmp_path / "archive" / DEVICE
    shutil.copytree(root.evidence, device_dir / "evidence")
    shutil.copytree(root.audit, device_dir / "audit")
    write_atomic(device_dir / "identity.json", identity_json(DEVICE, signing.public_key()))
    cfg = tmp_path / "dock.toml"
    write_atomic(cfg, store_config_toml(store_config).encode(), 0o600)
    agency_file = tmp_path / "agency.key"
    write_atomic(agency_file, keys.private_pem(agency), 0o600)
    assert main(["store", "ingest", "--config", str(cfg), "--archive", str(device_dir.parent)]) == 0
    assert "0 still queued; 0 conflict(s)" in capsys.readouterr().out
    for name, value in {"AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_ACCESS_KEY_ID": seaweed.access_key,
                        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    return device_dir, f"s3://{bucket}/v1/test-force/{DEVICE}", agency_file


def _inside(path: str, directory) -> bool:
    return os.path.commonpath([path, os.path.abspath(directory)]) == os.path.abspath(directory)


def test_verify_and_export_from_the_bucket_make_no_local_copy_and_match_the_disk(ingested, tmp_path, monkeypatch,
                                                                                 capsys):
    device_dir, url, agency_file = ingested
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    out = tmp_path / "from-store"

    with FileSpy() as spy:
        assert main(["verify", url, "--json"]) == 0
        from_store = capsys.readouterr().out
        assert main(["export", url, "--agency-key", str(agency_file), "--out", str(out)]) == 0
    capsys.readouterr()
    assert list(spool.iterdir()) == []                                   # no temporary copy, not even one left
    assert spy.writes and all(_inside(p, out) for p in spy.writes), [p for p in spy.writes if not _inside(p, out)]
    assert not [p for p in spy.reads if _inside(p, device_dir)]          # read from the bucket, not the archive

    assert main(["verify", str(device_dir), "--json"]) == 0
    from_disk = capsys.readouterr().out
    assert json.loads(from_store.replace(url, str(device_dir))) == json.loads(from_disk)   # the same verdict
    report = json.loads(from_store)
    assert [s["file"] for s in report["segments"]][:2] == [f"{url}/evidence/seg-0000000001.seg",
                                                           f"{url}/evidence/seg-0000000002.seg"]
    assert report["audit_logs"] == [f"{url}/audit"] and report["ok"]

    disk_out = tmp_path / "from-disk"
    assert main(["export", str(device_dir), "--agency-key", str(agency_file), "--out", str(disk_out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in disk_out.iterdir()) and len([n for n in names if n.endswith(".mp4")]) == 2
    for name in names:
        if name.endswith(".mp4"):                                          # the very same MP4, byte for byte
            assert (out / name).read_bytes() == (disk_out / name).read_bytes()
        elif name.endswith(".json"):                                       # the same report but for where from
            store = json.loads((out / name).read_text().replace(url, str(device_dir)))
            disk = json.loads((disk_out / name).read_text().replace(str(disk_out), str(out)))
            assert store.pop("exported_utc") and disk.pop("exported_utc") and store == disk


class RecordingClient:
    """A real boto3 client that notes each GetObject's key and Range."""

    def __init__(self, client) -> None:
        self.client, self.gets = client, []

    def get_object(self, **kw):
        self.gets.append((kw["Key"], kw.get("Range")))
        return self.client.get_object(**kw)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_segments_are_read_by_ranged_gets_of_one_window_each(ingested, s3, monkeypatch):
    device_dir, url, _ = ingested
    monkeypatch.setattr(sources, "WINDOW", 16 * 1024)                    # several windows per segment
    client = RecordingClient(s3)
    report = verify_path(sources.SourcePath(sources.S3Source(url, client)))
    assert report.ok and len(report.segments) == len(list(device_dir.glob("evidence/*.seg")))
    seg_gets = [(k, r) for k, r in client.gets if k.endswith(".seg")]
    sizes = {p.name: p.stat().st_size for p in device_dir.glob("evidence/*.seg")}
    spans: dict[str, list[tuple[int, int]]] = {}
    for key, rng in seg_gets:
        assert rng and rng.startswith("bytes=")
        start, end = map(int, rng[6:].split("-"))
        assert end - start + 1 <= 16 * 1024                               # never more than one window per GET
        spans.setdefault(key.rsplit("/", 1)[-1], []).append((start, end))
    for name, size in sizes.items():                                     # each segment read once, in order, whole
        got = spans[name]
        assert got[0][0] == 0 and got[-1][1] == size - 1 and len(got) >= size // (16 * 1024)
        assert all(b[0] == a[1] + 1 for a, b in zip(got, got[1:]))


def test_a_store_object_reads_seeks_and_tells_like_the_file(ingested, s3):
    device_dir, url, _ = ingested
    source = sources.S3Source(url, s3)
    name = "evidence/seg-0000000001.seg"
    data = (device_dir / name).read_bytes()
    rng = random.Random(7)
    with source.open(name) as remote:
        local = io.BytesIO(data)
        for _ in range(200):
            op = rng.choice(["read", "read", "seek", "seek_cur", "seek_end"])
            if op == "read":
                n = rng.choice([0, 1, 17, 4096, 70_000, len(data)])
                assert remote.read(n) == local.read(n)
            elif op == "seek":
                pos = rng.randrange(len(data) + 10)
                assert remote.seek(pos) == local.seek(pos)
            elif op == "seek_cur":
                delta = rng.randrange(-min(local.tell(), 5000), 5000)
                assert remote.seek(delta, io.SEEK_CUR) == local.seek(delta, io.SEEK_CUR)
            else:
                delta = -rng.randrange(len(data))
                assert remote.seek(delta, io.SEEK_END) == local.seek(delta, io.SEEK_END)
            assert remote.tell() == local.tell()
    assert source.read_bytes("identity.json") == (device_dir / "identity.json").read_bytes()


def test_a_source_directory_verifies_exactly_as_the_path(ingested):
    device_dir, _, _ = ingested
    through = verify_path(sources.SourcePath(sources.DirectorySource(device_dir)))
    direct = verify_path(device_dir)
    assert through.ok and through.to_json() == direct.to_json()
