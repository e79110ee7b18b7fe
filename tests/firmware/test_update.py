"""A/B install: good update, each bad image refused, anti-rollback, trial boots and rollback, SIGKILL."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import firmware
from firmware.update import image as fwimage
from firmware import update
from firmware.cli import main
from firmware.update.image import ImageError
from firmware.provision import provision
from firmware.update.install import _write_file
from firmware.update.slots import load_state, slot_dir
from firmware.update import UpdateError, UpdateRefused
from secure_store import keys
from secure_store.audit import Event, read_entries
from secure_store.audit_verify import verify_audit
from secure_store.layout import DeviceRoot

REPO = Path(__file__).resolve().parents[2]
FACTORY = firmware.__version__


@pytest.fixture()
def kit(tmp_path):
    """A provisioned device with some evidence, and the vendor key that signs its firmware."""
    for kind in ("agency", "vendor", "dock"):
        keys.write_keypair(kind, tmp_path / kind)
    root = DeviceRoot(tmp_path / "dev")
    provision(root, "CAM-7", tmp_path / "agency.pub", tmp_path / "vendor.pub", [tmp_path / "dock.pub"])
    (root.evidence / "seg-000.bcseg").write_bytes(os.urandom(5000))
    vendor = keys.load_private_key(tmp_path / "vendor.key", "vendor")
    return tmp_path, root, vendor


def build(tmp: Path, vendor, version: str, files: dict[str, bytes], min_version: str = "0.0.0") -> Path:
    src = tmp / f"src-{version}"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    out = tmp / f"fw-{version}.img"
    fwimage.build_image(src, version, vendor, out, min_version=min_version)
    return out


def tree_digest(*dirs: Path) -> dict[str, str]:
    """Every file under dirs with its SHA-256: evidence and keys must not change."""
    found = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                found[str(p.relative_to(d.parent))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def audit_events(root: DeviceRoot) -> list[tuple[str, dict]]:
    return [(e.event, e.details) for e in read_entries(root.audit)]


def device_pub(root: DeviceRoot):
    return keys.load_public_key(root.device_pub, "device")


def test_good_update_becomes_active_then_healthy(kit):
    tmp, root, vendor = kit
    before = tree_digest(root.evidence, root.keys)
    files = {"app.py": b"print('v1.1')\n", "lib/codec/x.bin": os.urandom(70_000)}
    img = build(tmp, vendor, "1.1.0", files)
    result = update.install_image(img, root)
    assert (result.slot, result.version, result.previous_slot) == ("b", "1.1.0", "a")
    for rel, data in files.items():
        assert (slot_dir(root, "b") / "files" / rel).read_bytes() == data
    state = load_state(root)
    assert state["active"] == "b" and state["slots"]["b"]["status"] == "trial"

    boot = update.boot_slot(root)
    assert (boot.slot, boot.version, boot.status, boot.rolled_back_from) == ("b", "1.1.0", "trial", None)
    assert (boot.path / "app.py").read_bytes() == files["app.py"]
    healthy = update.mark_healthy(root)
    assert (healthy.slot, healthy.status) == ("b", "good")
    assert load_state(root)["floor"] == "1.1.0"
    assert update.boot_slot(root).status == "good"

    assert tree_digest(root.evidence, root.keys) == before
    events = audit_events(root)
    steps = [d.get("step") for e, d in events if e == Event.FIRMWARE_INSTALL]
    assert steps == ["verified", "unpacked", "switched"]
    assert (Event.FIRMWARE_HEALTHY, {"slot": "b", "version": "1.1.0", "boots": 1}) in events
    assert verify_audit(root.audit, device_pub(root), device_id="CAM-7") == []


def test_next_update_goes_to_the_other_slot(kit):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    update.boot_slot(root)
    update.mark_healthy(root)
    second = update.install_image(build(tmp, vendor, "1.2.0", {"v": b"2"}, min_version="1.1.0"), root)
    assert (second.slot, second.previous_slot, second.previous_version) == ("a", "b", "1.1.0")
    assert update.boot_slot(root).path.joinpath("v").read_bytes() == b"2"


def _ident(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def test_install_says_exactly_what_it_installed(kit, caplog):
    """The audit entries, the result and the device log name the same image (manifest digest, file
    count, bytes: a file of several read chunks counted whole); the slot gets the modes it is
    verified against."""
    tmp, root, vendor = kit
    files = {"app.py": b"print('v1.1')\n", "lib/codec/x.bin": os.urandom(200_001)}
    img = build(tmp, vendor, "1.1.0", files)
    with open(img, "rb") as f:
        digest = fwimage.read_manifest(f, keys.load_verify_key(root.vendor_pub, "vendor")).digest
    size = sum(len(d) for d in files.values())
    seen = len(audit_events(root))
    umask = os.umask(0o022)
    try:
        with caplog.at_level(logging.INFO, logger="firmware.update.install"):
            result = update.install_image(img, root, max_boot_tries=2)
    finally:
        os.umask(umask)
    assert result == update.InstallResult("b", "1.1.0", "a", FACTORY, 2, size, digest)
    assert [d for e, d in audit_events(root)[seen:] if e == Event.FIRMWARE_INSTALL] == [
        {"step": "verified", "image": img.name, "version": "1.1.0", "manifest_sha256": digest, "files": 2},
        {"step": "unpacked", "slot": "b", "version": "1.1.0", "bytes": size},
        {"step": "switched", "slot": "b", "version": "1.1.0", "previous_slot": "a", "previous_version": FACTORY,
         "max_boot_tries": 2},
    ]
    assert load_state(root)["slots"]["b"]["manifest_sha256"] == digest
    assert [r.getMessage() for r in caplog.records] == [
        f"firmware 1.1.0 installed in slot b (trial); previous {FACTORY} in slot a"]
    slot = slot_dir(root, "b")
    modes = {p: os.stat(slot / p).st_mode & 0o777 for p in (".", "manifest.bin", "files", "files/lib/codec")}
    assert modes == {".": 0o755, "manifest.bin": 0o644, "files": 0o755, "files/lib/codec": 0o755}


def test_every_staged_file_and_directory_is_synced_before_the_slot_moves_in(kit, monkeypatch):
    """A SIGKILL keeps the page cache, so the power-cut test cannot see a missing fsync; this can.
    The real calls run; each fsync'd inode is noted, and the rename that moves the staged tree
    into place must come after every file and every directory of that tree was synced."""
    tmp, root, vendor = kit
    img = build(tmp, vendor, "1.1.0", {"app.py": b"a", "lib/z.py": b"z", "lib/codec/x.bin": b"x"})
    synced: list[tuple[int, int]] = []
    moved: dict[tuple[int, int], int] = {}
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        st = os.fstat(fd if isinstance(fd, int) else fd.fileno())
        real_fsync(fd)
        synced.append((st.st_dev, st.st_ino))

    def rename(src, dst, *args, **kwargs):
        moved[_ident(src)] = len(synced)
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    update.install_image(img, root)
    monkeypatch.undo()
    slot = slot_dir(root, "b")
    before = set(synced[:moved[_ident(slot)]])
    tree = [slot] + [Path(d, n) for d, dirs, names in os.walk(slot) for n in dirs + names]
    assert len(tree) == 8  # slot, manifest.bin, files, app.py, lib, z.py, codec, x.bin
    assert [p.relative_to(slot).as_posix() for p in tree if _ident(p) not in before] == []


def test_io_error_moving_the_staged_slot_in_keeps_the_running_slot_and_says_why(kit, monkeypatch, caplog):
    """The file system fails the rename that moves the staged slot in (EIO, a read-only remount):
    one line with the OS's reason, the running slot stays active, the state file says the target
    slot was given up ("installing"), boot needs no rebuild, and a retry installs."""
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    update.boot_slot(root)
    update.mark_healthy(root)
    img = build(tmp, vendor, "1.2.0", {"v": b"2"})
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".staging-"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src), None, str(dst))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    with caplog.at_level(logging.INFO, logger="firmware.update.install"):
        with pytest.raises(UpdateError) as failed:
            update.install_image(img, root)
    monkeypatch.undo()
    reason = f"firmware install failed: {os.strerror(errno.EIO)}"
    assert str(failed.value) == reason
    assert audit_events(root)[-1] == (Event.FIRMWARE_REJECTED, {"image": img.name, "reason": reason})
    assert [r.getMessage() for r in caplog.records] == [f"firmware install of {img.name} refused: {reason}"]
    state = load_state(root)
    assert state["active"] == "b" and state["slots"]["a"] == {"status": "installing", "version": "1.2.0"}
    boot = update.boot_slot(root)
    assert (boot.slot, boot.version, boot.status) == ("b", "1.1.0", "good")
    assert "firmware_state_rebuilt" not in [e for e, _ in audit_events(root)]
    assert update.install_image(img, root).slot == "a"


def test_a_file_cut_short_by_the_file_system_is_refused_and_changes_nothing(kit):
    """RLIMIT_FSIZE, as a quota or a full disk can, makes the kernel cut a write short at the limit
    and fail the next one (EFBIG): the installer writes on after a short write, so it meets the
    error while staging, and refuses with the OS's reason before the state or any slot changes."""
    tmp, root, vendor = kit
    img = build(tmp, vendor, "1.1.0", {"big.bin": os.urandom(50_000)})  # one read chunk, cut at 40 000
    state_file = root.firmware / "state.json"
    state_before = state_file.read_bytes() if state_file.exists() else None
    assert all(p.stat().st_size < 30_000 for p in root.audit.iterdir())  # its appends fit under the limit
    xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, hard))
    try:
        with pytest.raises(UpdateError) as refused:
            update.install_image(img, root)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, xfsz)
    assert str(refused.value) == f"cannot write slot b: {os.strerror(errno.EFBIG)}"
    assert not (root.firmware / "slot-b").exists() and not list(root.firmware.glob(".staging-*"))
    assert (state_file.read_bytes() if state_file.exists() else None) == state_before
    assert audit_events(root)[-1] == (Event.FIRMWARE_REJECTED, {"image": img.name, "reason": str(refused.value)})


