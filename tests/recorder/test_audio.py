"""Sound capture: the sim microphone, AAC-LC through PyAV, the mute gate, chunk layout 2, segmenter."""

from __future__ import annotations

import av
import numpy as np
import pytest

from buffer import Frame
from hw_sim.camera import SimCamera
from hw_sim.microphone import SimMicrophone, burst_onsets
from recorder import MemoryChunkSink, Segmenter, SegmenterTimestampError, decode_chunk, encode_chunk
from recorder.audio import (
    AUDIO_SPECIFIC_CONFIG, SAMPLE_RATE, AacEncoder, AudioCapture, AudioError, MuteGate, samples_to_us,
)
from recorder.chunk import ChunkFormatError, chunk_layout, video_span
from recorder.encoders import PyAVEncoder, run_camera

PACKET_US = 1024 * 1_000_000 / SAMPLE_RATE


class Collect:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False) -> None:
        self.frames.append(Frame(frame, keyframe, timestamp, audio))


def decode_aac(frames: list[Frame]) -> tuple[np.ndarray, int]:
    """Decode raw AAC access units (what the chunks hold) back to samples; (samples, first sample no.)."""
    ctx = av.CodecContext.create("aac", "r")
    ctx.sample_rate, ctx.layout, ctx.extradata = SAMPLE_RATE, "mono", AUDIO_SPECIFIC_CONFIG
    out = []
    for f in frames:
        packet = av.Packet(f.data)
        out += [x.to_ndarray()[0] for x in ctx.decode(packet)]
    first = round(frames[0].timestamp_us * SAMPLE_RATE / 1e6)
    return np.concatenate(out), first


def test_sim_microphone_is_deterministic_whole_blocks_on_the_sensor_clock() -> None:
    mic = SimMicrophone()
    blocks = mic.read_until(1_000_000)
    assert [n for _, n in blocks] == list(range(0, 46 * 1024, 1024))  # 46 whole blocks in 1 s
    assert mic.read_until(1_000_000) == []  # nothing twice
    later = mic.read_until(2_500_000)
    assert later[0][1] == 46 * 1024
    samples = np.concatenate([b for b, _ in blocks + later])
    assert burst_onsets(samples) == [0, SAMPLE_RATE, 2 * SAMPLE_RATE]
    assert np.array_equal(SimMicrophone().render(47_000, 2000), samples[47_000:49_000])


def test_aac_packets_are_stamped_with_their_first_sample_and_decode_in_place() -> None:
    sink = Collect()
    capture = AudioCapture(SimMicrophone(), AacEncoder(sink, bitrate=64_000))
    capture.until(3_000_000)
    capture.close()
    stamps = [f.timestamp_us for f in sink.frames]
    assert all(f.audio and not f.keyframe for f in sink.frames)
    assert stamps[0] == 0  # the priming packet (before sensor time 0) is not passed on
    assert stamps == [samples_to_us(k * 1024) for k in range(len(stamps))]
    samples, first = decode_aac(sink.frames)
    onsets = [(first + i) / SAMPLE_RATE for i in burst_onsets(samples)]
    assert onsets[1:] == pytest.approx([1.0, 2.0], abs=0.001)  # a burst is heard where it was made
    assert sum(len(f.data) for f in sink.frames) * 8 / 3.0 < 2 * 64_000


def test_aac_encoder_refuses_bad_settings_and_blocks() -> None:
    with pytest.raises(AudioError, match="bitrate"):
        AacEncoder(Collect(), bitrate=1_000_000)
    encoder = AacEncoder(Collect())
    with pytest.raises(AudioError, match="shape"):
        encoder.encode(np.zeros(100, np.float32), 0)
    encoder.encode(np.zeros(1024, np.float32), 1024)
    with pytest.raises(AudioError, match="overlaps"):
        encoder.encode(np.zeros(1024, np.float32), 1500)
    encoder.close()
    with pytest.raises(AudioError, match="closed"):
        encoder.encode(np.zeros(1024, np.float32), 4096)


