"""The pre-event buffer: the last ``duration_s`` of encoded video, in RAM, ready to hand over.

An officer presses record *after* something happens; the seconds before the press are often
the evidence. ``PreEventBuffer`` sits between the encoder and the recorder, keeping whole GOPs
of the newest frames, and on ``open_output(sink)`` hands every held frame to the sink followed,
without a gap or a duplicate, by every live frame until ``close_output()``.

It differs from picamera2's ``CircularOutput2`` in three ways that matter for evidence:

- no time-shift: when a sink is open, live frames reach it at once, not ``duration`` later;
- a byte bound (``max_bytes``) as well as a time bound, so a bitrate spike cannot exhaust RAM;
- what it holds always starts at a keyframe, so the recording is decodable from its first byte.

What it holds starts at the newest keyframe whose timestamp is at or before newest − duration
(so at most duration + one GOP). ``duration_s=0`` therefore holds just the GOP in flight: the
recording still starts at a keyframe (the press's own GOP) and is otherwise pure passthrough.
Frames arriving after ``close_output()`` are held again from the next keyframe.

Audio packets (``audio=True``: AAC access units on the same sensor clock) travel in the GOP
they arrive in and count against ``max_bytes`` like video. Whether the seconds before a press
keep their sound is policy (``hold_audio``): by default the buffer holds video only, and a
recording's audio starts at the press — the first packet forwarded is the first one heard at
or after the newest video frame when ``open_output`` ran (a capture loop encodes a frame's sound
just before the frame, so the few packets already heard past that frame are kept aside until
the next frame and handed over at the press). With ``hold_audio=True`` held audio is handed
over with its GOPs, and the live audio follows without a gap.

Threading follows ``CircularOutput2``: one lock around ``outputframe`` (the encoder thread's
only call), taken by the control thread's ``open_output`` / ``close_output``. ``open_output`` hands over
the held frames while holding it, so the encoder thread waits for the sink to take them
(that wait is what makes the handoff gapless). The firmware therefore opens a
``recorder.background.BackgroundOutput``, which takes them into a queue at once and seals
them on its own thread: the encoder never waits for a disk.

Documented handling of bad input (the frame is refused and the buffer is left untouched):

- a timestamp that is ``None`` or earlier than the previous frame's raises ``TimestampError``;
  equal timestamps are accepted (order is the order of arrival);
- an audio timestamp must be later than the previous *audio* packet's (each AAC packet starts
  at its own sample; audio leaves its encoder a few tens of milliseconds behind the video, so
  the two are not compared), or ``TimestampError``;
- audio before the first held keyframe, or before the press when ``hold_audio`` is off, is
  dropped: no GOP could carry it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from buffer.frame import Frame, Output

log = logging.getLogger(__name__)

MAX_DURATION_S = 120.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # 30 s at up to ~17 Mbit/s

_NEVER = 1 << 63  # an expiry time no timestamp reaches
_NO_FRAME_YET = -(1 << 63)
_MAX_AHEAD = 64  # audio packets kept past the newest video frame when the buffer holds no sound

# A held frame is a plain (data, keyframe, timestamp_us, audio) tuple, Frame's field order:
# Frame(...) goes through a Python-level __new__, too slow for the encoder's hot path.
_Gop = list  # list[tuple[bytes, bool, int, bool]], first entry a video keyframe


class PreEventBufferError(Exception):
    """The pre-event buffer was misused (bad arguments, sink state, unsupported frame)."""


class TimestampError(PreEventBufferError, ValueError):
    """A frame came without a timestamp or with one earlier than the previous frame's."""


def _timestamp_problem(timestamp: int | None, newest_us: int) -> str:
    if timestamp is None:
        return "frame has no timestamp"
    return f"frame timestamp {timestamp} µs goes back before the previous frame's {newest_us} µs"