def test_out_of_inodes_the_install_is_refused_with_the_reason_and_changes_nothing(tmp_path, make_tmpfs):
    """A real file system with no inode left (a small tmpfs, filled with empty files): the staging
    directory cannot be made, and the one-line refusal says so, not a secondary error."""
    for kind in ("agency", "vendor", "dock"):
        keys.write_keypair(kind, tmp_path / kind)
    root = DeviceRoot(make_tmpfs(8, inodes=400) / "dev")
    provision(root, "CAM-7", tmp_path / "agency.pub", tmp_path / "vendor.pub", [tmp_path / "dock.pub"])
    img = build(tmp_path, keys.load_private_key(tmp_path / "vendor.key", "vendor"), "1.1.0", {"v": b"1"})
    update.boot_slot(root)                               # the slot lock's file exists, as on any booted device
    filler = root.root.parent / "filler"
    filler.mkdir()
    with pytest.raises(OSError) as full:
        for n in range(400):
            (filler / str(n)).touch()
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(UpdateError) as refused:
        update.install_image(img, root)
    assert str(refused.value) == "no space left for the firmware slot"
    assert load_state(root)["active"] == "a" and sorted(p.name for p in root.firmware.iterdir()) == [".lock"]
    assert audit_events(root)[-1] == (Event.FIRMWARE_REJECTED, {"image": img.name, "reason": str(refused.value)})


