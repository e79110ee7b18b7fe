"""A/B firmware slots: the durable slot state, verified boot, trial boots and rollback.

::

    ROOT/firmware/state.json      which slot is active, each slot's version and status
    ROOT/firmware/slot-a/         manifest.bin (signed header + manifest) and files/
    ROOT/firmware/slot-b/
    ROOT/firmware/.lock           held while installing or booting

A slot is ``empty``, ``installing``, ``trial``, ``good`` or ``bad``. A fresh device runs
the factory firmware in slot a (no files: the read-only system image). An install fills the
inactive slot, then one atomic write of state.json makes it the active ``trial`` slot. Each
boot of a trial slot is counted before it runs; a trial slot not marked healthy within
``max_boot_tries`` boots, or any slot whose files no longer match its signed manifest, is
marked ``bad`` and the device boots the other slot. State changes go through
``write_atomic``, so a power cut leaves the old state or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from firmware import __version__ as FACTORY_VERSION
from firmware.update.image import ImageError, parse_version, read_manifest
from secure_store import hybrid, keys
from secure_store.audit import Event
from secure_store.durable import write_atomic
from secure_store.layout import DeviceRoot

log = logging.getLogger(__name__)

SLOTS = ("a", "b")
STATE_FORMAT = 1
DEFAULT_MAX_BOOT_TRIES = 3
STATUSES = ("empty", "installing", "trial", "good", "bad")
UPLOAD_NAME = "upload.img.part"  # an image arriving over the dock link (firmware.update.flash)


class UpdateError(Exception):
    """A firmware update, boot or slot operation failed; the message says why."""

    exit_code = 1


class UpdateRefused(UpdateError):
    """The update was refused before anything changed (recording, downgrade, not provisioned)."""


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def slot_dir(root: DeviceRoot, slot: str) -> Path:
    return root.firmware / f"slot-{slot}"


def state_path(root: DeviceRoot) -> Path:
    return root.firmware / "state.json"


def factory_state(max_boot_tries: int = DEFAULT_MAX_BOOT_TRIES) -> dict:
    """The state of a device that has never been updated: factory firmware in slot a."""
    return {
        "state_format": STATE_FORMAT,
        "active": "a",
        "floor": FACTORY_VERSION,
        "max_boot_tries": max_boot_tries,
        "slots": {
            "a": {"status": "good", "version": FACTORY_VERSION, "factory": True},
            "b": {"status": "empty"},
        },
    }


def load_state(root: DeviceRoot) -> dict:
    """The slot state; the factory state if there is none yet."""
    try:
        raw = state_path(root).read_bytes()
    except FileNotFoundError:
        return factory_state()
    try:
        state = json.loads(raw)
        ok = (
            state["state_format"] == STATE_FORMAT
            and state["active"] in SLOTS
            and all(state["slots"][s]["status"] in STATUSES for s in SLOTS)
            and state["slots"][state["active"]]["status"] in ("trial", "good", "bad")
            and type(state["max_boot_tries"]) is int and state["max_boot_tries"] >= 1
        )
        parse_version(state["floor"])
        for s in SLOTS:
            if state["slots"][s]["status"] in ("trial", "good"):
                parse_version(state["slots"][s]["version"])
    except (ValueError, KeyError, TypeError, ImageError):
        ok = False
    if not ok:
        raise UpdateError(f"{state_path(root)} is not a valid slot state file")
    return state


def save_state(root: DeviceRoot, state: dict) -> None:
    root.firmware.mkdir(parents=True, exist_ok=True)
    write_atomic(state_path(root), json.dumps(state, indent=1, sort_keys=True).encode() + b"\n", 0o644)


@contextlib.contextmanager
def slot_lock(root: DeviceRoot, *, wait: bool = True) -> Iterator[None]:
    """One installer or boot at a time; the kernel drops the lock if its holder dies."""
    root.firmware.mkdir(parents=True, exist_ok=True)
    fd = os.open(root.firmware / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise UpdateRefused("another firmware install or boot is in progress") from None
        yield
    finally:
        os.close(fd)


def vendor_key(root: DeviceRoot) -> hybrid.VerifyKey:
    """The trusted vendor key, classic or hybrid: a hybrid one admits only images signed by both halves."""
    if not root.vendor_pub.exists():
        raise UpdateRefused(f"device {root.root} is not provisioned (no {root.vendor_pub.name})")
    return keys.load_verify_key(root.vendor_pub, "vendor")


def verify_slot(root: DeviceRoot, slot: str, state: dict) -> None:
    """Check a slot's files against its signed manifest: same set, sizes, hashes and modes."""
    info = state["slots"][slot]
    if info.get("factory"):
        return
    base = slot_dir(root, slot)
    try:
        with open(base / "manifest.bin", "rb") as f:
            manifest = read_manifest(f, vendor_key(root))
            if f.read(1):
                raise ImageError("manifest.bin has trailing data")
    except OSError as exc:
        raise UpdateError(f"slot {slot}: cannot read manifest.bin: {exc.strerror}") from None
    except ImageError as exc:
        raise UpdateError(f"slot {slot}: {exc}") from None
    if manifest.digest != info.get("manifest_sha256") or manifest.version != info.get("version"):
        raise UpdateError(f"slot {slot}: manifest is not the one installed")
    files = base / "files"
    expected = {e.path: e for e in manifest.files}
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(files):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            found.add(Path(dirpath, name).relative_to(files).as_posix())
    if found != set(expected):
        extra, missing = sorted(found - set(expected)), sorted(set(expected) - found)
        raise UpdateError(f"slot {slot}: files differ from manifest (extra {extra[:3]}, missing {missing[:3]})")
    for path, entry in expected.items():
        full = files / path
        try:
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o777 != entry.mode:
                raise UpdateError(f"slot {slot}: {path} is not a regular file of mode {entry.mode:o}")
            with open(full, "rb") as f:
                digest = hashlib.file_digest(f, "sha256")
        except OSError as exc:
            raise UpdateError(f"slot {slot}: cannot read {path}: {exc.strerror}") from None
        if digest.hexdigest() != entry.sha256:
            raise UpdateError(f"slot {slot}: {path} does not match its SHA-256")


