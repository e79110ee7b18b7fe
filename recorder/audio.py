"""Sound for the recording: AAC-LC through PyAV, on the video's sensor clock, and the officer's mute.

The seam is the same as for video: audio leaves the encoder as picamera2's
``outputframe(data, keyframe, timestamp_us, packet, audio=True)``, one raw AAC-LC access unit
(1024 samples, 48 kHz, mono, no ADTS header) per call, stamped with the sensor-clock time of
its first sample. The pre-event buffer, the segmenter and the sealer carry those packets in the
same chunks as the GOP they were heard in (recorder/chunk.py, layout 2).

Two sources feed that seam:

- on a Raspberry Pi, picamera2's own encoder audio (``encoder.audio = True``: PulseAudio/ALSA
  read and AAC-encoded through PyAV on picamera2's audio thread, timestamps on the video's
  clock); recorder/picamera.py configures it with :func:`picamera2_audio_output`;
- elsewhere (the simulator, a PC), a :class:`Microphone` read by the capture loop up to each
  video frame's timestamp and encoded here by :class:`AacEncoder`, so audio and video leave
  in time order on one thread.

:class:`MuteGate` sits between either source and the buffer: while muted it drops every audio
packet heard in the muted span, so nothing of it is recorded; the firmware logs the span.
"""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from typing import Callable, Protocol

import numpy as np

from buffer.frame import Output

log = logging.getLogger(__name__)

__all__ = [
    "AUDIO_SPECIFIC_CONFIG", "AacEncoder", "AudioCapture", "AudioError", "CHANNELS", "DEFAULT_BITRATE",
    "Microphone", "MuteGate", "MUTE_MARKER", "SAMPLES_PER_PACKET", "SAMPLE_RATE", "UNMUTE_MARKER",
    "picamera2_audio_output", "samples_to_us", "us_to_samples",
]

SAMPLE_RATE = 48_000
CHANNELS = 1
SAMPLES_PER_PACKET = 1024  # one AAC-LC access unit
PACKET_US = 21_333  # its duration, rounded down: a packet never reaches into the next one's time
# ISO/IEC 14496-3 AudioSpecificConfig: object type 2 (AAC LC), frequency index 3 (48 kHz), 1 channel.
AUDIO_SPECIFIC_CONFIG = bytes.fromhex("1188")
DEFAULT_BITRATE = 64_000
BITRATE_RANGE = (16_000, 256_000)
MUTE_MARKER = "audio muted"  # manifest marker labels; export turns them into muted spans
UNMUTE_MARKER = "audio unmuted"


class AudioError(RuntimeError):
    """Audio cannot be captured or encoded as asked (bad settings, time going back, closed)."""


def us_to_samples(timestamp_us: int) -> int:
    """The sample number heard at ``timestamp_us`` (exact for times made by :func:`samples_to_us`)."""
    return round(timestamp_us * SAMPLE_RATE / 1_000_000)


def samples_to_us(samples: int) -> int:
    return round(samples * 1_000_000 / SAMPLE_RATE)


def check_bitrate(bitrate: int) -> int:
    lo, hi = BITRATE_RANGE
    if isinstance(bitrate, bool) or not isinstance(bitrate, int) or not lo <= bitrate <= hi:
        raise AudioError(f"audio bitrate must be {lo} to {hi} bit/s, not {bitrate!r}")
    return bitrate


class Microphone(Protocol):
    """A PCM source on the sensor clock (sample ``k`` is heard at ``k / sample_rate`` s).

    ``read_until(t_us)`` returns every whole block heard before ``t_us`` not yet returned,
    oldest first, as ``(samples, first_sample_number)``: float32 mono in -1..1. hw_sim's
    ``SimMicrophone`` is the twin; on a Pi picamera2 reads the sound card itself.
    """

    sample_rate: int

    def read_until(self, timestamp_us: int) -> list[tuple[np.ndarray, int]]: ...


