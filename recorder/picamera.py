"""The Raspberry Pi camera source: picamera2 captures, overlays and encodes into our buffer.

picamera2 is imported only when a :class:`PiCameraSource` is made, so the rest
of the recorder (and the simulation) runs where picamera2 and libcamera do not.

- ``Picamera2`` with a video configuration of the main stream at ``fps``
  (``FrameRate``) in ``"YUV420"`` (default: both the Pi 4 hardware encoder and
  libx264 on a Pi 5 take it without a colour conversion) or ``"RGB888"`` (BGR
  bytes in memory);
- the overlay burned in ``pre_callback`` through a ``MappedArray``, so the
  encoder sees it and the picture carries it;
- ``H264Encoder(bitrate=..., repeat=True, iperiod=fps)``: SPS/PPS at every
  keyframe and a keyframe every second. On a Pi 4 that is the V4L2 hardware
  encoder; on a Pi 5 picamera2 exports ``LibavH264Encoder`` under the same name
  (libx264, as :class:`recorder.encoders.PyAVEncoder`);
- our output (the pre-event buffer) behind a thin subclass of picamera2's
  ``Output``: picamera2 encoders refuse outputs that are not instances of it.
  They call ``outputframe(frame, keyframe, timestamp_us, packet, audio)``,
  which the adapter forwards as ``bytes`` with its keyframe flag and timestamp;
- with ``audio_bitrate``, picamera2's encoder audio (``encoder.audio = True``): its
  audio thread reads the ALSA capture device ``audio_device`` through PyAV (ALSA, not
  picamera2's default PulseAudio: a system service has no sound server session) and
  encodes AAC-LC, 48 kHz mono (``recorder.audio.picamera2_audio_output``); each packet reaches the
  adapter as ``outputframe(None, True, timestamp_us, packet, audio=True)``, on the
  video's clock, and is forwarded as the packet's bytes with ``audio=True``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from buffer.frame import Output
from recorder.audio import picamera2_audio_output
from recorder.overlay import burn_overlay

logger = logging.getLogger(__name__)

__all__ = ["PiCameraError", "PiCameraSource"]

STREAM = "main"
# picamera2 format name → the overlay's name for the same memory layout.
PIXEL_FORMATS = {"YUV420": "yuv420p", "RGB888": "bgr24"}


class PiCameraError(RuntimeError):
    """The Pi camera cannot be used (picamera2 missing, or started/stopped out of turn)."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _adapt(output: Output, picamera2_output_class: type) -> Any:
    """Wrap ``output`` in a subclass of picamera2's ``Output`` made here, at run time."""

    class BufferOutput(picamera2_output_class):  # type: ignore[misc, valid-type]
        """Forwards picamera2 encoder packets to one of our outputs."""

        def __init__(self, target: Output) -> None:
            super().__init__()
            self.target = target

        def outputframe(
            self,
            frame: bytes,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: object = None,
            audio: bool = False,
        ) -> None:
            if audio:
                if packet is None or timestamp is None:
                    return  # nothing to carry
                try:
                    self.target.outputframe(bytes(packet), False, int(timestamp), None, True)
                except Exception as exc:  # noqa: BLE001 - picamera2's audio thread must not take the video down
                    logger.error("audio packet at %s µs dropped: %s", timestamp, exc)
                return
            self.target.outputframe(bytes(frame), bool(keyframe), timestamp)

    return BufferOutput(output)


class PiCameraSource:
    """Camera → overlay → hardware (or libx264) H.264 → ``output``, run by picamera2's threads.

    ``start()`` begins recording into ``output``; ``stop()`` ends it (picamera2
    flushes its encoder first); ``close()`` releases the camera.
    """

    def __init__(
        self,
        output: Output,
        width: int = 1920,
        height: int = 1080,
        fps: int = 30,
        bitrate: int = 10_000_000,
        device_id: str = "",
        utc_clock: Callable[[], dt.datetime] = _utc_now,
        pixel_format: str = "YUV420",
        audio_bitrate: int | None = None,
        audio_device: str = "default",
    ) -> None:
        if pixel_format not in PIXEL_FORMATS:
            raise PiCameraError(f"pixel_format must be one of {', '.join(PIXEL_FORMATS)}, not {pixel_format!r}")
        try:
            from picamera2 import MappedArray, Picamera2
            from picamera2.encoders import H264Encoder
            from picamera2.outputs import Output as Picamera2Output
        except ImportError as exc:
            raise PiCameraError(
                f"the Pi camera needs picamera2 (pip install bodycam[pi] or apt install python3-picamera2): {exc}"
            ) from exc
        self.output = output
        self.width, self.height, self.fps, self.bitrate = width, height, fps, bitrate
        self.device_id = device_id
        self.pixel_format = pixel_format
        self._overlay_format = PIXEL_FORMATS[pixel_format]
        self._utc_clock = utc_clock
        self._mapped_array = MappedArray
        self.picam2 = Picamera2()
        config = self.picam2.create_video_configuration(
            main={"size": (width, height), "format": pixel_format},
            controls={"FrameRate": fps},
        )
        self.picam2.configure(config)
        self.picam2.pre_callback = self._burn_overlay
        self.encoder = H264Encoder(bitrate=bitrate, repeat=True, iperiod=fps)
        if audio_bitrate is not None:  # picamera2 reads the microphone and encodes AAC itself
            self.encoder.audio = True
            self.encoder.audio_input = {"file": audio_device, "format": "alsa"}
            self.encoder.audio_output = picamera2_audio_output(audio_bitrate)
        self._picamera2_output = _adapt(output, Picamera2Output)
        self._recording = False
        logger.info("Pi camera %dx%d@%d, %d bit/s", width, height, fps, bitrate)

    def _burn_overlay(self, request: Any) -> None:
        """picamera2 ``pre_callback``: runs on every frame before the encoder sees it."""
        with self._mapped_array(request, STREAM) as mapped:
            burn_overlay(mapped.array, self.device_id, self._utc_clock(), self._overlay_format)

    def start(self) -> None:
        if self._recording:
            raise PiCameraError("the Pi camera is already recording")
        self.picam2.start_recording(self.encoder, self._picamera2_output)
        self._recording = True

    def stop(self) -> None:
        if not self._recording:
            return
        self._recording = False
        self.picam2.stop_recording()

    def close(self) -> None:
        self.stop()
        self.picam2.close()

    @property
    def recording(self) -> bool:
        return self._recording

    def __enter__(self) -> PiCameraSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
