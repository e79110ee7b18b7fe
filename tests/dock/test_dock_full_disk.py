"""The dock's archive disk fills up mid-pull: a real small file system (a tmpfs mounted for the
test) that another writer fills, a real pty link, the real SeaweedFS store.

The dock must say so in one line, confirm nothing the store does not hold (the camera keeps
its copy), and a later pull, once space is freed, must complete and confirm the rest.
Skipped only where mounting a tmpfs is impossible (not root, no mount namespace).
"""

from __future__ import annotations

import errno
import os

import pytest

from dock.store_config import store_config_toml
from firmware.cli import main
from hw_sim.link import LinkedPtys
from secure_store.durable import write_atomic

DEVICE_ID = "CAM-0042"
PREFIX = f"v1/test-force/{DEVICE_ID}"


@pytest.fixture
def small_fs(make_tmpfs):
    """A 16 MiB tmpfs of our own: filling it fills nobody else's disk."""
    return make_tmpfs(16)


def fill_leaving(directory, room: int):
    """Another writer takes every free block but ``room`` bytes."""
    path = directory / "other-writer.bin"
    with open(path, "ab", buffering=0) as f:
        for block in (1 << 20, 4096):
            while True:
                try:
                    f.write(b"\xa5" * block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    os.truncate(path, path.stat().st_size - room)
    st = os.statvfs(directory)
    assert st.f_bavail * st.f_frsize < room + 64 * 1024
    return path


def _stored(s3, bucket: str) -> dict[str, bytes]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/evidence/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[-1]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def _pull(device, cfg, archive, dock_key_file, capsys) -> tuple[int, str, str]:
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        code = main(["dock", "pull", "--port", cable.b_path, "--out", str(archive), "--dock-key", str(dock_key_file),
                     "--store-config", str(cfg)])
        served.join()
    assert served.error is None
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_a_full_archive_disk_mid_pull_confirms_nothing_unstored_and_a_later_pull_completes(
        device, store_config, s3, bucket, small_fs, dock_key_file, tmp_path, capsys):
    device.record(segments=4, chunks=3, frame_bytes=60_000)        # 4 segments of ~0.9 MB
    before = device.evidence()
    segments = sorted(n for n in before if n.endswith(".seg"))
    cfg = tmp_path / "dock.toml"
    write_atomic(cfg, store_config_toml(store_config).encode(), 0o600)
    archive = small_fs / "archive"
    archive.mkdir()
    filler = fill_leaving(small_fs, room=int(1.5 * len(before[segments[0]])))

    code, out, err = _pull(device, cfg, archive, dock_key_file, capsys)
    assert code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "no space" in line.lower()]
    assert lines and "archive" in lines[0], err                      # one clear line says why
    kept, stored = device.evidence(), _stored(s3, bucket)
    assert set(kept) | set(stored) >= set(before)                     # nothing lost: each copy is somewhere
    assert [n for n in segments if n not in kept] == [n for n in segments if n in stored and n not in kept]
    for name in segments:
        if name not in kept:                                          # freed only what the store holds, verbatim
            assert stored[name] == before[name]
            assert stored[name.replace(".seg", ".manifest")] == before[name.replace(".seg", ".manifest")]
    assert len(kept) >= 2                                              # the disk could not take them all
    assert not list(archive.rglob("*.tmp-*"))                         # no torn queue entries left behind

    filler.unlink()                                                   # space freed: the next pull completes
    code, out, err = _pull(device, cfg, archive, dock_key_file, capsys)
    assert code == 0, err
    assert device.evidence() == {}                                     # every segment confirmed and freed
    assert _stored(s3, bucket) == before                               # and held by the store, byte for byte
    for name in segments:
        assert (archive / DEVICE_ID / "evidence" / name).read_bytes() == before[name]


def test_the_disk_filled_by_another_writer_after_the_first_segment_stops_the_confirms_there(
        device, keyset, store_config, s3, bucket, small_fs, tmp_path):
    from dock.client import PullError, pull
    from dock.ingest import Ingestor
    device.record(segments=3, chunks=3, frame_bytes=60_000)
    before = device.evidence()
    segments = sorted(n for n in before if n.endswith(".seg"))
    archive = small_fs / "archive"
    ingestor = Ingestor(store_config, archive)
    asked, filler = [], []

    def holds(device_dir, name):                    # another writer takes the disk once the first is held
        asked.append(name)
        held = ingestor.segment_held(device_dir, name)
        if not filler:
            filler.append(fill_leaving(small_fs, room=0))
        return held
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        with pytest.raises(PullError) as raised:
            pull(cable.b_path, archive, keyset.dock, store_holds=holds)
        served.join()
    message = str(raised.value)
    assert "\n" not in message and f"archive {archive} is full" in message
    assert "1 segment(s) confirmed before that" in message
    kept, stored = device.evidence(), _stored(s3, bucket)
    assert asked == segments                                           # each was offered to the store...
    assert sorted(n for n in kept if n.endswith(".seg")) == segments[1:]   # ...only the first was held and freed
    assert stored[segments[0]] == before[segments[0]]
    assert not [n for n in segments[1:] if n in stored]
    assert not list(archive.rglob("*.tmp-*"))

    filler[0].unlink()
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, archive, keyset.dock, store_holds=ingestor.segment_held)
        served.join()
    assert summary.ok and summary.confirmed == segments[1:], summary.problems
    assert device.evidence() == {} and _stored(s3, bucket) == before
