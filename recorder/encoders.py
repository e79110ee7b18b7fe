"""Software H.264 encoding with PyAV/libx264, and the capture loop that feeds it.

Used in simulation and on a Pi 5, which has no hardware H.264 encoder. The
stream is shaped so that any GOP can start a file on its own, which the
pre-event buffer and the segmenter rely on:

- an IDR keyframe every ``fps`` frames exactly (``keyint = min-keyint = fps``,
  scene-cut detection off);
- SPS and PPS in front of every keyframe (no global header, x264
  ``repeat-headers``), Annex B byte stream;
- no B-frames, so packets leave in presentation order and timestamps rise;
- ``tune=zerolatency``: no look-ahead, each packet leaves with its own frame.

Every packet goes to ``output.outputframe(data, keyframe, timestamp_us)``,
picamera2's ``Output`` protocol, exactly as picamera2's own encoders call it.
With a microphone, :func:`run_camera` encodes the audio heard up to each frame
(``recorder.audio.AudioCapture``) just before the frame, on the same thread and clock.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable
from fractions import Fraction

import numpy as np

from buffer.frame import Output
from recorder.audio import AudioCapture
from recorder.overlay import burn_overlay

logger = logging.getLogger(__name__)

__all__ = ["CaptureError", "CaptureThread", "EncoderError", "PyAVEncoder", "run_camera"]

CameraFrames = Iterable[tuple[int, np.ndarray, int]]
UtcClock = Callable[[], dt.datetime]


INPUT_FORMATS = ("bgr24", "yuv420p")  # what hw_sim.camera and picamera2 (RGB888, YUV420) deliver


class EncoderError(RuntimeError):
    """The encoder was misused (wrong image size, time going backwards, used after close)."""


class CaptureError(RuntimeError):
    """The capture thread stopped on an error; the cause is chained."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class PyAVEncoder:
    """libx264 through PyAV, feeding one picamera2-style output.

    ``input_format`` is ``"bgr24"`` (converted to yuv420p by swscale) or
    ``"yuv420p"`` (encoded as it is: cheaper, the better choice on a Pi).

    ``output`` is a plain attribute: the encoder looks it up for every packet,
    so it may be replaced between frames (the firmware keeps the pre-event
    buffer as the output for the whole run and lets the buffer forward).
    """

    def __init__(
        self,
        output: Output,
        width: int,
        height: int,
        fps: int = 30,
        bitrate: int = 10_000_000,
        preset: str = "ultrafast",
        input_format: str = "bgr24",
    ) -> None:
        import av  # heavy: only when an encoder is made

        if width % 4 or height % 4 or width <= 0 or height <= 0:
            raise EncoderError(f"frame size must be a positive multiple of 4, not {width}x{height}")
        if fps <= 0 or bitrate <= 0:
            raise EncoderError(f"fps and bitrate must be positive, not {fps} and {bitrate}")
        self.output = output
        self.width, self.height, self.fps, self.bitrate = width, height, fps, bitrate
        if input_format not in INPUT_FORMATS:
            raise EncoderError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, not {input_format!r}")
        self.input_format = input_format
        # I420 arrives as one (height * 3 / 2, width) array: Y rows, then U, then V.
        self._rows_cols = (height * 3 // 2, width) if input_format == "yuv420p" else (height, width)
        self._av = av
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, 1_000_000)  # packet pts are then timestamps in µs
        ctx.framerate = Fraction(fps, 1)
        ctx.bit_rate = bitrate
        ctx.gop_size = fps
        ctx.max_b_frames = 0
        kbps = max(1, bitrate // 1000)
        ctx.options = {
            "preset": preset,
            "tune": "zerolatency",
            "forced-idr": "1",
            "x264-params": ":".join(
                [
                    f"keyint={fps}",
                    f"min-keyint={fps}",
                    "scenecut=0",
                    "open-gop=0",
                    "bframes=0",
                    "repeat-headers=1",
                    "annexb=1",
                    # A one-second VBV keeps the byte rate, and so the buffer's bytes, bounded.
                    f"vbv-maxrate={kbps}",
                    f"vbv-bufsize={kbps}",
                ]
            ),
        }
        ctx.open()
        self._ctx = ctx
        self._last_timestamp: int | None = None
        self._closed = False
        self.frames_in = 0
        self.packets_out = 0
        logger.info("libx264 %dx%d@%d, %d bit/s, preset %s", width, height, fps, bitrate, preset)

    def encode(self, image: np.ndarray, timestamp_us: int) -> None:
        """Encode one frame; its packet goes to the output at once (zero latency)."""
        if self._closed:
            raise EncoderError("encoder is closed")
        if image.shape[:2] != self._rows_cols:
            raise EncoderError(
                f"frame array is {image.shape}, encoder expects {self.width}x{self.height} {self.input_format}"
            )
        if self._last_timestamp is not None and timestamp_us <= self._last_timestamp:
            raise EncoderError(
                f"timestamp {timestamp_us} µs does not follow the previous one ({self._last_timestamp} µs)"
            )
        self._last_timestamp = timestamp_us
        frame = self._av.VideoFrame.from_ndarray(image, format=self.input_format)
        frame.pts = timestamp_us
        self.frames_in += 1
        self._emit(self._ctx.encode(frame))

    def close(self) -> None:
        """Flush the frames libx264 still holds to the output. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._emit(self._ctx.encode(None))
        logger.info("encoder closed: %d frames in, %d packets out", self.frames_in, self.packets_out)

    def _emit(self, packets: Iterable) -> None:
        for packet in packets:
            self.packets_out += 1
            self.output.outputframe(bytes(packet), bool(packet.is_keyframe), int(packet.pts))

    def __enter__(self) -> PyAVEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_camera(
    camera: CameraFrames,
    encoder: PyAVEncoder,
    frames: int | None = None,
    device_id: str | None = None,
    utc_clock: UtcClock = utc_now,
    stop: threading.Event | None = None,
    audio: AudioCapture | None = None,
) -> int:
    """Camera → overlay → encoder, for ``frames`` frames or until ``stop`` is set.

    The overlay is burned when ``device_id`` is given, in the encoder's input
    format. With ``audio``, the sound heard up to each frame is encoded first.
    Returns the number of frames encoded; closes neither encoder.
    """
    count = 0
    for _number, image, timestamp_us in camera:
        if (frames is not None and count >= frames) or (stop is not None and stop.is_set()):
            break
        if device_id is not None:
            burn_overlay(image, device_id, utc_clock(), pixel_format=encoder.input_format)
        if audio is not None:
            audio.until(timestamp_us)
        encoder.encode(image, timestamp_us)
        count += 1
    return count


class CaptureThread:
    """Runs :func:`run_camera` in a daemon thread, the way picamera2 runs its encoder.

    ``stop()`` ends the loop after the frame in hand, flushes the encoder and
    raises :class:`CaptureError` if the loop died on an error, so a broken
    capture is never mistaken for a quiet one.
    """

    def __init__(
        self,
        camera: CameraFrames,
        encoder: PyAVEncoder,
        frames: int | None = None,
        device_id: str | None = None,
        utc_clock: UtcClock = utc_now,
        audio: AudioCapture | None = None,
    ) -> None:
        self.camera, self.encoder, self.audio = camera, encoder, audio
        self._frames, self._device_id, self._utc_clock = frames, device_id, utc_clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            run_camera(self.camera, self.encoder, self._frames, self._device_id, self._utc_clock, self._stop,
                       self.audio)
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised by stop()
            self.error = exc
            logger.exception("capture stopped on an error")

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    @property
    def frames_encoded(self) -> int:
        return self.encoder.frames_in

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a bounded run to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop capturing, flush the encoder, and surface any error the loop hit."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        try:
            if self.audio is not None:
                self.audio.close()
            self.encoder.close()
        finally:
            if self.error is not None:
                raise CaptureError(f"capture failed: {self.error}") from self.error

    def __enter__(self) -> CaptureThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
