"""Cut a recording's frame stream into segments of GOP-sized chunks for the sealer.

The pre-event buffer hands a recording's frames to a ``Segmenter`` (it is an ``Output``).
The segmenter gathers each GOP and writes it as one chunk to a ``ChunkSink`` when the next
keyframe arrives, so a power cut loses at most the GOP in flight (about one second). Every
``segment_s`` it starts a new segment at a keyframe, so each segment decodes on its own.

Audio packets (``audio=True``) go into the chunk of the GOP they arrive during: one chunk is
one GOP and the audio heard with it (an AAC encoder hands a packet over a few tens of ms
after its samples were heard, so a chunk's first audio may start slightly before its
keyframe; every packet keeps its own timestamp, so the export places it exactly).

Documented handling of unusual input:

- frames before the first keyframe are dropped with a warning (the pre-event buffer always
  starts at a keyframe, so this only happens when fed directly);
- a timestamp that is ``None`` or earlier than the previous frame's raises
  ``SegmenterTimestampError`` and the frame is refused, leaving the segmenter as it was
  (audio must be later than the previous audio packet, video at or after the previous video frame);
- audio before the first keyframe is dropped: there is no GOP to carry it;
- if the sink raises, the error propagates and the segmenter is failed: every later call
  raises ``SegmenterError`` naming the cause, since the chunk sequence can no longer be whole;
- frames or markers after ``close()`` raise ``SegmenterClosed``: close the pre-event buffer's
  output first, then the segmenter.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from buffer.frame import Frame

log = logging.getLogger(__name__)


class SegmenterError(Exception):
    """The segmenter was misused, or its sink failed."""


class SegmenterTimestampError(SegmenterError, ValueError):
    """A frame came without a timestamp or with one earlier than the previous frame's."""


class SegmenterClosed(SegmenterError):
    """A frame or marker arrived after ``close()``."""


class ChunkSink(Protocol):
    """What the sealer implements: segments of chunks, each chunk one GOP."""

    def begin_segment(self, recording_id: str, index: int) -> None:
        """Start segment ``index`` (from 0) of the recording."""

    def write_chunk(self, frames: Sequence[Frame]) -> None:
        """Write one GOP (first frame a keyframe); durable when it returns."""

    def add_marker(self, timestamp_us: int, label: str) -> None:
        """Record a marker in the current segment's manifest."""

    def end_segment(self) -> None:
        """Seal the current segment."""


