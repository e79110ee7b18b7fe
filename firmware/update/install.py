"""Install a signed firmware image into the inactive A/B slot, then switch to it atomically.

The device daemon calls, from this module:

- ``boot_slot(root, audit=...)`` once at every boot, before running firmware: counts a trial
  slot's boots and rolls back by itself (see firmware/update/slots.py);
- ``mark_healthy(root, audit=...)`` once the running firmware passed its health check;
- ``set_recording(root, recording_id)`` / ``clear_recording(root)`` around every recording,
  and ``clear_recording(root)`` at boot: the installer refuses while ``state/recording`` exists.

``install_image`` never reboots and never touches evidence or keys: it writes only under
``ROOT/firmware`` and appends to the audit log. The daemon decides when to reboot into the new slot.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from firmware.update.image import ImageError, Manifest, iter_files, parse_version, read_manifest
from firmware.update.slots import (
    DEFAULT_MAX_BOOT_TRIES,
    BootResult,
    UpdateError,
    UpdateRefused,
    audit_event,
    boot_slot,
    cleanup_staging,
    device_audit,
    load_state,
    mark_healthy,
    other,
    remove_tree,
    save_state,
    slot_dir,
    slot_lock,
    status,
    utc_now,
    vendor_key,
    verify_slot,
)
from secure_store.audit import Event
from secure_store.durable import fsync_dir, write_atomic
from secure_store.hybrid import VerifyKey
from secure_store.keys import KeyFileError
from secure_store.layout import DeviceRoot

__all__ = [
    "BootResult", "InstallResult", "UpdateError", "UpdateRefused", "boot_slot", "clear_recording",
    "install_image", "is_recording", "mark_healthy", "set_recording", "status",
]

log = logging.getLogger(__name__)

RECORDING_FLAG = "recording"


def _root(root: str | Path | DeviceRoot) -> DeviceRoot:
    return root if isinstance(root, DeviceRoot) else DeviceRoot(root)


def set_recording(root: str | Path | DeviceRoot, recording_id: str) -> None:
    """The daemon says it is recording: firmware installs are refused until cleared."""
    root = _root(root)
    root.state.mkdir(parents=True, exist_ok=True)
    write_atomic(root.state / RECORDING_FLAG, recording_id.encode() + b"\n", 0o644)


def clear_recording(root: str | Path | DeviceRoot) -> None:
    """The daemon stopped recording (and at boot, since no recording survives a reboot)."""
    root = _root(root)
    try:
        (root.state / RECORDING_FLAG).unlink()
    except FileNotFoundError:
        return
    fsync_dir(root.state)


def is_recording(root: str | Path | DeviceRoot) -> bool:
    return (_root(root).state / RECORDING_FLAG).exists()


@dataclass(frozen=True)
class InstallResult:
    """An installed image: the slot it went into, now active as a trial slot."""

    slot: str
    version: str
    previous_slot: str
    previous_version: str
    files: int
    bytes: int
    manifest_sha256: str


def _check_versions(manifest: Manifest, state: dict) -> None:
    active = state["slots"][state["active"]]
    if active["status"] != "good":
        raise UpdateRefused(
            f"running firmware {active['version']} in slot {state['active']} is still on trial: "
            "mark it healthy (or let it roll back) before installing another"
        )
    running, floor = active["version"], state["floor"]
    new = parse_version(manifest.version)
    if new <= parse_version(running) or new <= parse_version(floor):
        raise UpdateRefused(
            f"downgrade refused: image {manifest.version} is not newer than installed {running}"
            + (f" (floor {floor})" if floor != running else "")
        )
    if parse_version(running) < parse_version(manifest.min_version):
        raise UpdateRefused(
            f"image {manifest.version} may only replace {manifest.min_version} or later, installed is {running}"
        )


def _write_file(base: Path, rel: str, mode: int, chunks: Callable) -> int:
    """Create one file under ``base`` without following any link; fsync it."""
    target = base / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    written = 0
    try:
        for data in chunks():
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                written += n
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def _stage(image: BinaryIO, manifest: Manifest, header: bytes, staging: Path) -> int:
    """Unpack into a fresh staging directory, every file and directory fsync'd."""
    staging.mkdir(mode=0o755)
    write_atomic(staging / "manifest.bin", header, 0o644)
    files = staging / "files"
    files.mkdir(mode=0o755)
    total = 0
    for entry, chunks in iter_files(image, manifest):
        total += _write_file(files, entry.path, entry.mode, chunks)
    dirs = sorted({p for p in files.rglob("*") if p.is_dir()} | {files, staging}, key=lambda p: -len(p.parts))
    for d in dirs:
        fsync_dir(d)
    return total