class PreEventBuffer:
    """Keep at least ``duration_s`` of whole GOPs before the newest frame, within ``max_bytes``.

    Implements picamera2's ``Output`` protocol: ``outputframe``, plus the ``start`` / ``stop`` /
    ``_add_stream`` hooks its encoders call. picamera2's encoders also insist on an instance of
    their own ``Output`` class, so on a Pi a thin subclass forwards to this (recorder/picamera.py).
    """

    needs_add_stream = False  # picamera2 encoders ask outputs these two questions
    needs_pacing = False

    def __init__(self, duration_s: float = 30.0, max_bytes: int = DEFAULT_MAX_BYTES,
                 hold_audio: bool = False) -> None:
        if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not (
            0.0 <= duration_s <= MAX_DURATION_S
        ):
            raise PreEventBufferError(
                f"duration_s must be between 0 and {MAX_DURATION_S:g} seconds, got {duration_s!r}"
            )
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise PreEventBufferError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self._hold_audio = bool(hold_audio)
        self._newest_audio_us = _NO_FRAME_YET
        self._audio_from_us = _NO_FRAME_YET  # live audio before this (the press) is not forwarded
        self._audio_ahead: deque[tuple[bytes, int]] = deque(maxlen=_MAX_AHEAD)  # heard after the newest frame
        self._duration_s = float(duration_s)
        self._duration_us = round(duration_s * 1_000_000)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._gops: deque[_Gop] = deque()
        self._tail: _Gop | None = None  # the GOP in flight, last of _gops
        self._bytes = 0
        self._expire_at = _NEVER  # newest timestamp at which the oldest GOP is no longer needed
        self._newest_us = _NO_FRAME_YET
        self._sink: Output | None = None
        self._sink_synced = False  # the open sink has had its keyframe
        self._short = False  # max_bytes has cut the buffer below duration_s

    # -- the encoder thread's side -------------------------------------------------------

    def outputframe(
        self,
        frame: bytes,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: object = None,
        audio: bool = False,
    ) -> None:
        """Take one encoded frame: hold it, or forward it to the open sink.

        ``packet`` is ignored: sinks receive the bytes, keyframe flag and timestamp only.
        """
        with self._lock:
            if audio:
                self._take_audio(frame, timestamp)
                return
            if timestamp is None or timestamp < self._newest_us:
                raise TimestampError(_timestamp_problem(timestamp, self._newest_us))
            self._newest_us = timestamp

            sink = self._sink
            if sink is not None:
                if keyframe or self._sink_synced:
                    self._sink_synced = True
                    sink.outputframe(frame, keyframe, timestamp)
                return

            if keyframe:
                self._tail = tail = [(frame, True, timestamp, False)]
                self._gops.append(tail)
                if len(self._gops) == 2:
                    self._expire_at = timestamp + self._duration_us
            elif self._tail is not None:
                self._tail.append((frame, False, timestamp, False))
            else:
                return  # before the first keyframe: nothing could decode it
            self._bytes += len(frame)
            if timestamp >= self._expire_at:
                self._expire(timestamp - self._duration_us)
            if self._bytes > self._max_bytes:
                self._shed()

    def _take_audio(self, frame: bytes, timestamp: int | None) -> None:
        """One audio packet (lock held): forward it, hold it in the GOP in flight, or drop it."""
        if timestamp is None or timestamp <= self._newest_audio_us:
            raise TimestampError(f"audio packet timestamp {timestamp!r} µs does not follow the previous "
                                 f"packet's {self._newest_audio_us} µs")
        self._newest_audio_us = timestamp
        sink = self._sink
        if sink is not None:
            if self._sink_synced and (self._hold_audio or timestamp >= self._audio_from_us):
                sink.outputframe(frame, False, timestamp, None, True)
            return
        if not self._hold_audio:  # policy keeps the pre-event buffer silent; the press may be next
            ahead = self._audio_ahead
            while ahead and ahead[0][1] < self._newest_us:
                ahead.popleft()
            ahead.append((frame, timestamp))
            return
        if self._tail is None:
            return  # no keyframe to attach it to yet
        self._tail.append((frame, False, timestamp, True))
        self._bytes += len(frame)
        if self._bytes > self._max_bytes:
            self._shed()

    def _expire(self, cutoff_us: int) -> None:
        """Drop oldest GOPs while the next one still starts at or before the cutoff."""
        gops = self._gops
        while len(gops) > 1 and gops[1][0][2] <= cutoff_us:
            self._drop_oldest()
        self._short = False
        self._rearm()

    def _rearm(self) -> None:
        """After GOPs went: when the (new) oldest one will be expirable, and the GOP in flight."""
        gops = self._gops
        self._expire_at = gops[1][0][2] + self._duration_us if len(gops) > 1 else _NEVER
        self._tail = gops[-1] if gops else None

    def _shed(self) -> None:
        """Drop whole oldest GOPs until the bytes fit; say so, since evidence is being lost."""
        gops = self._gops
        while self._bytes > self._max_bytes and gops:
            self._drop_oldest()
        self._rearm()
        if not self._short:
            self._short = True
            log.warning(
                "pre-event buffer over max_bytes=%d: dropped oldest GOPs, now holding %.2f s of %.2f s",
                self._max_bytes, self._held_seconds(), self._duration_s,
            )

    def _drop_oldest(self) -> None:
        gop = self._gops.popleft()
        self._bytes -= sum(len(f[0]) for f in gop)

    # -- the control thread's side -------------------------------------------------------

    def open_output(self, sink: Output) -> None:
        """Hand every held frame to ``sink`` in order, then forward each new frame to it.

        Done under the encoder's lock, so no frame can slip between the last held frame and
        the first live one. If the sink raises while taking the held frames, nothing is
        discarded and no sink is open: the caller may retry.
        """
        with self._lock:
            if self._sink is not None:
                raise PreEventBufferError("a sink is already open; close_output() first")
            for gop in self._gops:
                for data, keyframe, timestamp, audio in gop:
                    if audio:
                        sink.outputframe(data, False, timestamp, None, True)
                    else:
                        sink.outputframe(data, keyframe, timestamp)
            self._sink_synced = bool(self._gops)
            self._audio_from_us = self._newest_us  # the press: live audio from here on
            if self._sink_synced and not self._hold_audio:
                for data, timestamp in self._audio_ahead:
                    if timestamp >= self._audio_from_us:
                        sink.outputframe(data, False, timestamp, None, True)
            self._audio_ahead.clear()
            self._sink = sink
            self._clear()

    def close_output(self) -> None:
        """Stop forwarding; buffering resumes at the next keyframe."""
        with self._lock:
            if self._sink is None:
                raise PreEventBufferError("no sink is open")
            self._sink = None
            self._sink_synced = False

    def start(self) -> None:
        """picamera2 encoder hook; the buffer is always ready."""

    def stop(self) -> None:
        """picamera2 encoder hook; held frames stay held until opened or discarded."""

    def _add_stream(self, *args: object, **kwargs: object) -> None:
        """picamera2 encoder hook for muxing outputs; raw H.264 frames need no stream info."""

    def _clear(self) -> None:
        self._gops.clear()
        self._bytes = 0
        self._short = False
        self._rearm()

    # -- what it holds ---------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return self._duration_s

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def hold_audio(self) -> bool:
        """Whether audio before a press is kept (policy ``[audio] pre_event``)."""
        return self._hold_audio

    @property
    def is_open(self) -> bool:
        """Whether a sink is open (frames go live to it rather than being held)."""
        return self._sink is not None

    @property
    def held_seconds(self) -> float:
        """Seconds from the oldest to the newest held frame; below ``duration_s`` when short."""
        with self._lock:
            return self._held_seconds()

    def _held_seconds(self) -> float:
        if not self._gops:
            return 0.0
        return (self._newest_us - self._gops[0][0][2]) / 1_000_000

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def held_frames(self) -> int:
        with self._lock:
            return sum(len(gop) for gop in self._gops)

    def snapshot(self) -> list[Frame]:
        """A copy of the held frames, oldest first (for diagnostics and tests)."""
        with self._lock:
            return [Frame(*f) for gop in self._gops for f in gop]