@dataclass(frozen=True)
class BootResult:
    """What the boot loader chose: the slot to run and whether it had to roll back."""

    slot: str
    version: str
    status: str
    path: Path | None  # the slot's files/ directory, None for the factory firmware
    rolled_back_from: str | None = None
    reason: str | None = None


def _result(root: DeviceRoot, state: dict, rolled_from: str | None = None, reason: str | None = None) -> BootResult:
    slot = state["active"]
    info = state["slots"][slot]
    path = None if info.get("factory") else slot_dir(root, slot) / "files"
    return BootResult(slot, info["version"], info["status"], path, rolled_from, reason)


FIRMWARE_BOOT = "firmware_boot"  # audit event names of ours (secure_store.audit.Event has the rest)
FIRMWARE_STATE_REBUILT = "firmware_state_rebuilt"


def device_audit(root: DeviceRoot, audit: object | None) -> object | None:
    """The caller's AuditLog, else the device's own (None on an unprovisioned device)."""
    if audit is not None:
        return audit
    from firmware.provision import is_provisioned, open_audit

    return open_audit(root) if is_provisioned(root) else None


def audit_event(audit: object | None, event: str, **details: object) -> None:
    """One audit entry through the caller's ``AuditLog`` (no-op without one)."""
    if audit is not None:
        audit.append(event, **details)  # type: ignore[attr-defined]


