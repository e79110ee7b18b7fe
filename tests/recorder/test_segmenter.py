"""Segmenter: GOP chunks, keyframe-aligned segments every segment_s, markers, close.

Every frame's data starts with its sequence number, so tests assert on content.
"""

from __future__ import annotations

import logging
import struct
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buffer import Frame, PreEventBuffer
from recorder import (
    MemoryChunkSink,
    Segmenter,
    SegmenterClosed,
    SegmenterError,
    SegmenterTimestampError,
    decode_chunk,
    encode_chunk,
)

FRAME_US = 40_000  # 25 fps: a GOP of 25 frames is exactly one second


def payload(number: int, size: int = 8) -> bytes:
    return struct.pack(">I", number).ljust(max(size, 4), b".")


def number_of(data: bytes) -> int:
    return struct.unpack_from(">I", data)[0]


def regular(count: int, gop: int = 25, first: int = 0) -> list[Frame]:
    return [Frame(payload(n), n % gop == 0, n * FRAME_US) for n in range(first, first + count)]


def feed(target, frames) -> None:
    for f in frames:
        target.outputframe(f.data, f.keyframe, f.timestamp_us)


def numbers(frames) -> list[int]:
    return [number_of(f.data) for f in frames]


def test_cuts_gop_chunks_into_segments_at_keyframes_every_segment_s():
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec-1", segment_s=2.0)
    feed(seg, regular(130))  # 5.2 s: keyframes at 0, 25, 50, 75, 100, 125
    assert [len(s.chunks) for s in sink.segments] == [2, 2, 1]  # GOP 100..124 written, 125.. in flight
    seg.close()
    assert [(s.recording_id, s.index, s.ended) for s in sink.segments] == [
        ("rec-1", 0, True), ("rec-1", 1, True), ("rec-1", 2, True)
    ]
    assert [[numbers(c) for c in s.chunks] for s in sink.segments] == [
        [list(range(0, 25)), list(range(25, 50))],
        [list(range(50, 75)), list(range(75, 100))],
        [list(range(100, 125)), list(range(125, 130))],
    ]
    assert [f.timestamp_us for f in sink.frames] == [n * FRAME_US for n in range(130)]
    assert [f.keyframe for f in sink.frames] == [n % 25 == 0 for n in range(130)]


def test_a_gop_is_written_only_when_the_next_keyframe_arrives():
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec", segment_s=10.0)
    feed(seg, regular(25))
    assert len(sink.segments) == 1 and sink.segments[0].chunks == []
    feed(seg, regular(1, first=25))
    assert numbers(sink.segments[0].chunks[0]) == list(range(25))


def test_segment_waits_for_the_first_keyframe_at_or_after_segment_s():
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec", segment_s=1.5)
    feed(seg, regular(100))  # keyframes each 1 s: 1.0 s is too soon, 2.0 s cuts
    seg.close()
    assert [numbers(s.frames)[0] for s in sink.segments] == [0, 50]


def test_frames_before_the_first_keyframe_are_dropped_with_a_warning(caplog):
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec", segment_s=10.0)
    with caplog.at_level(logging.WARNING, logger="recorder.segmenter"):
        feed(seg, regular(40, first=10))  # 10..49: first keyframe 25
    seg.close()
    assert numbers(sink.frames) == list(range(25, 50))
    assert sum("before the first keyframe" in r.getMessage() for r in caplog.records) == 1


def test_markers_go_to_the_current_segment_defaulting_to_the_newest_frame():
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec", segment_s=1.0)
    seg.add_marker("before anything")  # no frame, no segment: held, then the first segment's start
    feed(seg, regular(5, first=20))  # non-keyframes only: no segment yet
    seg.add_marker("pending")  # newest frame is 24
    feed(seg, regular(10, first=25))
    seg.add_marker("in first")  # newest frame is 34
    seg.add_marker("explicit", timestamp_us=12_345)
    feed(seg, regular(20, first=35))  # keyframe 50 begins segment 1
    seg.add_marker("in second")
    seg.close()
    assert [s.markers for s in sink.segments] == [
        [(25 * FRAME_US, "before anything"), (24 * FRAME_US, "pending"),
         (34 * FRAME_US, "in first"), (12_345, "explicit")],
        [(54 * FRAME_US, "in second")],
    ]


def test_close_flushes_gop_in_flight_is_idempotent_and_then_refuses():
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec")
    feed(seg, regular(30))
    seg.close()
    seg.close()
    assert seg.closed and len(sink.segments) == 1 and sink.segments[0].ended
    assert numbers(sink.frames) == list(range(30))
    with pytest.raises(SegmenterClosed):
        feed(seg, regular(1, first=30))
    with pytest.raises(SegmenterClosed):
        seg.add_marker("late")


def test_close_with_no_frames_writes_nothing():
    sink = MemoryChunkSink()
    Segmenter(sink, "rec").close()
    assert sink.segments == []


def test_backwards_timestamp_is_refused_and_changes_nothing():
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec")
    feed(seg, regular(30))
    with pytest.raises(SegmenterTimestampError):
        seg.outputframe(payload(99), True, 29 * FRAME_US - 1)
    with pytest.raises(SegmenterTimestampError):
        seg.outputframe(payload(99), False, None)
    feed(seg, regular(5, first=30))
    seg.close()
    assert numbers(sink.frames) == list(range(35))