def test_staged_files_never_follow_or_replace_what_is_already_there(tmp_path):
    """A link or file planted where a staged file goes (another process racing the installer) is
    refused (FileExistsError), never written through."""
    files = tmp_path / "files"
    (files / "lib").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    (files / "app.py").symlink_to(outside)
    (files / "lib" / "gone").symlink_to(tmp_path / "created-outside")
    (files / "lib" / "x").write_bytes(b"old!")
    for rel in ("app.py", "lib/gone", "lib/x"):
        with pytest.raises(FileExistsError):
            _write_file(files, rel, 0o644, lambda: iter([b"evil"]))
    assert outside.read_bytes() == b"keep" and not (tmp_path / "created-outside").exists()
    assert (files / "lib" / "x").read_bytes() == b"old!"
    assert _write_file(files, "lib/new", 0o640, lambda: iter([b"ab", b"cde"])) == 5
    assert (files / "lib" / "new").read_bytes() == b"abcde" and os.stat(files / "lib" / "new").st_mode & 0o777 == 0o640


BAD = {  # name: (entries, payloads, expected reason) signed with the right key unless said
    "unsigned": "unsigned",
    "wrong key": "wrong key",
    "tampered file": "tampered file",
    "tampered manifest": "manifest tampered",
    "truncated": "truncated",
    "path traversal": "path traversal",
    "absolute path": "absolute path",
    "symlink entry": "symlink",
    "oversized": "oversized",
}