def cleanup_staging(root: DeviceRoot, *, uploads: bool = False) -> None:
    """Remove half-written staging directories (and at boot, dock uploads) left by a dead install."""
    if root.firmware.is_dir():
        for entry in root.firmware.glob(".staging-*"):
            remove_tree(entry)
        if uploads:
            (root.firmware / UPLOAD_NAME).unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    """Remove a directory tree, or just the link if ``path`` is a symlink (never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _slot_manifest_version(root: DeviceRoot, slot: str) -> tuple[str, str] | None:
    """(version, manifest digest) of a slot whose files verify against its signed manifest."""
    try:
        with open(slot_dir(root, slot) / "manifest.bin", "rb") as f:
            manifest = read_manifest(f, vendor_key(root))
    except (OSError, ImageError, UpdateError, keys.KeyFileError):
        return None
    probe = {"slots": {slot: {"version": manifest.version, "manifest_sha256": manifest.digest}}}
    try:
        verify_slot(root, slot, probe)
    except UpdateError:
        return None
    return manifest.version, manifest.digest


def rebuild_state(root: DeviceRoot, problem: str, audit: object | None) -> dict:
    """state.json is unreadable (bit rot or tampering; a power cut cannot do it): rebuild it.

    Slots whose files verify are kept; the newest runs on trial (it must prove itself
    again), the other is its fallback; with none, the factory firmware. The anti-rollback
    floor becomes the newest verified version. The bad file is kept beside for inspection.
    """
    found = {s: v for s in SLOTS if (v := _slot_manifest_version(root, s)) is not None}
    state = factory_state()  # slot a is the factory firmware only while slot-a/ was never written
    for s in SLOTS:
        if s in found:
            version, digest = found[s]
            state["slots"][s] = {"status": "good", "version": version, "manifest_sha256": digest, "boots": 0}
        elif slot_dir(root, s).exists():
            state["slots"][s] = {"status": "bad", "reason": "does not verify after the state was lost"}
    if found:
        newest = max(found, key=lambda s: parse_version(found[s][0]))
        state["active"] = newest
        state["floor"] = found[newest][0]
        if state["slots"][other(newest)]["status"] == "good":
            state["slots"][newest]["status"] = "trial"  # it must prove itself again, with a fallback
    elif state["slots"]["a"]["status"] != "good":
        raise UpdateError(f"{problem}, and no firmware slot verifies: nothing to boot")
    aside = state_path(root).with_name(f"state.json.corrupt-{utc_now()}")
    with contextlib.suppress(OSError):
        os.replace(state_path(root), aside)
    save_state(root, state)
    log.error("firmware state unreadable (%s); rebuilt from the slots: active %s", problem, state["active"])
    audit_event(audit, FIRMWARE_STATE_REBUILT, problem=problem, active=state["active"],
                slots={s: v[0] for s, v in found.items()})
    return state


def boot_slot(root: str | Path | DeviceRoot, *, audit: object | None = None, verify: bool = True) -> BootResult:
    """Choose the slot to run at boot, counting trial boots and rolling back by itself.

    Call once per boot, before running the firmware. Raises UpdateError only if no slot
    can run at all.
    """
    root = root if isinstance(root, DeviceRoot) else DeviceRoot(root)
    audit = device_audit(root, audit)
    with slot_lock(root):
        cleanup_staging(root, uploads=True)
        try:
            state = load_state(root)
        except UpdateError as exc:
            state = rebuild_state(root, str(exc), audit)
        if verify:
            try:
                vendor_key(root)
            except (UpdateError, keys.KeyFileError) as exc:  # better an unverified boot than a brick
                log.error("cannot verify firmware slots: %s", exc)
                audit_event(audit, FIRMWARE_BOOT, action="unverified", reason=str(exc))
                verify = False
        slot = state["active"]
        info = state["slots"][slot]
        reason = None
        if info["status"] == "trial" and info.get("boots", 0) >= state["max_boot_tries"]:
            reason = f"not marked healthy within {state['max_boot_tries']} boots"
        elif info["status"] not in ("trial", "good"):
            reason = f"active slot is {info['status']}"
        elif verify:
            try:
                verify_slot(root, slot, state)
            except UpdateError as exc:
                reason = f"failed verification: {exc}"
        if reason is None:
            if info["status"] == "trial":
                info["boots"] = info.get("boots", 0) + 1
                save_state(root, state)  # counted before it runs: a crash loop still ends
            audit_event(audit, FIRMWARE_BOOT, slot=slot, version=info["version"],
                   status=info["status"], boots=info.get("boots"))
            log.info("booting slot %s (%s, %s)", slot, info["version"], info["status"])
            return _result(root, state)
        fallback = other(slot)
        fb_info = state["slots"][fallback]
        if fb_info["status"] != "good":
            raise UpdateError(f"slot {slot} {reason} and slot {fallback} is {fb_info['status']}: nothing to boot")
        if verify:
            try:
                verify_slot(root, fallback, state)
            except UpdateError as exc:
                raise UpdateError(f"slot {slot} {reason} and {exc}: nothing to boot") from None
        info.update(status="bad", reason=reason)
        state["active"] = fallback
        save_state(root, state)
        log.warning("slot %s %s: rolled back to slot %s (%s)", slot, reason, fallback, fb_info["version"])
        audit_event(audit, Event.FIRMWARE_ROLLBACK, from_slot=slot, from_version=info["version"],
               to_slot=fallback, to_version=fb_info["version"], reason=reason)
        return _result(root, state, slot, reason)


def mark_healthy(root: str | Path | DeviceRoot, *, audit: object | None = None) -> BootResult:
    """The running firmware passed its health check: its trial slot becomes good.

    Raises the anti-rollback floor to its version. A no-op on a slot that is already good,
    and on a trial slot installed since this boot (it has not run yet).
    """
    root = root if isinstance(root, DeviceRoot) else DeviceRoot(root)
    with slot_lock(root):
        state = load_state(root)
        slot = state["active"]
        info = state["slots"][slot]
        if info["status"] == "trial" and not info.get("boots"):
            # installed after this boot: the firmware that passed the check is still the old one
            log.warning("slot %s (%s) has not been booted yet; not marking it healthy", slot, info["version"])
        elif info["status"] == "trial":
            audit = device_audit(root, audit)
            info["status"] = "good"
            info["healthy_utc"] = utc_now()
            if parse_version(info["version"]) > parse_version(state["floor"]):
                state["floor"] = info["version"]
            save_state(root, state)
            log.info("slot %s (%s) marked healthy", slot, info["version"])
            audit_event(audit, Event.FIRMWARE_HEALTHY, slot=slot, version=info["version"],
                   boots=info.get("boots", 0))
        return _result(root, state)


def status(root: str | Path | DeviceRoot) -> dict:
    """The slot state as stored (for `bodycam firmware status` and the daemon)."""
    root = root if isinstance(root, DeviceRoot) else DeviceRoot(root)
    return load_state(root)
