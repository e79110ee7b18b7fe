"""The one shape an encoded frame takes on its way from encoder to sealer."""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Frame(NamedTuple):
    """One encoded access unit and when the sensor saw (or the microphone heard) it.

    Video: an H.264 access unit (Annex B bytes). Audio (``audio=True``): one raw AAC-LC
    access unit, stamped with its first sample's time on the same sensor clock.
    """

    data: bytes
    keyframe: bool
    timestamp_us: int
    audio: bool = False


class Output(Protocol):
    """picamera2's ``Output`` seam: what an encoder calls for every encoded frame.

    Our buffer, segmenter and any other sink implement it, so picamera2's
    ``H264Encoder`` and our PyAV encoder can feed them unchanged.
    """

    def outputframe(
        self,
        frame: bytes,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: object = None,
        audio: bool = False,
    ) -> None: ...
