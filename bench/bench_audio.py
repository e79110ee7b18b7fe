"""Sound: CPU per hour of capture + AAC encode + sealing, against video only in the same run;
and the pre-event buffer's memory when it holds sound too.

CPU: the real recording path (sim camera → libx264 → pre-event buffer → segmenter → real
SegmentSealer with fsync per chunk, 10 s segments), run for SECONDS of sensor time on the fast
clock (two seconds of sim camera pictures, rendered once and shown in a loop), once video only and once with the sim microphone → PyAV AAC-LC 64 kbit/s → mute gate in
front of the buffer, alternating, best of REPEATS each (process CPU time). The sound's own cost
is also measured alone (microphone + AAC encoder, no video), which the difference of the two
full runs, on a shared 2-core machine, can only estimate.

Memory: like ``bench buffer``: fresh bytes objects as the encoders make them, video at the
given bitrate with AAC packets (~170 bytes every 21.3 ms) interleaved, ``hold_audio=True``;
tracemalloc peak against the most bytes the buffer held.
"""

from __future__ import annotations

import gc
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from buffer.prebuffer import PreEventBuffer
from hw_sim.camera import SimCamera
from hw_sim.microphone import SimMicrophone
from recorder.audio import SAMPLES_PER_PACKET, AacEncoder, AudioCapture, MuteGate, samples_to_us
from recorder.encoders import PyAVEncoder
from recorder.segmenter import Segmenter
from secure_store import keys
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore

SECONDS = 60
WIDTH, HEIGHT, FPS, VIDEO_BITRATE = 1280, 720, 30, 4_000_000
AUDIO_BITRATE = 64_000
REPEATS = 3
MEMORY_MINUTES = 10


class _NullAudit:
    def append(self, event: str, **details) -> None:
        pass