def bad_image(tmp: Path, vendor, name: str) -> Path:
    data = b"evil payload\n"
    ok = {"path": "app.py", "type": "file", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": 0o644}
    entries, payloads, key, sign = [ok], [data], vendor, True
    if name == "unsigned":
        sign = False
    elif name == "wrong key":
        key = keys.generate("vendor")
    elif name == "path traversal":
        entries = [dict(ok, path="../../keys/evil")]
    elif name == "absolute path":
        entries = [dict(ok, path="/tmp/evil")]
    elif name == "symlink entry":
        entries = [dict(ok, path="lib", type="symlink")]
    elif name == "oversized":
        entries = [dict(ok, size=fwimage.MAX_FILE_BYTES + 1)]
    raw = fwimage.canonical_json({"image_format": 1, "version": "2.0.0", "min_version": "0.0.0",
                                  "built_utc": "2026-01-01T00:00:00Z", "files": entries})
    path = tmp / f"bad-{name.replace(' ', '-')}.img"
    with open(path, "wb") as out:
        fwimage.pack(raw, fwimage.sign_manifest(raw, key) if sign else b"", payloads, out)
    blob = path.read_bytes()
    if name == "tampered file":
        path.write_bytes(blob[:-2] + b"!\n")
    elif name == "tampered manifest":
        path.write_bytes(blob.replace(b'"version":"2.0.0"', b'"version":"3.0.0"'))
    elif name == "truncated":
        path.write_bytes(blob[:-5])
    return path


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_image_is_refused_and_changes_nothing(kit, name):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"app.py": b"good\n"}), root)
    update.boot_slot(root)
    update.mark_healthy(root)
    state_before = (root.firmware / "state.json").read_bytes()
    slots_before = tree_digest(root.firmware / "slot-a", root.firmware / "slot-b")
    with pytest.raises(ImageError, match=BAD[name]):
        update.install_image(bad_image(tmp, vendor, name), root)
    assert (root.firmware / "state.json").read_bytes() == state_before
    assert tree_digest(root.firmware / "slot-a", root.firmware / "slot-b") == slots_before
    assert not list(root.firmware.glob(".staging-*"))
    assert not (tmp / "evil").exists() and not (root.keys / "evil").exists() and not Path("/tmp/evil").exists()
    event, details = audit_events(root)[-1]
    assert event == Event.FIRMWARE_REJECTED and BAD[name].split()[0] in details["reason"]
    assert update.boot_slot(root).version == "1.1.0"


def test_downgrade_and_same_version_and_min_version_refused(kit):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.5.0", {"v": b"5"}), root)
    update.boot_slot(root)
    update.mark_healthy(root)
    for version in ("1.4.9", "1.5.0", "0.1.0"):
        with pytest.raises(UpdateRefused, match="downgrade refused"):
            update.install_image(build(tmp, vendor, version, {"v": b"old"}), root)
    with pytest.raises(UpdateRefused, match="may only replace 1.6.0 or later"):
        update.install_image(build(tmp, vendor, "2.0.0", {"v": b"2"}, min_version="1.6.0"), root)
    state = load_state(root)
    assert state["active"] == "b" and state["slots"]["b"]["version"] == "1.5.0"
    assert state["slots"]["a"]["status"] == "good"  # the fallback was not given up for a refused image