def test_capture_loop_encodes_the_sound_up_to_each_frame_before_the_frame() -> None:
    sink = Collect()
    with PyAVEncoder(sink, 256, 144, 10, 200_000) as video:
        capture = AudioCapture(SimMicrophone(), AacEncoder(sink))
        run_camera(SimCamera(256, 144, 10).frames(20), video, audio=capture)
        capture.close()
    heard_by = -1
    for f in sink.frames:
        if f.audio:
            heard_by = f.timestamp_us
        else:  # every packet before a frame was heard before it (plus the AAC frame being built)
            assert heard_by < f.timestamp_us
    assert [f.timestamp_us for f in sink.frames if not f.audio] == [n * 100_000 for n in range(20)]
    assert len([f for f in sink.frames if f.audio]) >= 1.9 * SAMPLE_RATE / 1024 - 3


def test_mute_gate_drops_audio_heard_in_the_muted_span_and_passes_video() -> None:
    sink = Collect()
    now = [0]
    gate = MuteGate(sink, lambda: now[0])
    gate.outputframe(b"v0", True, 0)
    now[0] = 1_000_000
    assert gate.mute() == 1_000_000 and gate.muted
    assert gate.mute() == 1_000_000  # muting twice changes nothing
    gate.outputframe(b"a-before", False, 990_000, None, True)  # heard before the mute, arrives late
    gate.outputframe(b"a-in", False, 1_010_000, None, True)
    gate.outputframe(b"v1", False, 1_033_333)
    now[0] = 2_000_000
    assert gate.unmute() == 2_000_000 and not gate.muted
    gate.outputframe(b"a-late-in", False, 1_990_000, None, True)  # heard while muted, arrives after
    gate.outputframe(b"a-after", False, 2_000_000, None, True)
    assert [f.data for f in sink.frames] == [b"v0", b"a-before", b"v1", b"a-after"]
    assert gate.dropped == 2


def test_chunk_layout_1_is_unchanged_for_video_and_layout_2_carries_audio() -> None:
    video = [Frame(b"\x00\x00\x00\x01\x65IDR", True, 1_000_000), Frame(b"\x00\x00\x00\x01\x41P", False, 1_033_333)]
    old = encode_chunk(video)
    assert old[0] == 1 and chunk_layout(old) == 1  # what a video-only device always wrote
    assert decode_chunk(old) == video
    mixed = [video[0], Frame(b"\x21\x10aac", False, 990_000, True), video[1], Frame(b"\x21\x10", False, 1_011_333, True)]
    new = encode_chunk(mixed)
    assert new[:2] == b"\x02\x01" and chunk_layout(new) == 2
    assert new[2:] == b"".join(  # the same entries, audio flagged with bit 1
        encode_chunk([f])[(2 if f.audio else 0):] for f in mixed)
    assert decode_chunk(new) == mixed
    assert video_span(mixed) == (2, 1_000_000, 1_033_333)
    assert decode_chunk(b"") == [] and video_span([]) == (0, 0, 0)


@pytest.mark.parametrize("plaintext, why", [
    (b"\x02\x07" + encode_chunk([Frame(b"k", True, 0)]), "audio format"),
    (b"\x02\x01" + encode_chunk([Frame(b"k", True, 0)]), "no audio"),
    (b"\x02\x01\x03" + bytes(8) + b"\x00\x00\x00\x01x", "flags"),
    (encode_chunk([Frame(b"k", True, 0)]) + b"\x02" + bytes(8) + b"\x00\x00\x00\x01x", "flags"),
    (b"\x02\x01\x02" + bytes(8) + b"\x00\x00\x30\x00" + bytes(0x3000), "limits"),
    (b"\x02\x01\x02" + bytes(8) + b"\x00\x00\x00\x00", "limits"),
    (encode_chunk([Frame(b"k", True, 0), Frame(b"a", False, 10, True), Frame(b"b", False, 10, True)]), "follow"),
    (encode_chunk([Frame(b"k", True, 0), Frame(b"a", False, 10, True)])[:-1], "truncated"),
])
def test_decode_refuses_malformed_layout_2(plaintext: bytes, why: str) -> None:
    with pytest.raises(ChunkFormatError, match=why):
        decode_chunk(plaintext)


def test_encode_refuses_audio_that_cannot_be_written() -> None:
    with pytest.raises(ChunkFormatError, match="keyframe"):
        encode_chunk([Frame(b"k", True, 0), Frame(b"a", True, 5, True)])
    with pytest.raises(ChunkFormatError, match="bytes"):
        encode_chunk([Frame(b"k", True, 0), Frame(bytes(9000), False, 5, True)])


