"""BackgroundOutput: the encoder thread never waits for the sink, and nothing is lost or reordered."""

from __future__ import annotations

import threading

import pytest

from buffer.frame import Frame
from buffer.prebuffer import PreEventBuffer
from recorder.background import BackgroundOutput


class GatedSink:
    """Records frames; blocks in outputframe until the gate opens, as a slow fsync would."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.frames: list[Frame] = []
        self.log: list[object] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_at = fail_at

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False) -> None:
        self.entered.set()
        self.gate.wait()
        if self.fail_at is not None and timestamp == self.fail_at:
            raise OSError(28, "No space left on device")
        self.frames.append(Frame(frame, keyframe, timestamp))
        self.log.append(timestamp)


def feed(output, first: int, count: int, gop: int = 5) -> None:
    for n in range(first, first + count):
        output.outputframe(n.to_bytes(4, "big") * 10, n % gop == 0, n * 1000)


def test_frames_queue_while_the_sink_is_stuck_then_arrive_whole_and_in_order() -> None:
    sink = GatedSink()
    out = BackgroundOutput(sink)
    feed(out, 0, 200)  # returns although the sink has not taken one frame
    assert sink.entered.wait(5) and sink.frames == []
    assert out.pending_bytes == 200 * 40
    sink.gate.set()
    assert out.wait(10)
    assert [f.timestamp_us for f in sink.frames] == [n * 1000 for n in range(200)]
    assert [f.data for f in sink.frames] == [n.to_bytes(4, "big") * 10 for n in range(200)]
    assert [f.keyframe for f in sink.frames] == [n % 5 == 0 for n in range(200)]
    out.close(10)


def test_calls_run_between_the_frames_they_followed() -> None:
    sink = GatedSink()
    out = BackgroundOutput(sink)
    feed(out, 0, 3)
    out.call(lambda: sink.log.append("marker"))
    feed(out, 3, 2)
    sink.gate.set()
    out.close(10)
    assert sink.log == [0, 1000, 2000, "marker", 3000, 4000]


def test_bounded_in_bytes_the_encoder_waits_instead_of_dropping() -> None:
    sink = GatedSink()
    out = BackgroundOutput(sink, max_bytes=100)  # room for two 40-byte frames
    done = threading.Event()

    def encoder() -> None:
        feed(out, 0, 6)
        done.set()

    threading.Thread(target=encoder, daemon=True).start()
    assert sink.entered.wait(5)
    assert not done.wait(0.2)  # blocked by back-pressure, not dropping
    assert out.pending_bytes <= 100
    sink.gate.set()
    assert done.wait(10)
    out.close(10)
    assert [f.timestamp_us for f in sink.frames] == [n * 1000 for n in range(6)]


def test_first_failure_is_kept_reported_once_and_stops_forwarding() -> None:
    sink = GatedSink(fail_at=3000)
    sink.gate.set()
    reported: list[BaseException] = []
    got = threading.Event()
    out = BackgroundOutput(sink, on_failure=lambda exc: (reported.append(exc), got.set()))
    feed(out, 0, 8)
    assert got.wait(10)
    out.close(10)
    assert [f.timestamp_us for f in sink.frames] == [0, 1000, 2000]
    assert isinstance(out.failure, OSError) and reported == [out.failure]
    with pytest.raises(RuntimeError, match="closed"):
        feed(out, 8, 1)


def test_pre_event_handoff_returns_before_the_sink_has_written_anything() -> None:
    buffer = PreEventBuffer(duration_s=1.0)
    feed(buffer, 0, 40, gop=10)  # 1 ms apart: all of it fits in the second
    sink = GatedSink()
    out = BackgroundOutput(sink)
    buffer.open_output(out)  # under the buffer's lock: must not wait for the sink
    feed(buffer, 40, 5, gop=10)
    assert sink.frames == []
    sink.gate.set()
    buffer.close_output()
    out.close(10)
    assert [f.timestamp_us for f in sink.frames] == [n * 1000 for n in range(45)]
