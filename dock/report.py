"""What a dock operator reads: the camera's status and the recordings a pull brought in.

The status is what the device reports over the link (battery, storage, firmware, clock,
footage still queued on it). The recordings are read from the dock's own copy: each
segment's signed manifest gives the recording ID, its first and last frame in UTC and
its markers; the device's audit log (pulled last) adds what started and stopped it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from secure_store.audit import read_entries
from secure_store.errors import StoreError
from secure_store.format import Manifest

log = logging.getLogger(__name__)


@dataclass
class RecordingSummary:
    """One recording as the dock holds it (possibly only the segments of this pull)."""

    recording_id: str
    start_utc_us: int
    end_utc_us: int
    first_ts_us: int  # sensor time: what the duration is measured in (UTC offsets may differ by segment)
    last_ts_us: int
    segments: int = 0
    markers: list[str] = field(default_factory=list)
    trigger: str = "?"
    stop_reason: str = "?"
    recovered: bool = False  # closed by power-cut recovery
    storage_full: bool = False

    @property
    def duration_s(self) -> float:
        return max(0, self.last_ts_us - self.first_ts_us) / 1e6


def _utc(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def recordings_in(device_dir: str | Path, segments: Iterable[str]) -> list[RecordingSummary]:
    """Summaries of the recordings the named segments (``seg-N.seg``) belong to, oldest first."""
    device_dir = Path(device_dir)
    found: dict[str, RecordingSummary] = {}
    for name in sorted(segments):
        path = device_dir / "evidence" / name.replace(".seg", ".manifest")
        try:
            manifest = Manifest.parse(path.read_bytes(), path.name)
        except (OSError, StoreError) as exc:
            log.warning("no summary for %s: %s", name, exc)
            continue
        rec = found.setdefault(manifest.recording_id, RecordingSummary(
            manifest.recording_id, manifest.first_utc_us, manifest.last_utc_us, manifest.first_ts_us,
            manifest.last_ts_us))
        if manifest.frame_count:
            rec.start_utc_us = min(rec.start_utc_us, manifest.first_utc_us)
            rec.end_utc_us = max(rec.end_utc_us, manifest.last_utc_us)
            rec.first_ts_us = min(rec.first_ts_us, manifest.first_ts_us)
            rec.last_ts_us = max(rec.last_ts_us, manifest.last_ts_us)
        rec.segments += 1
        rec.markers += [m.label for m in manifest.markers]
        rec.recovered |= manifest.recovered
        rec.storage_full |= manifest.storage_full
    try:
        entries = read_entries(device_dir / "audit")
    except StoreError as exc:
        log.warning("audit log unreadable, triggers and stop reasons unknown: %s", exc)
        entries = []
    for entry in entries:
        rec = found.get(str(entry.details.get("recording_id")))
        if rec is None:
            continue
        if entry.event == "record_start":
            rec.trigger = str(entry.details.get("trigger", "?"))
        elif entry.event == "record_stop":
            rec.stop_reason = str(entry.details.get("reason", "?"))
    for rec in found.values():
        if rec.stop_reason == "?" and rec.recovered:
            rec.stop_reason = "power cut (recovered)"
    return sorted(found.values(), key=lambda r: r.start_utc_us)


def format_recordings(recordings: list[RecordingSummary]) -> list[str]:
    """One line per recording: ID, start and end (UTC), duration, trigger, stop reason, markers."""
    lines = []
    for r in recordings:
        flags = "".join([" (recovered)" if r.recovered else "", " (storage full)" if r.storage_full else ""])
        markers = ", ".join(r.markers) if r.markers else "none"
        lines.append(f"  recording {r.recording_id}: {_utc(r.start_utc_us)} -> {_utc(r.end_utc_us)} "
                     f"({r.duration_s:.1f} s, {r.segments} segments), trigger {r.trigger}, "
                     f"stopped by {r.stop_reason}, markers: {markers}{flags}")
    return lines


def format_status(status: dict[str, Any]) -> list[str]:
    """The camera's status, as the device reported it, one fact a line."""
    storage = status.get("storage") or {}
    clock = status.get("clock") or {}
    queued = status.get("queued") or {}
    battery = status.get("battery_percent")
    free, used = storage.get("free_bytes"), storage.get("used_bytes")
    lines = [
        f"  device     {status.get('device_id', '?')}, firmware {status.get('firmware_version', '?')}",
        f"  battery    {'unknown' if battery is None else f'{battery} %'}",
        f"  storage    {storage.get('level', '?')}: "
        + (f"{free / 2**20:.1f} MiB free, {used / 2**20:.1f} MiB of evidence" if free is not None and used is not None
           else "?"),
        f"  clock      {_utc(round(clock['utc'] * 1e6)) if isinstance(clock.get('utc'), (int, float)) else '?'}"
        + (f" (offset {clock['offset_us'] / 1000:+.1f} ms)" if isinstance(clock.get("offset_us"), int) else ""),
        f"  state      {status.get('recording_state', '?')}"
        + (f" ({status['recording_id']})" if status.get("recording_id") else ""),
    ]
    if queued:
        lines.append(f"  queued     {queued.get('segments', 0)} segments, "
                     f"{queued.get('bytes', 0) / 2**20:.1f} MiB waiting to be pulled")
    return lines