def test_segmenter_puts_audio_in_the_chunk_of_the_gop_it_arrives_in() -> None:
    sink = MemoryChunkSink()
    seg = Segmenter(sink, "rec", segment_s=2.0)
    seg.outputframe(b"a-early", False, 0, None, True)  # before any keyframe: no GOP to carry it
    for n in range(100):  # 25 fps, keyframe each second; audio every 20 ms, 30 ms behind
        ts = n * 40_000
        for k in range(2):
            a_ts = ts - 30_000 + k * 20_000
            if a_ts > 0:
                seg.outputframe(b"a%d" % a_ts, False, a_ts, None, True)
        seg.outputframe(b"v%d" % n, n % 25 == 0, ts)
    seg.close()
    assert len(sink.segments) == 2
    chunks = [c for s in sink.segments for c in s.chunks]
    assert [len([f for f in c if not f.audio]) for c in chunks] == [25, 25, 25, 25]
    heard = [f.timestamp_us for c in chunks for f in c if f.audio]
    assert heard == list(range(10_000, 3_950_001, 20_000))  # every packet after the first keyframe, once
    for c in chunks:
        start = c[0].timestamp_us
        assert c[0].keyframe and all(start - 30_000 <= f.timestamp_us < start + 1_000_000 for f in c if f.audio)


def test_segmenter_checks_audio_time_on_its_own() -> None:
    seg = Segmenter(MemoryChunkSink(), "rec")
    seg.outputframe(b"v0", True, 100_000)
    seg.outputframe(b"a0", False, 80_000, None, True)  # behind the video: its own clock
    for bad in (80_000, 60_000, None):
        with pytest.raises(SegmenterTimestampError, match="audio"):
            seg.outputframe(b"a?", False, bad, None, True)
    seg.outputframe(b"a1", False, 101_333, None, True)
    seg.close()


def test_mute_starts_after_the_sound_already_passed_on() -> None:
    """The capture loop encodes a frame's sound before the frame: audio may be ahead of the newest
    video frame when the officer mutes. The mute then starts where that audio ends, so the span
    it reports is exactly the span it drops."""
    sink = Collect()
    gate = MuteGate(sink, lambda: 1_000_000)
    gate.outputframe(b"a-ahead", False, 1_050_000, None, True)
    assert gate.mute() == 1_050_000 + 21_333
    gate.outputframe(b"a-next", False, 1_071_333, None, True)
    assert [f.data for f in sink.frames] == [b"a-ahead"]
    assert gate.unmute() == 1_071_333 + 21_333  # after the newest packet it dropped


def test_a_failing_microphone_stops_the_sound_not_the_picture(caplog) -> None:
    class BrokenMicrophone:
        sample_rate = SAMPLE_RATE
        working = SimMicrophone()

        def read_until(self, timestamp_us):
            if timestamp_us >= 300_000:
                raise OSError(5, "Input/output error")
            return self.working.read_until(timestamp_us)

    sink = Collect()
    with PyAVEncoder(sink, 256, 144, 10, 200_000) as video:
        capture = AudioCapture(BrokenMicrophone(), AacEncoder(sink))
        run_camera(SimCamera(256, 144, 10).frames(10), video, audio=capture)
        capture.close()
    assert [f.timestamp_us for f in sink.frames if not f.audio] == [n * 100_000 for n in range(10)]
    assert isinstance(capture.error, OSError) and "sound capture stopped" in caplog.text


def test_a_chunk_with_sound_also_carries_location_records() -> None:
    from recorder.location import Fix, decode_locations, encode_records

    frames = [Frame(b"\x00\x00\x00\x01\x65IDR", True, 1_000_000), Frame(b"\x21\x10a", False, 990_000, True)]
    fix = Fix(1_010_000, quality=1, mode=3, satellites=7, lat=51.5, lon=-0.12)
    plaintext = encode_chunk(frames) + encode_records([fix])
    assert chunk_layout(plaintext) == 2
    assert decode_chunk(plaintext) == frames
    (got,) = decode_locations(plaintext)
    assert (got.sensor_ts_us, got.satellites) == (1_010_000, 7) and abs(got.lat - 51.5) < 1e-6