def test_floor_above_the_running_version_still_refuses_older_images(kit):
    """After a rollback the running firmware is older than the anti-rollback floor: an image
    newer than what runs but older than the floor (a known-vulnerable version) is refused."""
    tmp, root, vendor = kit
    for version in ("1.1.0", "1.3.0"):
        update.install_image(build(tmp, vendor, version, {"v": version.encode()}), root)
        update.boot_slot(root)
        update.mark_healthy(root)
    (slot_dir(root, load_state(root)["active"]) / "files" / "v").write_bytes(b"rot")
    assert update.boot_slot(root).version == "1.1.0"          # rolled back below the floor
    state = load_state(root)
    assert (state["floor"], state["slots"][state["active"]]["version"]) == ("1.3.0", "1.1.0")
    for version in ("1.2.0", "1.3.0"):
        with pytest.raises(UpdateRefused, match="downgrade refused"):
            update.install_image(build(tmp, vendor, version, {"v": b"old"}), root)
    assert load_state(root) == state
    assert update.install_image(build(tmp, vendor, "1.3.1", {"v": b"fixed"}), root).version == "1.3.1"


def test_install_refused_while_the_running_slot_is_on_trial(kit):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    with pytest.raises(UpdateRefused) as refused:
        update.install_image(build(tmp, vendor, "1.2.0", {"v": b"2"}), root)
    assert str(refused.value) == ("running firmware 1.1.0 in slot b is still on trial: "
                                  "mark it healthy (or let it roll back) before installing another")
    assert load_state(root)["slots"]["a"]["factory"] is True  # the known-good fallback is still there


def test_recording_flag_names_the_recording_and_clears(kit):
    _, root, _ = kit
    assert not update.is_recording(root)
    update.set_recording(root, "20261130T101500Z-CAM-7")
    flag = root.state / "recording"
    assert flag.read_bytes() == b"20261130T101500Z-CAM-7\n" and flag.stat().st_mode & 0o777 == 0o644
    assert update.is_recording(root)
    update.clear_recording(root)
    assert not flag.exists() and not update.is_recording(root)
    update.clear_recording(root)                      # at boot, with nothing to clear


def test_update_refused_while_recording(kit):
    tmp, root, vendor = kit
    img = build(tmp, vendor, "1.1.0", {"v": b"1"})
    update.set_recording(root, "rec-0001")
    assert update.is_recording(root)
    with pytest.raises(UpdateRefused, match="recording"):
        update.install_image(img, root)
    assert not (root.firmware / "slot-b").exists() and load_state(root)["active"] == "a"
    assert audit_events(root)[-1][0] == Event.FIRMWARE_REJECTED
    update.clear_recording(root)
    with pytest.raises(UpdateRefused, match="recording"):
        update.install_image(img, root, recording=lambda: True)  # the daemon's own callable
    assert update.install_image(img, root).slot == "b"


def test_trial_slot_not_marked_healthy_rolls_back_by_itself(kit):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    update.boot_slot(root)
    update.mark_healthy(root)
    update.install_image(build(tmp, vendor, "1.2.0", {"v": b"broken"}), root, max_boot_tries=3)
    boots = [update.boot_slot(root) for _ in range(3)]
    assert [(b.slot, b.version, b.status) for b in boots] == [("a", "1.2.0", "trial")] * 3
    assert [load_state(root)["slots"]["a"]["boots"]] == [3]
    rolled = update.boot_slot(root)
    assert (rolled.slot, rolled.version, rolled.status, rolled.rolled_back_from) == ("b", "1.1.0", "good", "a")
    assert "not marked healthy within 3 boots" in rolled.reason
    assert (rolled.path / "v").read_bytes() == b"1"
    state = load_state(root)
    assert state["slots"]["a"]["status"] == "bad" and state["active"] == "b"
    assert update.boot_slot(root).slot == "b"  # stays rolled back
    rollbacks = [d for e, d in audit_events(root) if e == Event.FIRMWARE_ROLLBACK]
    assert rollbacks == [{"from_slot": "a", "from_version": "1.2.0", "to_slot": "b", "to_version": "1.1.0",
                          "reason": "not marked healthy within 3 boots"}]
    # the failed version may be retried (fixed firmware would carry a higher version anyway)
    assert update.install_image(build(tmp, vendor, "1.2.1", {"v": b"fixed"}), root).slot == "a"