class AacEncoder:
    """AAC-LC, 48 kHz mono, through PyAV's native ``aac`` encoder, feeding one output.

    Packets leave stamped with the time of their first sample (PyAV's pts, in samples,
    turned into µs). The encoder's first packet is priming (it starts 1024 samples before the
    first input); a packet stamped before 0 on the sensor clock is dropped, since no video
    frame can be that early.
    """

    def __init__(self, output: Output, bitrate: int = DEFAULT_BITRATE) -> None:
        import av  # heavy: only when an encoder is made

        self.output = output
        self.bitrate = check_bitrate(bitrate)
        self._av = av
        ctx = av.CodecContext.create("aac", "w")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "mono"
        ctx.format = "fltp"
        ctx.bit_rate = bitrate
        ctx.time_base = Fraction(1, SAMPLE_RATE)
        ctx.open()
        if ctx.frame_size != SAMPLES_PER_PACKET or bytes(ctx.extradata or b"")[:2] != AUDIO_SPECIFIC_CONFIG:
            raise AudioError(f"PyAV's aac encoder is not AAC-LC 48 kHz mono with {SAMPLES_PER_PACKET}-sample frames")
        self._ctx = ctx
        self._next_sample: int | None = None
        self._closed = False
        self.blocks_in = 0
        self.packets_out = 0
        log.info("AAC-LC %d Hz mono, %d bit/s", SAMPLE_RATE, bitrate)

    def encode(self, samples: np.ndarray, first_sample: int) -> None:
        """Encode one block of ``SAMPLES_PER_PACKET`` samples starting at sample ``first_sample``."""
        if self._closed:
            raise AudioError("audio encoder is closed")
        if samples.shape != (SAMPLES_PER_PACKET,):
            raise AudioError(f"audio block has shape {samples.shape}, expected ({SAMPLES_PER_PACKET},)")
        if self._next_sample is not None and first_sample < self._next_sample:
            raise AudioError(f"audio block at sample {first_sample} overlaps the previous one")
        self._next_sample = first_sample + SAMPLES_PER_PACKET
        frame = self._av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="fltp", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = first_sample
        frame.time_base = self._ctx.time_base
        self.blocks_in += 1
        self._emit(self._ctx.encode(frame))

    def close(self) -> None:
        """Flush what the encoder still holds to the output. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._emit(self._ctx.encode(None))

    def _emit(self, packets) -> None:
        for packet in packets:
            if packet.pts is None or packet.pts < 0:
                continue  # priming before sensor time 0
            self.packets_out += 1
            self.output.outputframe(bytes(packet), False, samples_to_us(packet.pts), None, True)


class AudioCapture:
    """Microphone → AAC, driven by the video capture loop: ``until(t)`` before each frame at ``t``.

    Running in the camera's loop keeps one thread and one clock: the audio heard up to a
    frame is encoded before that frame, so packets reach the buffer in time order. A failure
    of the sound never stops the picture: it is logged, kept in ``error``, and capture of
    sound ends there while video goes on.
    """

    def __init__(self, microphone: Microphone, encoder: AacEncoder) -> None:
        if microphone.sample_rate != SAMPLE_RATE:
            raise AudioError(f"microphone runs at {microphone.sample_rate} Hz, the encoder at {SAMPLE_RATE} Hz")
        self.microphone, self.encoder = microphone, encoder
        self.error: BaseException | None = None

    def until(self, timestamp_us: int) -> None:
        if self.error is not None:
            return
        try:
            for samples, first in self.microphone.read_until(timestamp_us):
                self.encoder.encode(samples, first)
        except Exception as exc:  # noqa: BLE001 - the video must go on; the cause is kept and logged
            self.error = exc
            log.error("sound capture stopped, video goes on: %s", exc)

    def close(self) -> None:
        """Flush the encoder; like ``until``, a failure is logged and kept, never raised."""
        if self.error is not None:
            return
        try:
            self.encoder.close()
        except Exception as exc:  # noqa: BLE001 - the video's own flush comes after this one
            self.error = exc
            log.error("sound capture could not be flushed: %s", exc)


class MuteGate:
    """An ``Output`` in front of the buffer that drops audio heard while the officer has muted.

    ``mute()`` and ``unmute()`` take effect at the sensor time ``clock()`` reads (the newest
    video frame) or, if later, the end of the newest audio packet already seen (the capture
    loop encodes a frame's sound just before the frame, so audio runs up to a frame ahead of
    the picture); they return that time, and the firmware writes it into the audit log and the
    manifest. Audio packets stamped in ``[mute, unmute)`` never go further; video always does.
    """

    def __init__(self, output: Output, clock: Callable[[], int | None]) -> None:
        self.output = output
        self._clock = clock
        self._lock = threading.Lock()
        self._muted_at: int | None = None
        self._spans: list[tuple[int, int]] = []  # closed spans audio may still arrive for
        self._audio_end_us = 0  # end of the newest audio packet seen (sensor µs)
        self.dropped = 0

    @property
    def muted(self) -> bool:
        return self._muted_at is not None

    def mute(self) -> int:
        with self._lock:
            if self._muted_at is None:
                self._muted_at = self._now()
            return self._muted_at

    def unmute(self) -> int:
        with self._lock:
            now = self._now()
            if self._muted_at is not None:
                self._spans.append((self._muted_at, max(now, self._muted_at)))
                self._muted_at = None
            return now

    def outputframe(self, frame: bytes, keyframe: bool = True, timestamp: int | None = None,
                    packet: object = None, audio: bool = False) -> None:
        if audio and timestamp is not None and self._silenced(timestamp):
            self.dropped += 1
            return
        self.output.outputframe(frame, keyframe, timestamp, packet, audio)

    def _now(self) -> int:
        return max(self._clock() or 0, self._audio_end_us)

    def _silenced(self, timestamp: int) -> bool:
        with self._lock:
            self._audio_end_us = max(self._audio_end_us, timestamp + PACKET_US)
            if self._muted_at is not None and timestamp >= self._muted_at:
                return True
            while self._spans and timestamp >= self._spans[0][1]:
                self._spans.pop(0)  # audio time only goes forward: this span is behind us
            return any(start <= timestamp < end for start, end in self._spans)


def picamera2_audio_output(bitrate: int) -> dict:
    """picamera2 ``Encoder.audio_output``: the PyAV ``add_stream`` arguments for our AAC stream."""
    return {"codec_name": "aac", "rate": SAMPLE_RATE, "layout": "mono", "bit_rate": check_bitrate(bitrate)}