def _install_locked(image_path: Path, root: DeviceRoot, key: VerifyKey, audit: object | None,
                    max_boot_tries: int) -> tuple:
    """The install proper, under the slot lock: verify, stage, mark, move, read back, switch."""
    cleanup_staging(root)
    state = load_state(root)
    try:
        image = open(image_path, "rb")
    except OSError as exc:
        raise ImageError(f"cannot read image {image_path}: {exc.strerror}") from None
    with image:
        manifest = read_manifest(image, key)
        header_len = image.tell()
        _check_versions(manifest, state)
        audit_event(audit, Event.FIRMWARE_INSTALL, step="verified", image=image_path.name,
                    version=manifest.version, manifest_sha256=manifest.digest, files=len(manifest.files))
        previous = state["active"]
        target = other(previous)
        staging = root.firmware / f".staging-{target}"
        image.seek(0)
        header = image.read(header_len)
        try:
            total = _stage(image, manifest, header, staging)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if exc.errno == errno.ENOSPC:
                raise UpdateError("no space left for the firmware slot") from None
            raise UpdateError(f"cannot write slot {target}: {exc.strerror}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    audit_event(audit, Event.FIRMWARE_INSTALL, step="unpacked", slot=target, version=manifest.version, bytes=total)
    # From here the old contents of the target slot are given up: say so first.
    state["slots"][target] = {"status": "installing", "version": manifest.version}
    save_state(root, state)
    final = slot_dir(root, target)
    remove_tree(final)
    os.rename(staging, final)
    fsync_dir(root.firmware)
    state["slots"][target] = {
        "status": "trial",
        "version": manifest.version,
        "manifest_sha256": manifest.digest,
        "boots": 0,
        "installed_utc": utc_now(),
    }
    verify_slot(root, target, state)  # what is on disk, read back
    state["active"] = target
    state["max_boot_tries"] = max_boot_tries
    save_state(root, state)  # the one atomic switch
    return state, previous, target, manifest, total


def install_image(
    image_path: str | Path,
    root: str | Path | DeviceRoot,
    *,
    audit: object | None = None,
    recording: Callable[[], bool] | None = None,
    max_boot_tries: int = DEFAULT_MAX_BOOT_TRIES,
) -> InstallResult:
    """Verify IMAGE, unpack it into the inactive slot, make that slot the active trial slot.

    ``recording`` tells whether the device records (default: the ``state/recording`` flag).
    Raises ImageError for a bad image, UpdateRefused when refused before any change.
    """
    root = _root(root)
    recording = recording or (lambda: is_recording(root))
    image_path = Path(image_path)
    audit = device_audit(root, audit)
    try:
        if recording():
            raise UpdateRefused("device is recording; firmware update refused")
        key = vendor_key(root)
        with slot_lock(root, wait=False):
            try:
                state, previous, target, manifest, total = _install_locked(image_path, root, key, audit,
                                                                           max_boot_tries)
            except OSError as exc:  # after staging: the old slot is still active and intact
                raise UpdateError(f"firmware install failed: {exc.strerror or exc}") from None
    except (ImageError, UpdateError, KeyFileError) as exc:
        log.info("firmware install of %s refused: %s", image_path.name, exc)
        audit_event(audit, Event.FIRMWARE_REJECTED, image=image_path.name, reason=str(exc))
        raise
    prev_version = state["slots"][previous]["version"]
    log.info("firmware %s installed in slot %s (trial); previous %s in slot %s",
             manifest.version, target, prev_version, previous)
    audit_event(audit, Event.FIRMWARE_INSTALL, step="switched", slot=target, version=manifest.version,
                   previous_slot=previous, previous_version=prev_version, max_boot_tries=max_boot_tries)
    return InstallResult(target, manifest.version, previous, prev_version, len(manifest.files), total, manifest.digest)