def test_a_failing_sink_stops_the_segmenter_with_the_cause():
    class FullSink(MemoryChunkSink):
        def write_chunk(self, frames):
            raise OSError("no space")

    seg = Segmenter(FullSink(), "rec")
    feed(seg, regular(25))
    with pytest.raises(OSError):
        feed(seg, regular(1, first=25))
    with pytest.raises(SegmenterError, match="no space"):
        feed(seg, regular(1, first=26))
    seg.close()  # does not touch the failed sink again
    assert seg.closed


@pytest.mark.parametrize("kwargs, match", [
    ({"recording_id": ""}, "recording_id"),
    ({"recording_id": "r", "segment_s": 0}, "segment_s"),
    ({"recording_id": "r", "segment_s": -1.0}, "segment_s"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(SegmenterError, match=match):
        Segmenter(MemoryChunkSink(), **kwargs)


def test_memory_sink_refuses_calls_a_sealer_could_not_honour():
    sink = MemoryChunkSink()
    with pytest.raises(SegmenterError):
        sink.write_chunk([Frame(b"x", True, 0)])
    sink.begin_segment("r", 0)
    with pytest.raises(SegmenterError, match="keyframe"):
        sink.write_chunk([Frame(b"x", False, 0)])
    with pytest.raises(SegmenterError, match="while segment 0"):
        sink.begin_segment("r", 1)


def test_buffer_to_segmenter_recording_keeps_pre_event_and_live_frames_whole():
    """The composed path: 30 s buffer → open_output(segmenter) → chunks round-trip the codec."""
    buf = PreEventBuffer(duration_s=3.0)
    feed(buf, regular(200))  # 8 s; newest 199 at 7.96 s → held from keyframe 100 (4.0 s)
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec-9", segment_s=2.0)
    buf.open_output(seg)
    seg.add_marker("button")
    feed(buf, regular(110, first=200))
    buf.close_output()
    seg.close()
    feed(buf, regular(10, first=310))  # after close: back into the buffer, not the recording
    assert numbers(sink.frames) == list(range(100, 310))
    # the held 4 s already filled segment 0 (100..149); the press lands in segment 1 with frame 199
    assert [s.markers for s in sink.segments] == [[], [(199 * FRAME_US, "button")], [], [], []]
    assert [numbers(s.frames)[0] for s in sink.segments] == [100, 150, 200, 250, 300]
    for chunk in (c for s in sink.segments for c in s.chunks):
        assert decode_chunk(encode_chunk(chunk)) == chunk


@st.composite
def streams(draw) -> list[Frame]:
    frames: list[Frame] = []
    ts = 0
    for _ in range(draw(st.integers(1, 30))):
        for i in range(draw(st.integers(1, 20))):
            frames.append(Frame(payload(len(frames)), i == 0, ts))
            ts += draw(st.sampled_from([33_333, 0, 40_000, 250_000, 1_500_000]))
    return frames


@given(frames=streams(), segment_s=st.sampled_from([0.5, 1.0, 2.0, 3.3]))
def test_every_stream_is_cut_into_whole_gops_and_keyframe_aligned_segments(frames, segment_s):
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec", segment_s=segment_s)
    feed(seg, frames)
    seg.close()
    segment_us = round(segment_s * 1e6)
    assert sink.frames == frames  # nothing lost, duplicated or reordered
    assert [s.index for s in sink.segments] == list(range(len(sink.segments)))
    assert all(s.ended and s.recording_id == "rec" for s in sink.segments)
    for s in sink.segments:
        start = s.chunks[0][0].timestamp_us
        for chunk in s.chunks:  # one chunk = one whole GOP
            assert chunk[0].keyframe and not any(f.keyframe for f in chunk[1:])
            # no keyframe inside a segment was due to start the next one
            assert chunk is s.chunks[0] or chunk[0].timestamp_us - start < segment_us
    for before, after in zip(sink.segments, sink.segments[1:]):
        assert after.frames[0].timestamp_us - before.frames[0].timestamp_us >= segment_us


def test_markers_from_another_thread_each_land_once_in_the_segment_holding_their_frame():
    """The control thread marks while the encoder thread feeds: every marker lands in exactly one
    segment, in order, inside the span of frames that segment holds (or at its start)."""
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec", segment_s=1.0)
    produced = [0]
    stop = threading.Event()

    def encoder():
        n = 0
        while not stop.is_set() and n < 20_000:
            seg.outputframe(payload(n), n % 25 == 0, n * FRAME_US)
            n += 1
            produced[0] = n

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=encoder)
    thread.start()
    try:
        for i in range(40):
            target = produced[0] + 7 + i
            while produced[0] < target and thread.is_alive():
                pass
            seg.add_marker(f"m{i}")
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch_interval)
    seg.close()
    labels = [label for s in sink.segments for _, label in s.markers]
    assert labels == [f"m{i}" for i in range(40)]
    for s in sink.segments:
        first, last = s.frames[0].timestamp_us, s.frames[-1].timestamp_us
        assert all(first <= ts <= last for ts, _ in s.markers)
    assert numbers(sink.frames) == list(range(len(sink.frames)))