def test_mark_healthy_before_the_new_slot_ever_booted_changes_nothing(kit):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    still = update.mark_healthy(root)  # the old firmware's health check, after the install
    assert (still.slot, still.status) == ("b", "trial") and load_state(root)["floor"] == FACTORY
    assert update.boot_slot(root).status == "trial"
    assert update.mark_healthy(root).status == "good"


def test_first_update_failing_rolls_back_to_factory(kit):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root, max_boot_tries=1)
    assert update.boot_slot(root).slot == "b"
    rolled = update.boot_slot(root)
    assert (rolled.slot, rolled.path, rolled.rolled_back_from) == ("a", None, "b")


def test_corrupted_active_slot_fails_verified_boot_and_rolls_back(kit):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    update.boot_slot(root)
    update.mark_healthy(root)
    update.install_image(build(tmp, vendor, "1.2.0", {"v": b"2", "w": b"x"}), root)
    (slot_dir(root, "a") / "files" / "w").write_bytes(b"y")  # bit rot, or an attacker
    rolled = update.boot_slot(root)
    assert rolled.slot == "b" and "does not match its SHA-256" in rolled.reason
    (slot_dir(root, "b") / "files" / "extra").write_bytes(b"planted")
    with pytest.raises(UpdateError, match="nothing to boot"):
        update.boot_slot(root)


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"state_format": 1}'])
def test_corrupt_slot_state_is_rebuilt_from_the_verified_slots(kit, damage):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    update.boot_slot(root)
    update.mark_healthy(root)
    update.install_image(build(tmp, vendor, "1.2.0", {"v": b"2"}), root)
    (root.firmware / "state.json").write_bytes(damage)
    boot = update.boot_slot(root)
    assert (boot.slot, boot.version, boot.status) == ("a", "1.2.0", "trial")  # the newest must prove itself
    state = load_state(root)
    assert state["slots"]["b"]["status"] == "good" and state["floor"] == "1.2.0"
    assert len(list(root.firmware.glob("state.json.corrupt-*"))) == 1
    assert audit_events(root)[-2][0] == "firmware_state_rebuilt"
    update.mark_healthy(root)
    with pytest.raises(UpdateRefused, match="downgrade"):
        update.install_image(build(tmp, vendor, "1.1.5", {"v": b"old"}), root)


def test_corrupt_state_after_the_first_update_keeps_the_factory_fallback(kit):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    (root.firmware / "state.json").write_bytes(b"\x00" * 40)
    boot = update.boot_slot(root, verify=True)
    assert (boot.slot, boot.status) == ("b", "trial")
    assert load_state(root)["slots"]["a"] == {"status": "good", "version": FACTORY, "factory": True}
    (slot_dir(root, "b") / "files" / "v").write_bytes(b"rot")
    (root.firmware / "state.json").write_bytes(b"garbage")
    boot = update.boot_slot(root)
    assert (boot.slot, boot.path) == ("a", None) and load_state(root)["slots"]["b"]["status"] == "bad"


def test_unreadable_vendor_key_boots_unverified_rather_than_bricking(kit):
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    root.vendor_pub.write_bytes(b"rotten")
    boot = update.boot_slot(root)
    assert (boot.slot, boot.version, boot.status) == ("b", "1.1.0", "trial")
    assert ("firmware_boot", "unverified") in [(e, d.get("action")) for e, d in audit_events(root)]
    with pytest.raises(keys.KeyFileError):
        update.install_image(build(tmp, vendor, "1.2.0", {"v": b"2"}), root)  # installs still need the key
    assert audit_events(root)[-1][0] == Event.FIRMWARE_REJECTED


