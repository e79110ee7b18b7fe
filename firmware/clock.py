"""The device clock's known error: every time reference measured, drift estimated, a bound signed.

A camera's clock is set by the dock (``firmware.offload.OffsetClock``) and then drifts with
its crystal until the next docking. Courts ask "exactly when", so each segment's manifest
carries a bound on how wrong its UTC may be (``secure_store.clock_bound``):

- every reference is a measurement: a dock sync (which also sets the clock) and GPS time
  when the receiver has a good fix (which is only measured: GPS is not authenticated, so
  it never moves the clock);
- the drift rate is the least-squares slope of the references' offsets against the
  device's own base clock, with an uncertainty from the references' own errors over their
  time span; until two references are far enough apart a crystal tolerance is assumed;
- bound = reference error + |offset the segment uses - offset measured| + (|drift| +
  uncertainty + margin) x time since the reference; the smallest over the references is
  taken. The margin (5 ppm) is for what a measured average hides: a crystal's rate moves
  with temperature (a car in summer, a winter street);
- a base clock that jumps (set by hand, by NTP, a dead RTC) is audit-logged with its size,
  and the references before it are forgotten: the bound is "unknown" until the next one.
  Sealed segments keep the UTC offset they were sealed with: nothing earlier is rewritten.

Each measured offset and the drift estimate go to the audit log (``clock_reference``,
``clock_jump``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from secure_store.clock_bound import CLOCK_JUMP, CLOCK_REFERENCE, REF_DOCK, REF_GPS, ClockBound, worse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """One measurement of true UTC against the device's base clock."""

    kind: int            # REF_DOCK or REF_GPS
    base_s: float        # the device's base clock (before any offset) when measured
    raw_offset_us: int   # reference UTC minus base clock
    error_us: int        # how wrong the reference itself may be


@dataclass(frozen=True)
class ClockConfig:
    dock_error_ms: float = 20.0       # a dock's time message: serial latency and the dock's own NTP error
    gps_latency_ms: float = 500.0     # NMEA arrives up to this long after the epoch it names
    gps_interval_s: float = 600.0     # measure GPS time at most this often (audit log size)
    default_drift_ppm: float = 50.0   # crystal tolerance assumed until the drift is measured
    drift_margin_ppm: float = 5.0     # added to a measured drift: its rate moves with temperature
    min_span_s: float = 600.0         # references closer than this do not give a drift
    jump_s: float = 1.0               # a base clock step larger than this is a jump
    max_references: int = 64


