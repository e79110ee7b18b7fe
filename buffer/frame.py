"""The one shape an encoded frame takes on its way from encoder to sealer."""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Frame(NamedTuple):
    """One encoded H.264 access unit (Annex B bytes) and when the sensor saw it."""

    data: bytes
    keyframe: bool
    timestamp_us: int


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
