"""End to end: sim camera → libx264 in its own thread → pre-event buffer → segmenter.

While the encoder thread keeps running, the buffer is opened onto a segmenter,
run on, and closed, twice. Every chunk is decoded and the frame numbers are
read back from the pixels: they must run strictly consecutively from the
buffer's first frame to the last one recorded, with at least the 2 s of
pre-event asked for, and nothing lost or repeated at the handoff or at segment
and chunk boundaries.
"""

import threading
import time

from buffer import PreEventBuffer
from hw_sim.camera import SimCamera
from hw_sim.decode import decode_frame_numbers
from recorder import MemoryChunkSink, Segmenter
from recorder.encoders import CaptureThread, PyAVEncoder

FPS = 30
PRE_EVENT_S = 2.0


class ThreadProbe:
    """Forwards to a segmenter, noting which frames came inside ``open_output`` (this thread)."""

    def __init__(self, target):
        self.target = target
        self.opener = threading.get_ident()
        self.held: list[int] = []  # timestamps handed over from the buffer
        self.live: list[int] = []  # timestamps forwarded from the encoder thread

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        (self.held if threading.get_ident() == self.opener else self.live).append(timestamp)
        self.target.outputframe(frame, keyframe, timestamp)


def wait_for_frames(encoder, count):
    """Poll until the encoder has taken ``count`` frames (bounded, so a broken run fails, not hangs)."""
    deadline = time.monotonic() + 120
    while encoder.frames_in < count:
        assert time.monotonic() < deadline, f"encoder stuck at {encoder.frames_in} frames"
        time.sleep(0.002)


def record(buffer, encoder, recording_id, live_frames):
    sink = MemoryChunkSink()
    segmenter = Segmenter(sink, recording_id, segment_s=1.0)
    probe = ThreadProbe(segmenter)
    buffer.open_output(probe)  # the encoder thread keeps calling meanwhile
    wait_for_frames(encoder, encoder.frames_in + live_frames)
    buffer.close_output()
    segmenter.close()
    return sink, probe


def check_recording(camera, sink, probe):
    """Decode every segment and return its frame numbers, checking everything on the way."""
    numbers: list[int] = []
    for index, segment in enumerate(sink.segments):
        assert segment.index == index and segment.ended
        for chunk in segment.chunks:  # every chunk (GOP) decodes on its own
            assert chunk[0].keyframe and not any(f.keyframe for f in chunk[1:])
            assert decode_frame_numbers(f.data for f in chunk) == [
                round(f.timestamp_us * FPS / 1_000_000) for f in chunk
            ]
        numbers += decode_frame_numbers(b"".join(f.data for f in segment.frames))
    timestamps = [f.timestamp_us for f in sink.frames]
    assert timestamps == probe.held + probe.live
    # The pixels agree with the timestamps, and run on without a gap or a repeat.
    assert numbers == [round(t * FPS / 1_000_000) for t in timestamps]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    # Pre-event: at least 2 s before the press, from a keyframe; then the live frames.
    assert probe.held and probe.live
    assert probe.held[-1] - probe.held[0] >= PRE_EVENT_S * 1_000_000
    assert probe.live[0] == camera.timestamp_us(numbers[len(probe.held)])
    assert len(sink.segments) >= 3
    return numbers


def test_no_frame_lost_or_repeated_across_buffer_to_live_handoff():
    camera = SimCamera(320, 240, FPS, clock="fast", start_number=1000)
    buffer = PreEventBuffer(duration_s=PRE_EVENT_S)
    encoder = PyAVEncoder(buffer, 320, 240, FPS, bitrate=400_000)
    capture = CaptureThread(camera, encoder, device_id="BWC-0042").start()
    try:
        wait_for_frames(encoder, 5 * FPS)
        first_sink, first_probe = record(buffer, encoder, "rec-1", live_frames=4 * FPS)
        wait_for_frames(encoder, encoder.frames_in + 4 * FPS)  # buffering resumes at a keyframe (≤ 1 s)
        second_sink, second_probe = record(buffer, encoder, "rec-2", live_frames=3 * FPS)
    finally:
        capture.stop()

    first = check_recording(camera, first_sink, first_probe)
    second = check_recording(camera, second_sink, second_probe)
    assert first[0] > 1000  # the buffer dropped what was older than it needed
    assert second[0] > first[-1]
    assert len(first) >= (PRE_EVENT_S + 4) * FPS and len(second) >= (PRE_EVENT_S + 3) * FPS