class ClockTracker:
    """Tracks the device clock (``clock``: an ``OffsetClock``: ``base()`` and ``offset_us``)."""

    def __init__(self, clock: Any, audit: Any, config: ClockConfig | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.audit = audit
        self.config = config or ClockConfig()
        self.monotonic = monotonic
        self.references: list[Reference] = []
        self.drift: float | None = None          # device fast positive (s/s), None until measured
        self.drift_uncertainty: float | None = None
        self._lock = threading.Lock()
        self._last_check = (monotonic(), clock.base())
        self._last_gps_base: float | None = None
        self._offset_seen = int(getattr(clock, "offset_us", 0))  # the offset before the next dock sync

    # -- references -------------------------------------------------------------------------------
    def dock_synced(self, new_offset_us: int) -> None:
        """The dock set the clock to ``new_offset_us`` (``OffloadServer``'s ``on_clock_set``).

        A reference with no residual; the device was off by the step it took.
        """
        self.check_jump()
        old, self._offset_seen = self._offset_seen, int(new_offset_us)
        self._add(Reference(REF_DOCK, self.clock.base(), int(new_offset_us), round(self.config.dock_error_ms * 1000)),
                  measured_error_us=int(new_offset_us) - old)

    def gps_time(self, gps_utc_us: int, base_s: float) -> bool:
        """GPS UTC of a good fix whose first sentence arrived at base clock ``base_s``; True if used.

        The sentence arrives 0 .. ``gps_latency_ms`` after the epoch it names, so the
        reference is the middle of that window, with half of it as its error.
        """
        self.check_jump()
        with self._lock:
            last = self._last_gps_base
            if last is not None and 0 <= base_s - last < self.config.gps_interval_s:
                return False
            self._last_gps_base = base_s
        half_us = round(self.config.gps_latency_ms * 500)
        raw = int(gps_utc_us) + half_us - round(base_s * 1e6)
        self._add(Reference(REF_GPS, base_s, raw, half_us), measured_error_us=raw - self.clock.offset_us)
        return True

    def _add(self, ref: Reference, *, measured_error_us: int) -> None:
        with self._lock:
            self.references.append(ref)
            del self.references[:-self.config.max_references]
            self._fit()
            drift_ppb = None if self.drift is None else round(self.drift * 1e9)
            uncertainty_ppb = None if self.drift_uncertainty is None else round(self.drift_uncertainty * 1e9)
            count = len(self.references)
        source = "dock" if ref.kind == REF_DOCK else "gps"
        log.info("clock reference (%s): device off by %+d µs, drift %s ppb", source, measured_error_us, drift_ppb)
        self.audit.append(CLOCK_REFERENCE, source=source, offset_us=measured_error_us,
                          reference_error_us=ref.error_us, drift_ppb=drift_ppb,
                          drift_uncertainty_ppb=uncertainty_ppb, references=count)

    def _fit(self) -> None:
        """Least-squares drift over the references; its uncertainty from their errors and span."""
        refs = self.references
        self.drift = self.drift_uncertainty = None
        if len(refs) < 2:
            return
        span = refs[-1].base_s - refs[0].base_s
        if span < self.config.min_span_s:
            return
        n = len(refs)
        mx = sum(r.base_s for r in refs) / n
        my = sum(r.raw_offset_us for r in refs) / n
        sxx = sum((r.base_s - mx) ** 2 for r in refs)
        if sxx <= 0:
            return
        slope_us_per_s = sum((r.base_s - mx) * (r.raw_offset_us - my) for r in refs) / sxx
        uncertainty = (max(r.error_us for r in refs) * 2) / 1e6 / span
        if uncertainty >= self.config.default_drift_ppm * 1e-6:
            return
        # raw offset = UTC - base; a base clock that runs fast makes it fall: drift = -slope
        self.drift = -slope_us_per_s / 1e6
        self.drift_uncertainty = uncertainty

    # -- jumps --------------------------------------------------------------------------------------
    def check_jump(self) -> int | None:
        """Compare the base clock with the monotonic clock since the last check; audit-log a jump.

        Returns the jump in µs, or None. The device calls this every tick.
        """
        with self._lock:
            mono, base = self.monotonic(), self.clock.base()
            last_mono, last_base = self._last_check
            self._last_check = (mono, base)
            jump_s = (base - last_base) - (mono - last_mono)
            if abs(jump_s) <= self.config.jump_s:
                return None
            self.references.clear()
            self.drift = self.drift_uncertainty = None
            self._last_gps_base = None
        jump_us = round(jump_s * 1e6)
        log.warning("device clock jumped by %+.3f s; its error is unknown until the next reference", jump_s)
        self.audit.append(CLOCK_JUMP, jump_us=jump_us, base_utc=round(base * 1e6), references_dropped=True)
        return jump_us

    # -- the bound ----------------------------------------------------------------------------------
    def bound(self, applied_offset_us: int | None = None) -> ClockBound:
        """How wrong ``base + applied_offset_us`` (default: the clock's offset now) may be, now."""
        applied = self.clock.offset_us if applied_offset_us is None else applied_offset_us
        with self._lock:
            refs = list(self.references)
            drift, uncertainty = self.drift, self.drift_uncertainty
        if not refs:
            return ClockBound(applied_offset_us=applied)
        rate = (self.config.default_drift_ppm * 1e-6 if drift is None
                else abs(drift) + uncertainty + self.config.drift_margin_ppm * 1e-6)
        now = self.clock.base()
        best: ClockBound | None = None
        for r in refs:
            age_s = abs(now - r.base_s)
            error = r.error_us + abs(r.raw_offset_us - applied) + math.ceil(rate * age_s * 1e6)
            if best is None or error < best.error_us:
                best = ClockBound(error, r.kind, round(age_s * 1e6),
                                  None if drift is None else round(drift * 1e9), applied)
        return best

    def segment_bound(self, start: ClockBound | None) -> ClockBound:
        """For the sealer: the bound now for the offset a segment began with, or the one at its
        start if that was larger (a linear drift is worst at one end of the segment)."""
        if start is None:
            return self.bound()
        return worse(start, self.bound(start.applied_offset_us))