def test_cli_install_and_status(kit, capsys):
    tmp, root, vendor = kit
    img = build(tmp, vendor, "1.1.0", {"v": b"1"})
    assert main(["firmware", "install", str(img), "--root", str(root.root)]) == 0
    assert "installed in slot b" in capsys.readouterr().out
    assert main(["firmware", "install", str(img), "--root", str(root.root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "still on trial" in err[0]
    assert main(["firmware", "status", "--root", str(root.root)]) == 0
    assert json.loads(capsys.readouterr().out)["slots"]["b"]["version"] == "1.1.0"


def test_staging_symlink_planted_outside_is_not_followed(kit):
    tmp, root, vendor = kit
    outside = tmp / "outside"
    outside.mkdir()
    (root.firmware / ".staging-b").symlink_to(outside)
    (root.firmware / "slot-b").symlink_to(outside)
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"1"}), root)
    assert list(outside.iterdir()) == []
    assert not (root.firmware / "slot-b").is_symlink() and (root.firmware / "slot-b/files/v").read_bytes() == b"1"


INSTALLER = """
import os, signal, sys
from firmware.update import install_image

calls, kill_at = [0], int(sys.argv[3])

def wrap(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # a power cut just before this call
        return real(*args, **kwargs)
    return call

for name in ("write", "writev", "fsync", "replace", "rename", "link", "unlink", "rmdir", "mkdir", "symlink"):
    setattr(os, name, wrap(getattr(os, name)))
install_image(sys.argv[1], sys.argv[2])
print("done", calls[0], flush=True)
"""


def _run_installer(image: Path, root: Path, kill_at: int) -> int | None:
    """Install in a child process that SIGKILLs itself just before its ``kill_at``-th file-system
    call (0: never); returns how many calls a completed install made, None if it was killed."""
    proc = subprocess.run([sys.executable, "-c", INSTALLER, str(image), str(root), str(kill_at)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if proc.returncode == -signal.SIGKILL:
        return None
    assert proc.returncode == 0 and proc.stdout.startswith(b"done"), proc.stdout
    return int(proc.stdout.split()[1])


def test_sigkill_at_points_spread_over_an_install_still_boots_a_good_slot(kit):
    """Kill points are file-system calls, counted, not moments: the same points are cut on a
    busy machine as on an idle one, from the first call to the last."""
    tmp, root, vendor = kit
    update.install_image(build(tmp, vendor, "1.1.0", {"v": b"old"}), root)
    update.boot_slot(root)
    update.mark_healthy(root)
    files = {f"pkg/m{i:03d}.py": os.urandom(4000 + i) for i in range(60)}
    new = build(tmp, vendor, "1.2.0", files)
    base = tmp / "base"
    shutil.copytree(root.root, base, symlinks=True)
    total = _run_installer(new, _fresh(base, tmp / "calibrate"), 0)
    assert total and total > 60                        # at least one write per file
    # 20 cuts spread over the whole install, and every one of its last 10 calls (the switch)
    points = sorted({1 + round(i * (total - 1) / 19) for i in range(20)} | set(range(total - 9, total + 1)))
    outcomes = []
    for trial, point in enumerate(points):
        dev = _fresh(base, tmp / f"trial-{trial}")
        untouched = tree_digest(dev / "evidence", dev / "keys")
        assert _run_installer(new, dev, point) is None, f"not killed at call {point} of {total}"
        assert tree_digest(dev / "evidence", dev / "keys") == untouched
        boot = update.boot_slot(dev)
        if boot.version == "1.2.0":
            assert boot.status == "trial" and all((boot.path / p).read_bytes() == d for p, d in files.items())
        else:
            assert (boot.slot, boot.version, (boot.path / "v").read_bytes()) == ("b", "1.1.0", b"old")
        assert not list(DeviceRoot(dev).firmware.glob(".staging-*"))
        assert verify_audit(DeviceRoot(dev).audit, device_pub(DeviceRoot(dev))) == []
        outcomes.append(boot.version)
        if trial % 6 == 0 and boot.version == "1.1.0":  # and the next install still works
            assert update.install_image(new, dev).version == "1.2.0"
            assert update.boot_slot(dev).version == "1.2.0"
    # one commit point: every cut before it boots the old firmware, every cut after it the new
    switch = outcomes.index("1.2.0") if "1.2.0" in outcomes else len(outcomes)
    assert outcomes == ["1.1.0"] * switch + ["1.2.0"] * (len(outcomes) - switch)
    assert 0 < switch < len(outcomes)                  # cuts landed on both sides of it


def _fresh(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, symlinks=True)
    return dest
