"""Where the camera was: the recording's GPS fixes as a GPX track and in the export report.

The fixes come out of the decrypted chunk plaintexts (``recorder.location``), so every one
was signed with the footage it was sealed beside. A fix is placed on the recording's
timeline by its sensor timestamp plus its segment's ``utc_offset_us``, like a frame. The
GPX file (GPX 1.1, one ``trkseg`` per stretch with a fix; a no-fix record ends a stretch)
is for a map: each point's ``time`` is on the recording's timeline (the clock the video's
UTC comes from, so the track lines up with the footage), the receiver's own UTC in
``desc``. The JSON report gives the position at each marker and says "no fix" where
there was none.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from recorder.location import Fix, decode_locations
from secure_store.clock_bound import ClockBound
from secure_store.durable import write_atomic

from export.mp4 import iso_utc as _iso

STALE_US = 2_500_000  # a fix older than this at a marker is not "the position at the marker"
UERE_M = 5.0          # receiver accuracy per unit HDOP (a typical consumer GNSS figure)


class RecordingTrack:
    """The fixes of one recording, in timeline order; fed one chunk plaintext at a time."""

    def __init__(self) -> None:
        self.fixes: list[tuple[int, Fix]] = []   # (timeline UTC µs, fix)

    def add_chunk(self, plaintext: bytes, utc_offset_us: int) -> int:
        """Take the location records of one chunk; returns how many. LocationFormatError if bad."""
        found = decode_locations(plaintext)
        for fix in found:
            self.fixes.append((fix.sensor_ts_us + utc_offset_us, fix))
        return len(found)

    def _sorted(self) -> list[tuple[int, Fix]]:
        self.fixes.sort(key=lambda item: item[0])
        return self.fixes

    def position_at(self, utc_us: int) -> dict[str, Any]:
        """The newest record at or before ``utc_us``: a position, or ``no fix``, never a stale one."""
        fixes = self._sorted()
        i = bisect.bisect_right([t for t, _ in fixes], utc_us) - 1
        if i < 0:
            return {"fix": False, "reason": "no location record before this moment"}
        t, fix = fixes[i]
        if not fix.has_fix:
            return {"fix": False, "reason": "receiver had no fix", "record_utc": _iso(t)}
        if utc_us - t > STALE_US:
            return {"fix": False, "reason": f"newest fix is {(utc_us - t) / 1e6:.1f} s older", "record_utc": _iso(t)}
        return {"fix": True, "record_utc": _iso(t), **fix_entry(fix)}

    def report(self, gpx_name: str | None) -> dict[str, Any]:
        fixes = self._sorted()
        good = [f for _, f in fixes if f.has_fix]
        return {"recorded": bool(fixes), "gpx": gpx_name, "records": len(fixes), "fixes": len(good),
                "no_fix_records": len(fixes) - len(good),
                "note": "positions from the camera's GPS receiver, sealed inside the signed chunks; "
                        f"accuracy about HDOP x {UERE_M:g} m"}

    def write_gpx(self, path: Path, name: str) -> None:
        """Write the GPX 1.1 track durably (never over an existing file)."""
        lines = ['<?xml version="1.0" encoding="UTF-8"?>',
                 '<gpx version="1.1" creator="bodycam export" xmlns="http://www.topografix.com/GPX/1/1">',
                 f"  <trk><name>{escape(name)}</name>"]
        open_seg = False
        for utc_us, fix in self._sorted():
            if not fix.has_fix:
                if open_seg:
                    lines.append("    </trkseg>")
                    open_seg = False
                continue
            if not open_seg:
                lines.append("    <trkseg>")
                open_seg = True
            parts = [f'      <trkpt lat="{fix.lat:.7f}" lon="{fix.lon:.7f}">']
            if fix.alt_m is not None:
                parts.append(f"<ele>{fix.alt_m:.3f}</ele>")
            parts.append(f"<time>{_iso(utc_us)}</time>")
            if fix.gps_utc_us is not None:
                parts.append(f"<desc>GPS UTC {_iso(fix.gps_utc_us)}</desc>")
            kind = "dgps" if fix.quality == 2 else _GPX_FIX.get(fix.mode)
            if kind:
                parts.append(f"<fix>{kind}</fix>")
            parts.append(f"<sat>{fix.satellites}</sat>")
            if fix.hdop is not None:
                parts.append(f"<hdop>{fix.hdop:.2f}</hdop>")
            lines.append("".join(parts) + "</trkpt>")
        if open_seg:
            lines.append("    </trkseg>")
        lines += ["  </trk>", "</gpx>", ""]
        write_atomic(path, "\n".join(lines).encode(), 0o644, overwrite=False)


_GPX_FIX = {2: "2d", 3: "3d"}  # GSA mode; unknown (0) is left out


def fix_entry(fix: Fix) -> dict[str, Any]:
    """A fix as the report states it."""
    return {"lat": fix.lat, "lon": fix.lon, "alt_m": fix.alt_m, "quality": fix.quality, "mode": fix.mode,
            "satellites": fix.satellites, "hdop": fix.hdop,
            "accuracy_m": None if fix.hdop is None else round(fix.hdop * UERE_M, 1),
            "speed_mps": fix.speed_mps, "course_deg": fix.course_deg,
            "gps_utc": None if fix.gps_utc_us is None else _iso(fix.gps_utc_us)}


def clock_entry(bound: ClockBound) -> dict[str, Any]:
    """A segment's signed clock error bound, for the report."""
    return {"error_us": bound.error_us, "reference": bound.ref, "reference_age_us": bound.ref_age_us,
            "drift_ppb": bound.drift_ppb, "statement": bound.describe()}