def _record(with_audio: bool, frames: list) -> tuple[float, int]:
    """One recording of ``frames`` (pre-rendered) through the real path; (CPU s, bytes sealed)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = EvidenceStore(DeviceRoot(Path(tmp)), device_id="BENCH", signing_key=keys.generate("device"),
                              agency_public_key=keys.generate("agency").public_key(), audit=_NullAudit(),
                              reserve_bytes=0)
        buffer = PreEventBuffer(0.0, hold_audio=True)
        newest = [0]

        class Tap:
            def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
                buffer.outputframe(frame, keyframe, timestamp, packet, audio)
                if not audio:
                    newest[0] = timestamp

        front = MuteGate(Tap(), lambda: newest[0]) if with_audio else Tap()
        segmenter = Segmenter(store.open_sealer(), "bench", segment_s=10.0)
        buffer.open_output(segmenter)
        video = PyAVEncoder(front, WIDTH, HEIGHT, FPS, VIDEO_BITRATE, input_format="yuv420p")
        sound = AudioCapture(SimMicrophone(), AacEncoder(front, AUDIO_BITRATE)) if with_audio else None
        gc.collect()
        cpu = time.process_time()
        for image, ts in frames:
            if sound is not None:
                sound.until(ts)
            video.encode(image.copy(), ts)  # a camera hands out a fresh buffer each frame
        if sound is not None:
            sound.close()
        video.close()
        buffer.close_output()
        segmenter.close()
        cpu = time.process_time() - cpu
        sealed = sum(p.stat().st_size for p in (Path(tmp) / "evidence").glob("*.seg"))
    return cpu, sealed


def _audio_alone(seconds: int) -> float:
    """CPU s for microphone + AAC encoder over ``seconds`` of sound (packets to a null output)."""
    class Null:
        def outputframe(self, *args) -> None:
            pass

    best = float("inf")
    for _ in range(REPEATS):
        capture = AudioCapture(SimMicrophone(), AacEncoder(Null(), AUDIO_BITRATE))
        cpu = time.process_time()
        capture.until(seconds * 1_000_000)
        capture.close()
        best = min(best, time.process_time() - cpu)
    return best


def _memory(minutes: int, video_bitrate: int, fps: int = 30) -> tuple[int, int, float]:
    """tracemalloc peak ÷ most bytes held, video at ``video_bitrate`` with sound interleaved."""
    rng = random.Random(5)
    source = rng.randbytes(4 * 1024 * 1024)
    p_size = video_bitrate / 8 / (fps - 1 + 4)
    buf = PreEventBuffer(30.0, hold_audio=True)
    audio_k = 0
    most = 0
    gc.collect()
    tracemalloc.start()
    try:
        for n in range(minutes * 60 * fps):
            ts = round(n * 1_000_000 / fps)
            while samples_to_us(audio_k * SAMPLES_PER_PACKET) + 40_000 <= ts:  # AAC leaves ~40 ms late
                size = rng.randint(140, 200)
                off = rng.randrange(len(source) - size)
                buf.outputframe(source[off:off + size], False, samples_to_us(audio_k * SAMPLES_PER_PACKET), None, True)
                audio_k += 1
            size = int((4 if n % fps == 0 else 1) * p_size * rng.uniform(0.8, 1.2))
            off = rng.randrange(len(source) - size)
            buf.outputframe(source[off:off + size], n % fps == 0, ts)
            most = max(most, buf.held_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, most, peak / most


def run() -> str:
    camera = SimCamera(WIDTH, HEIGHT, FPS, pixel_format="yuv420p")
    pool = [camera.render(n) for n in range(2 * FPS)]  # two seconds of pictures, shown in a loop
    frames = [(pool[n % len(pool)], camera.timestamp_us(n)) for n in range(SECONDS * FPS)]
    best = {False: (float("inf"), 0), True: (float("inf"), 0)}
    for _ in range(REPEATS):
        for with_audio in (False, True):
            cpu, sealed = _record(with_audio, frames)
            if cpu < best[with_audio][0]:
                best[with_audio] = (cpu, sealed)
    del frames
    per_hour = 3600 / SECONDS
    video_cpu, video_bytes = best[False]
    both_cpu, both_bytes = best[True]
    alone = _audio_alone(SECONDS) * per_hour
    rows = [
        "| run (same frames, alternating, best of %d) | CPU s per hour recorded | share of one core | "
        "sealed MB per hour |" % REPEATS,
        "|---|---:|---:|---:|",
        f"| video only ({WIDTH}x{HEIGHT}@{FPS}, {VIDEO_BITRATE // 1_000_000} Mbit/s, encode + buffer + seal) | "
        f"{video_cpu * per_hour:.0f} | {video_cpu / SECONDS:.1%} | {video_bytes * per_hour / 1e6:.0f} |",
        f"| video + sound (AAC-LC 48 kHz mono {AUDIO_BITRATE // 1000} kbit/s) | {both_cpu * per_hour:.0f} | "
        f"{both_cpu / SECONDS:.1%} | {both_bytes * per_hour / 1e6:.0f} |",
        f"| difference: the sound's cost in the full path | {(both_cpu - video_cpu) * per_hour:+.0f} | "
        f"{(both_cpu - video_cpu) / SECONDS:+.1%} | {(both_bytes - video_bytes) * per_hour / 1e6:+.1f} |",
        f"| sound alone: sim microphone + AAC encode (no video) | {alone:.0f} | {alone / 3600:.2%} | — |",
    ]
    memory = ["", "| pre-event buffer with sound held (`hold_audio=True`), 30 s, "
              f"{MEMORY_MINUTES} min fed | tracemalloc peak ÷ most bytes held |", "|---|---:|"]
    for bitrate in (10_000_000, 2_000_000):
        peak, most, ratio = _memory(MEMORY_MINUTES, bitrate)
        memory.append(f"| 1080p30-like video at {bitrate // 1_000_000} Mbit/s + AAC 64 kbit/s | {ratio:.3f} "
                      f"({peak / 2**20:.1f} MiB ÷ {most / 2**20:.1f} MiB) |")
    notes = [
        "",
        f"Full path: {SECONDS} s of sensor time per run (a 2 s loop of pre-rendered pictures, so the sim camera's "
        "drawing is not counted), fsync per chunk on the machine's disk; CPU is process time (all threads). "
        "The difference of two full runs is within the noise of a shared 2-core machine; the "
        "sound-alone row is the cost the microphone and encoder add (sealing adds at most 8 kB/s of AES-GCM at 64 kbit/s; the sim microphone is silent but for 10 ms a second, so its AAC stream is smaller, "
        "negligible next to video). On a Pi, picamera2's audio thread does the capture + encode "
        "instead, with the same PyAV AAC encoder. Goal for memory: ≤ 1.1.",
    ]
    return "\n".join(["## Sound (capture, AAC encode, sealing; buffer memory)", ""] + rows + memory + notes)