class Segmenter:
    """An ``Output`` that writes GOP chunks to a ``ChunkSink``, a new segment every ``segment_s``."""

    def __init__(self, sink: ChunkSink, recording_id: str, segment_s: float = 10.0) -> None:
        if not isinstance(recording_id, str) or not recording_id:
            raise SegmenterError(f"recording_id must be a non-empty string, got {recording_id!r}")
        if isinstance(segment_s, bool) or not isinstance(segment_s, (int, float)) or not segment_s > 0:
            raise SegmenterError(f"segment_s must be a positive number of seconds, got {segment_s!r}")
        self._sink = sink
        self._recording_id = recording_id
        self._segment_us = round(segment_s * 1_000_000)
        self._lock = threading.Lock()
        self._gop: list[Frame] = []
        self._next_index = 0
        self._segment_start_us: int | None = None  # None: no segment open
        self._newest_us: int | None = None
        self._newest_audio_us: int | None = None
        self._pending_markers: list[tuple[int | None, str]] = []
        self._closed = False
        self._failure: BaseException | None = None
        self._dropped = 0

    @property
    def recording_id(self) -> str:
        return self._recording_id

    @property
    def segments_begun(self) -> int:
        """How many segments have been begun so far."""
        return self._next_index

    @property
    def closed(self) -> bool:
        return self._closed

    def outputframe(
        self,
        frame: bytes,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: object = None,
        audio: bool = False,
    ) -> None:
        """Take one frame of the recording (picamera2's ``Output`` protocol)."""
        with self._lock:
            self._check_usable()
            newest = self._newest_audio_us if audio else self._newest_us
            if timestamp is None or (newest is not None and (
                    timestamp <= newest if audio else timestamp < newest)):
                raise SegmenterTimestampError(
                    f"{'audio' if audio else 'frame'} timestamp {timestamp!r} µs is not at or after "
                    f"the previous {newest} µs"
                )
            if audio:
                self._newest_audio_us = timestamp
                if self._gop:
                    self._gop.append(Frame(frame, False, timestamp, True))
                return
            self._newest_us = timestamp
            if not keyframe:
                if not self._gop:
                    self._drop_before_keyframe()
                    return
                self._gop.append(Frame(frame, False, timestamp))
                return
            self._guarded(self._on_keyframe, timestamp)
            self._gop = [Frame(frame, True, timestamp)]

    def _on_keyframe(self, timestamp: int) -> None:
        if self._gop:
            self._sink.write_chunk(self._gop)
            self._gop = []
        if self._segment_start_us is not None and timestamp - self._segment_start_us >= self._segment_us:
            self._sink.end_segment()
            self._segment_start_us = None
        if self._segment_start_us is None:
            self._sink.begin_segment(self._recording_id, self._next_index)
            self._next_index += 1
            self._segment_start_us = timestamp
            pending, self._pending_markers = self._pending_markers, []
            for marker_us, label in pending:
                self._sink.add_marker(timestamp if marker_us is None else marker_us, label)

    def _drop_before_keyframe(self) -> None:
        if self._dropped == 0:
            log.warning("segmenter %s: dropping frames before the first keyframe", self._recording_id)
        self._dropped += 1

    def add_marker(self, label: str, timestamp_us: int | None = None) -> None:
        """Mark a moment (default: the newest frame) in the current segment's manifest.

        Before the first segment begins the marker is held and given to it; a marker without a
        timestamp given before any frame then takes the first segment's start.
        """
        if not isinstance(label, str):
            raise SegmenterError(f"marker label must be a string, got {label!r}")
        if timestamp_us is not None and (isinstance(timestamp_us, bool) or not isinstance(timestamp_us, int)):
            raise SegmenterError(f"marker timestamp must be an integer of µs, got {timestamp_us!r}")
        with self._lock:
            self._check_usable()
            when = self._newest_us if timestamp_us is None else timestamp_us
            if self._segment_start_us is None:
                self._pending_markers.append((when, label))
            else:
                self._guarded(self._sink.add_marker, when, label)

    def close(self) -> None:
        """Write the GOP in flight and end the segment. Safe to call more than once.

        After a sink failure it only marks the segmenter closed: the sink is not touched again.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._failure is not None:
                return  # the sink already failed; the error was raised where it happened
            if self._pending_markers:
                log.warning(
                    "segmenter %s closed before any keyframe: %d marker(s) had no segment to go in",
                    self._recording_id, len(self._pending_markers),
                )
            self._guarded(self._finish)

    def _finish(self) -> None:
        if self._gop:
            self._sink.write_chunk(self._gop)
            self._gop = []
        if self._segment_start_us is not None:
            self._sink.end_segment()
            self._segment_start_us = None

    def _guarded(self, call, *args) -> None:
        try:
            call(*args)
        except BaseException as exc:
            self._failure = exc
            raise

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise SegmenterError(
                f"segmenter {self._recording_id} stopped after its sink failed: {self._failure!r}"
            ) from self._failure
        if self._closed:
            raise SegmenterClosed(f"segmenter {self._recording_id} is closed")


@dataclass
class MemorySegment:
    """One segment as a ``MemoryChunkSink`` received it."""

    recording_id: str
    index: int
    chunks: list[list[Frame]] = field(default_factory=list)
    markers: list[tuple[int, str]] = field(default_factory=list)
    ended: bool = False

    @property
    def frames(self) -> list[Frame]:
        return [f for chunk in self.chunks for f in chunk]


class MemoryChunkSink:
    """An in-memory ``ChunkSink`` for tests; checks the call order a sealer relies on."""

    def __init__(self) -> None:
        self.segments: list[MemorySegment] = []

    @property
    def _open(self) -> MemorySegment | None:
        if self.segments and not self.segments[-1].ended:
            return self.segments[-1]
        return None

    def begin_segment(self, recording_id: str, index: int) -> None:
        if self._open is not None:
            raise SegmenterError(f"begin_segment({index}) while segment {self._open.index} is open")
        self.segments.append(MemorySegment(recording_id, index))

    def write_chunk(self, frames: Sequence[Frame]) -> None:
        segment = self._require_open("write_chunk")
        if not frames or not frames[0].keyframe:
            raise SegmenterError("a chunk must start with a keyframe")
        segment.chunks.append(list(frames))

    def add_marker(self, timestamp_us: int, label: str) -> None:
        self._require_open("add_marker").markers.append((timestamp_us, label))

    def end_segment(self) -> None:
        self._require_open("end_segment").ended = True

    def _require_open(self, what: str) -> MemorySegment:
        segment = self._open
        if segment is None:
            raise SegmenterError(f"{what} with no segment open")
        return segment

    @property
    def frames(self) -> list[Frame]:
        """Every frame written, in order, across segments."""
        return [f for s in self.segments for f in s.frames]
