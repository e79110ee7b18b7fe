"""The exported MP4's sound: the recording's AAC packets as a second track, copied, in sync.

The device recorded AAC-LC access units (48 kHz mono) inside the video's chunks, each stamped
on the video's sensor clock (recorder/chunk.py, layout 2). Here they are muxed as they are —
no re-encode — with their timestamps turned from µs into samples, relative to the same first
video frame the video track starts from, so the two tracks keep the offset they had on the
device. Audio heard before the first video frame has no picture to go with and is left out.
The officer's mutes, signed as manifest markers, become the report's muted spans.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable

from buffer.frame import Frame
from recorder.audio import MUTE_MARKER, SAMPLE_RATE, SAMPLES_PER_PACKET, UNMUTE_MARKER
from recorder.chunk import LAYOUT_AUDIO, chunk_layout

from export.errors import ExportError

TIME_BASE = Fraction(1, SAMPLE_RATE)


def recording_has_audio(plaintexts: Iterable[bytes]) -> bool:
    """Whether any chunk of the recording carries sound: the MP4 needs its audio track declared
    before the first packet is written, and a recording whose pre-event part is silent only
    shows it at the press. Stops at the first chunk with audio (layout 2)."""
    return any(chunk_layout(plaintext) == LAYOUT_AUDIO for plaintext in plaintexts)


class AudioTrack:
    """An AAC track in an MP4 being written: ``add(frame, t0_us)`` copies one access unit."""

    def __init__(self, container: Any) -> None:
        # An aac stream whose codec context only describes the track (AAC-LC, 48 kHz, mono: the
        # muxer writes its AudioSpecificConfig); it never encodes a sample.
        self._stream = container.add_stream("aac", rate=SAMPLE_RATE)
        self._stream.codec_context.layout = "mono"
        self._stream.time_base = TIME_BASE
        self._container = container
        self._previous_us: int | None = None
        self.packets = 0
        self.skipped_before_video = 0

    def add(self, frame: Frame, t0_us: int) -> None:
        import av

        ts = frame.timestamp_us
        if self._previous_us is not None and ts <= self._previous_us:
            raise ExportError(f"audio timestamps do not increase ({self._previous_us} then {ts} µs)")
        self._previous_us = ts
        if ts < t0_us:
            self.skipped_before_video += 1
            return
        packet = av.Packet(frame.data)
        packet.stream = self._stream
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = round((ts - t0_us) * SAMPLE_RATE / 1_000_000)
        packet.duration = SAMPLES_PER_PACKET
        self._container.mux(packet)
        self.packets += 1

    def facts(self) -> dict:
        """What the report says about the track."""
        return {"codec": "aac", "profile": "LC", "sample_rate": SAMPLE_RATE, "channels": 1,
                "packets": self.packets, "reencoded": False}


def count_audio_packets(path: Path) -> int:
    """Read back: the audio packets the finished MP4 holds."""
    import av

    with av.open(str(path)) as check:
        if not check.streams.audio:
            return 0
        return sum(1 for p in check.demux(check.streams.audio[0]) if p.size)


def muted_spans(segments: Iterable[Any], iso_utc: Callable[[float], str]) -> list[dict]:
    """The officer's mutes, from the signed manifest markers, as ``{from/to timestamp_us, utc}``.

    A mute still on when the recording ends runs to its last frame (``"until_end": true``).
    """
    segments = list(segments)
    spans: list[dict] = []
    start: tuple[int, int] | None = None  # (timestamp_us, utc_offset_us)
    for s in segments:
        for marker in s.manifest.markers:
            if marker.label == MUTE_MARKER and start is None:
                start = (marker.timestamp_us, s.manifest.utc_offset_us)
            elif marker.label == UNMUTE_MARKER and start is not None:
                spans.append(_span(start, (marker.timestamp_us, s.manifest.utc_offset_us), iso_utc, until_end=False))
                start = None
    if start is not None and segments:
        last = segments[-1].manifest
        spans.append(_span(start, (max(last.last_ts_us, start[0]), last.utc_offset_us), iso_utc, until_end=True))
    return spans


def _span(start: tuple[int, int], end: tuple[int, int], iso_utc: Callable[[float], str], *,
          until_end: bool) -> dict:
    return {"from_timestamp_us": start[0], "to_timestamp_us": end[0],
            "from_utc": iso_utc(start[0] + start[1]), "to_utc": iso_utc(end[0] + end[1]),
            "duration_s": round((end[0] - start[0]) / 1e6, 6), "until_end": until_end}
