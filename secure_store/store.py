"""EvidenceStore: the device's sealed evidence directory and the only way out of it.

Evidence is written by a SegmentSealer (``open_sealer``), closed after a power
cut by ``recover``, listed for the dock by ``list_evidence`` and deleted only by
``release`` with the SHA-256 of the segment's signed manifest as confirmation.
Free space is checked before and during recording against the disk (minus a
reserve) and an optional quota. "Full" means the next chunk at the configured bitrate
(``chunk_bytes``) would not fit, or the sealing reserve (``secure_store.reserve``) that
guarantees every segment can be closed is not on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from secure_store import hybrid
from secure_store.chain import ChainHead, load_head, save_head
from secure_store.clock_bound import ClockBound
from secure_store.durable import fsync_dir
from secure_store.errors import KeyMissing, ReleaseRefused, StorageFull, StoreError
from secure_store.layout import DeviceRoot
from secure_store.recovery import recover_torn
from secure_store.reserve import RESERVE_FILE, SealingReserve, is_no_space
from secure_store.sealer import MANIFEST_SUFFIX, SEGMENT_SUFFIX, SegmentSealer

log = logging.getLogger(__name__)

DEFAULT_RESERVE = 64 * 1024 * 1024   # left free on the disk for the OS, logs, audit
DEFAULT_CHUNK_BYTES = 256 * 1024    # without a bitrate; the device passes chunk_bytes_for(its bitrate)


def chunk_bytes_for(bitrate: int) -> int:
    """The room one chunk (one GOP, one second) can need at ``bitrate`` bit/s.

    The encoder's VBV buffer holds one second, so a one-second GOP carries at most two
    seconds' worth of bits; plus the record's own overhead.
    """
    return 2 * bitrate // 8 + 4096


NEARLY_FULL_FRACTION = 0.10
_STEM = re.compile(r"seg-\d{10}\Z")


@dataclass(frozen=True)
class EvidenceItem:
    """One sealed, complete file the dock may pull."""

    name: str     # "seg-0000000007.seg", "seg-0000000007.manifest", "audit/<file>"
    size: int
    sha256: str   # hex
    kind: Literal["segment", "manifest", "audit"]


@dataclass(frozen=True)
class StorageStatus:
    free_bytes: int   # room left for evidence (after reserve and quota)
    used_bytes: int   # bytes of evidence on the device
    level: Literal["ok", "nearly_full", "full"]


class EvidenceStore:
    """Sealed evidence under ``root.evidence``; see docs/API.md (secure_store/)."""

    def __init__(
        self,
        root: DeviceRoot,
        *,
        device_id: str,
        signing_key: ed25519.Ed25519PrivateKey | hybrid.SigningKey,
        agency_public_key: x25519.X25519PublicKey | hybrid.HybridAgencyPublicKey,
        audit: Any,
        clock: Callable[[], float] = time.time,
        clock_source: str | Callable[[], str] | None = None,
        sensor_clock: Callable[[], int | None] | None = None,
        clock_bound: Callable[[ClockBound | None], ClockBound] | None = None,
        locations: Callable[[int, int], list] | None = None,
        quota_bytes: int | None = None,
        reserve_bytes: int = DEFAULT_RESERVE,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        sealing_reserve: SealingReserve | None = None,
    ) -> None:
        if not isinstance(signing_key, (ed25519.Ed25519PrivateKey, hybrid.SigningKey)):
            raise KeyMissing("the evidence store needs the device's Ed25519 (or hybrid) signing key")
        if not isinstance(agency_public_key, (x25519.X25519PublicKey, hybrid.HybridAgencyPublicKey)):
            raise KeyMissing("the evidence store needs the agency's X25519 (or hybrid) public key")
        self.root = DeviceRoot(root) if not isinstance(root, DeviceRoot) else root
        self.device_id = device_id
        self.signing_key = signing_key
        self.agency_public_key = agency_public_key
        self.audit = audit
        self._clock = clock
        self._clock_source = clock_source
        self._sensor_clock = sensor_clock
        self._clock_bound = clock_bound
        self._locations = locations
        self.quota_bytes = quota_bytes
        self.reserve_bytes = reserve_bytes
        self.chunk_bytes = chunk_bytes
        for d in (self.root.evidence, self.root.state):
            d.mkdir(parents=True, exist_ok=True)
        self.sealing_reserve = sealing_reserve or SealingReserve(self.root.state / RESERVE_FILE)
        self.sealing_reserve.ensure()
        self.recovery_pending = False  # a torn segment recovery could not seal yet (disk full)
        self.head_dirty = False  # the chain head in memory is ahead of the one saved (no room to save it)
        self.chain_head: ChainHead = load_head(self.root.state)
        self._used = self._scan_used()
        self._digests: dict[tuple[str, int, int], str] = {}   # sealed files never change

    # --- recording ----------------------------------------------------------------------------

    def open_sealer(self) -> SegmentSealer:
        """A ChunkSink for the recorder; StorageFull (audit-logged) if the next chunk would not fit."""
        if not self.recover_pending():
            self.report_full(during="open_sealer")
            raise StorageFull("storage full: a torn segment is still waiting for room to be sealed; "
                              "recording refused")
        self.check_room(self.chunk_bytes, during="open_sealer")
        return SegmentSealer(self)

    def recover(self) -> list[str]:
        """Close segments torn by a power cut; returns the names of the segments it sealed.

        Never fails for lack of space: what cannot be sealed yet stays as it is
        (``recovery_pending``) and is sealed by :meth:`recover_pending` once there is room.
        """
        return recover_torn(self)

    def recover_pending(self) -> bool:
        """Retry a recovery the disk had no room for; True when nothing is pending any more."""
        if self.recovery_pending:  # cheap when nothing changed: a glob and a failed write, no new audit entry
            self.recover()
        return not self.recovery_pending

    def save_chain_head(self) -> bool:
        """Save the chain head durably; False (and ``recovery_pending``) if the disk has no room yet."""
        try:
            self.with_room(lambda: save_head(self.root.state, self.chain_head))
        except Exception as exc:  # noqa: BLE001 - only "no room" is handled here
            if not is_no_space(exc):
                raise
            if not self.head_dirty:
                log.error("disk full: chain head %d not saved yet (%s); saved once there is room",
                          self.chain_head.seq, exc)
            self.head_dirty = self.recovery_pending = True
            return False
        self.head_dirty = False
        return True

    def with_room(self, action: Callable[[], Any]) -> Any:
        """Run a write that closes evidence; on a full disk it may use the sealing reserve."""
        return self.sealing_reserve.run(action)

    # --- the dock's view ----------------------------------------------------------------------

    def list_evidence(self) -> list[EvidenceItem]:
        """Sealed segments, their manifests and the audit log files, in sequence order."""
        items: list[EvidenceItem] = []
        for manifest in sorted(self.root.evidence.glob("seg-*" + MANIFEST_SUFFIX)):
            segment = manifest.with_suffix(SEGMENT_SUFFIX)
            if segment.exists():
                items.append(self._sealed_item(segment, "segment"))
            items.append(self._sealed_item(manifest, "manifest"))
        if self.root.audit.is_dir():
            for path in sorted(self.root.audit.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    items.append(_audit_item(path))
        return items

    def _sealed_item(self, path: Path, kind: str) -> EvidenceItem:
        """Hash a sealed file once: a dock lists often and a full card holds many GB."""
        st = path.stat()
        key = (path.name, st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = _sha256_prefix(path, st.st_size)
        return EvidenceItem(path.name, st.st_size, self._digests[key], kind)  # type: ignore[arg-type]

    def evidence_path(self, name: str) -> Path:
        """The path of an evidence item named as in ``list_evidence``; StoreError otherwise."""
        if name.startswith("audit/"):
            base, leaf = self.root.audit, name[len("audit/"):]
        else:
            base, leaf = self.root.evidence, name
        if not leaf or "/" in leaf or "\\" in leaf or leaf.startswith("."):
            raise StoreError(f"{name!r} is not an evidence name")
        path = base / leaf
        if not path.is_file():
            raise StoreError(f"no evidence named {name!r}")
        return path

    def release(self, segment_name: str, confirmation: bytes) -> None:
        """Delete one offloaded segment and its manifest: the only deletion path.

        ``confirmation`` must be the SHA-256 of the segment's signed manifest,
        which proves the caller holds (and has verified) exactly that manifest.
        """
        stem = segment_name.removesuffix(SEGMENT_SUFFIX).removesuffix(MANIFEST_SUFFIX)
        if not _STEM.match(stem):
            raise ReleaseRefused(f"release: {segment_name!r} is not a segment name")
        manifest = self.root.evidence / (stem + MANIFEST_SUFFIX)
        segment = self.root.evidence / (stem + SEGMENT_SUFFIX)
        if not manifest.is_file():
            raise ReleaseRefused(f"release: {stem} is not a sealed segment on this device")
        digest = hashlib.sha256(manifest.read_bytes()).digest()
        if not isinstance(confirmation, (bytes, bytearray)) or not hmac.compare_digest(digest, bytes(confirmation)):
            self.audit.append("release_refused", segment=stem, reason="confirmation does not match manifest")
            raise ReleaseRefused(f"release: confirmation does not match the manifest of {stem}; nothing deleted")
        size = (segment.stat().st_size if segment.exists() else 0) + manifest.stat().st_size
        self.audit.append("delete", segment=stem, manifest_sha256=digest.hex(), bytes=size)
        segment.unlink(missing_ok=True)   # segment first: a lone .seg would look torn
        if self.head_dirty and not self.save_chain_head():
            # the manifest is what the unsaved chain head would be rolled forward from: keep it
            fsync_dir(self.root.evidence)
            self._used = max(0, self._used - size + manifest.stat().st_size)
            log.warning("released %s's segment; its manifest stays until the chain head is saved", stem)
            return
        manifest.unlink()
        fsync_dir(self.root.evidence)
        self._used = max(0, self._used - size)
        log.info("released %s (%d bytes)", stem, size)
        getattr(self.audit, "flush", lambda: None)()  # entries a full disk kept in memory fit now

    # --- storage ------------------------------------------------------------------------------

    def storage_status(self) -> StorageStatus:
        st = os.statvfs(self.root.evidence)
        disk_free = st.f_bavail * st.f_frsize - self.reserve_bytes
        capacity = st.f_blocks * st.f_frsize - self.reserve_bytes
        free = disk_free
        if self.quota_bytes is not None:
            free = min(free, self.quota_bytes - self._used)
            capacity = min(capacity, self.quota_bytes)
        free = max(0, free)
        if free < self.chunk_bytes or not self.sealing_reserve.ensure() or self.recovery_pending:
            level = "full"
        elif free < NEARLY_FULL_FRACTION * max(capacity, 1):
            level = "nearly_full"
        else:
            level = "ok"
        return StorageStatus(free, self._used, level)

    def has_room(self, nbytes: int) -> bool:
        """Room for ``nbytes`` of evidence with the sealing reserve still on disk."""
        return self.storage_status().free_bytes >= nbytes and self.sealing_reserve.held

    def check_room(self, nbytes: int, *, during: str) -> None:
        if not self.has_room(nbytes):
            self.report_full(during=during)
            free = self.storage_status().free_bytes
            why = f"{free} bytes free, {nbytes} needed" if free < nbytes else "no room for the sealing reserve"
            raise StorageFull(f"storage full: {why}; recording refused")

    def report_full(self, *, during: str, segment: str | None = None) -> None:
        status = self.storage_status()
        log.warning("storage full during %s (%d bytes free)", during, status.free_bytes)
        details = {"during": during, "free_bytes": status.free_bytes, "used_bytes": status.used_bytes}
        if segment:
            details["segment"] = segment
        self.audit.append("storage_full", **details)

    # --- used by the sealer and recovery ------------------------------------------------------

    def note_written(self, nbytes: int) -> None:
        self._used += nbytes

    def clock_us(self) -> int:
        return int(round(self._clock() * 1_000_000))

    def utc_offset_us(self, written_ts_us: int) -> int:
        """UTC minus sensor time, now: what turns a frame timestamp into a wall-clock time.

        ``sensor_clock`` reads the sensor clock now (the device passes its newest frame's
        timestamp). Without it, the frames being written are taken to be new, which is
        wrong by the pre-event's age for a segment sealed from the buffer: give it.
        """
        sensor_now = self._sensor_clock() if self._sensor_clock is not None else None
        return self.clock_us() - (written_ts_us if sensor_now is None else max(sensor_now, written_ts_us))

    def clock_bound(self, start: ClockBound | None) -> ClockBound:
        """How wrong a segment's UTC may be (``firmware.clock``); ``start``: the bound when it began."""
        return self._clock_bound(start) if self._clock_bound is not None else ClockBound()

    def locations_for(self, first_us: int, last_us: int) -> list:
        """The GPS fixes to seal with a chunk of frames ``first_us`` .. ``last_us`` (``firmware.gps``)."""
        return self._locations(first_us, last_us) if self._locations is not None else []

    def clock_source(self) -> str:
        """What set the clock: ``clock_source`` if given, else the clock's ``source`` attribute, else "system"."""
        src = self._clock_source
        if src is None:
            src = getattr(self._clock, "source", None) or "system"
        return str(src() if callable(src) else src)

    def _scan_used(self) -> int:
        total = 0
        for entry in os.scandir(self.root.evidence):
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        return total


def _sha256_prefix(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while size > 0 and (block := f.read(min(1 << 20, size))):
            h.update(block)
            size -= len(block)
    return h.hexdigest()


def _audit_item(path: Path) -> EvidenceItem:
    """An audit file up to its last complete line: the log may be appended to right now."""
    with open(path, "rb") as f:
        data = f.read()
    size = data.rfind(b"\n") + 1
    return EvidenceItem(f"audit/{path.name}", size, hashlib.sha256(data[:size]).hexdigest(), "audit")


__all__ = ["EvidenceStore", "EvidenceItem", "StorageStatus", "StorageFull"]
