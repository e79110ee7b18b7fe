"""Sound end to end: sim camera + sim microphone → H.264 + AAC → pre-event buffer → sealed
segments → exported MP4, and the A/V offset measured on what comes out.

The sim microphone sounds a burst at every whole second of the sensor clock; the sim camera's
frame ``s * FPS`` is that second's picture. In the exported MP4 each burst's onset (decoded
audio) is compared with the presentation time of that frame (decoded video, its number read
from the picture): the difference is the A/V offset, wherever the second falls — in the
pre-event part, at the press, at a chunk or a segment boundary.
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from buffer.prebuffer import PreEventBuffer
from export.exporter import export_evidence
from hw_sim.camera import SimCamera, read_frame_number
from hw_sim.microphone import SimMicrophone, burst_onsets
from recorder.audio import MUTE_MARKER, SAMPLE_RATE, UNMUTE_MARKER, AacEncoder, AudioCapture, MuteGate
from recorder.chunk import decode_chunk
from recorder.encoders import PyAVEncoder
from recorder.segmenter import Segmenter
from secure_store import keys
from secure_store.audit import AuditLog
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.verify import decrypt_chunks

WIDTH, HEIGHT, FPS = 256, 144, 30
FRAME_S = 1 / FPS
DEVICE = "CAM-0077"
UTC0 = 1_760_000_000.0


class Rig:
    """A provisioned device root and the real capture path, driven frame by frame."""

    def __init__(self, root: Path) -> None:
        self.root = DeviceRoot(root)
        self.signing_key = Ed25519PrivateKey.generate()
        self.agency_key = X25519PrivateKey.generate()
        self.root.keys.mkdir(parents=True)
        self.open_store()

    def open_store(self) -> list[str]:
        self.audit = AuditLog(self.root.audit, self.signing_key, DEVICE, clock=lambda: UTC0)
        self.store = EvidenceStore(self.root, device_id=DEVICE, signing_key=self.signing_key,
                                   agency_public_key=self.agency_key.public_key(), audit=self.audit,
                                   clock=lambda: UTC0, reserve_bytes=0)
        return self.store.recover()

    def record(self, *, hold_audio: bool, press_s: float, stop_s: float, pre_event_s: float = 2.0,
               segment_s: float = 2.0, mute: tuple[float, float] | None = None, power_cut: bool = False,
               sound: bool = True) -> None:
        """Buffer from sensor time 0, press at ``press_s``, stop at ``stop_s`` (frame times)."""
        camera, mic = SimCamera(WIDTH, HEIGHT, FPS), SimMicrophone()
        buffer = PreEventBuffer(pre_event_s, hold_audio=hold_audio)
        newest: list[int | None] = [None]

        class Tap:
            def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
                buffer.outputframe(frame, keyframe, timestamp, packet, audio)
                if not audio:
                    newest[0] = timestamp

        gate = MuteGate(Tap(), lambda: newest[0])
        video = PyAVEncoder(gate, WIDTH, HEIGHT, FPS, bitrate=300_000)
        capture = AudioCapture(mic, AacEncoder(gate)) if sound else None
        segmenter = None
        press, stop = round(press_s * FPS), round(stop_s * FPS)
        mute_at = {} if mute is None else {round(mute[0] * FPS): "mute", round(mute[1] * FPS): "unmute"}
        for number in range(stop):
            ts = camera.timestamp_us(number)
            if number == press:
                segmenter = Segmenter(self.store.open_sealer(), "rec-audio", segment_s=segment_s)
                buffer.open_output(segmenter)
            if number in mute_at:
                assert segmenter is not None
                if mute_at[number] == "mute":
                    segmenter.add_marker(MUTE_MARKER, gate.mute())
                else:
                    segmenter.add_marker(UNMUTE_MARKER, gate.unmute())
            if capture is not None:
                capture.until(ts)
            video.encode(camera.render(number), ts)
        assert segmenter is not None
        if power_cut:
            return  # the GOP in flight and the open segment's manifest go with the power
        if capture is not None:
            capture.close()
        video.close()
        buffer.close_output()
        segmenter.close()

    def export(self, base: Path) -> tuple[Path, dict]:
        pulled = base / "pulled"
        pulled.mkdir()
        for item in self.store.list_evidence():
            target = pulled / item.name
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(self.store.evidence_path(item.name), target)
        (pulled / "device.pub").write_bytes(keys.public_pem(self.signing_key.public_key()))
        result = export_evidence(pulled, self.agency_key, base / "out")
        (recording,) = result.recordings
        return recording.mp4, json.loads(recording.report.read_text())


def video_times(mp4: Path) -> dict[int, float]:
    """Frame number → presentation time (s) in the MP4."""
    with av.open(str(mp4)) as c:
        return {read_frame_number(f.to_ndarray(format="gray")): float(f.pts * f.time_base)
                for f in c.decode(c.streams.video[0])}


def audio_track(mp4: Path) -> tuple[np.ndarray, float, list[float]]:
    """Decoded samples, the time (s) of the first one, and every packet's time (s)."""
    with av.open(str(mp4)) as c:
        assert len(c.streams.audio) == 1, "the export has no audio track"
        stream = c.streams.audio[0]
        assert (stream.codec_context.name, stream.codec_context.sample_rate) == ("aac", SAMPLE_RATE)
        assert stream.time_base == Fraction(1, SAMPLE_RATE)
        packets = [float(p.pts * p.time_base) for p in c.demux(stream) if p.size]
    with av.open(str(mp4)) as c:
        frames = list(c.decode(c.streams.audio[0]))
    start = frames[0].pts  # in samples (time base 1/48000): each frame is laid at its own time,
    end = frames[-1].pts + frames[-1].samples  # so a muted gap stays a gap (of silence)
    timeline = np.zeros(end - start, np.float32)
    for f in frames:
        timeline[f.pts - start:f.pts - start + f.samples] = f.to_ndarray()[0]
    return timeline, start / SAMPLE_RATE, packets


def burst_seconds(mp4: Path) -> dict[int, float]:
    """Whole sensor second → measured A/V offset (s) of its burst against its frame."""
    frames = video_times(mp4)
    first_number = min(frames)
    samples, start, _ = audio_track(mp4)
    offsets = {}
    for onset in burst_onsets(samples):
        heard = start + onset / SAMPLE_RATE  # MP4 time
        second = round((heard + first_number * FRAME_S))  # sensor second it belongs to
        offsets[second] = heard - frames[second * FPS]
    return offsets


@pytest.fixture(scope="module")
def with_pre_event_audio(tmp_path_factory):
    base = tmp_path_factory.mktemp("audio-pre")
    rig = Rig(base / "device")
    rig.record(hold_audio=True, press_s=3.5, stop_s=9.5, pre_event_s=2.0, segment_s=2.0)
    return rig, *rig.export(base)


def test_export_has_an_aac_track_in_sync_across_handoff_and_segment_boundaries(with_pre_event_audio) -> None:
    rig, mp4, report = with_pre_event_audio
    frames = video_times(mp4)
    assert sorted(frames) == list(range(min(frames), 9 * FPS + FPS // 2))  # every frame, pre-event ones too
    assert min(frames) <= 2 * FPS  # the buffer handed over ≥ 1.5 s from a keyframe
    offsets = burst_seconds(mp4)
    # Every whole second in the recording after its first: before the press (3.5 s), at the
    # handoff, and at the segment boundaries (a new segment every 2 s, at a whole second).
    expected = set(range(min(frames) // FPS + 1, 10))
    assert set(offsets) == expected
    assert max(abs(o) for o in offsets.values()) <= FRAME_S, offsets
    assert max(abs(o) for o in offsets.values()) < 0.002  # in fact within a few samples
    segments = report["segments"]
    assert len(segments) >= 3
    boundaries = {round(s["first_timestamp_us"] / 1e6) for s in segments[1:]}
    assert boundaries and boundaries <= set(offsets)  # a burst sits right on every segment boundary
    assert report["mp4"]["audio"]["codec"] == "aac" and report["mp4"]["audio"]["reencoded"] is False
    assert report["mp4"]["audio"]["packets"] == len(audio_track(mp4)[2])
    assert report["muted_spans"] == []


def test_export_of_pre_event_video_is_silent_by_default(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "device")
    rig.record(hold_audio=False, press_s=3.5, stop_s=7.0, pre_event_s=2.0)
    mp4, report = rig.export(tmp_path)
    frames = video_times(mp4)
    press_mp4 = frames[round(3.5 * FPS) - 1]  # the newest frame when record was pressed
    _, _, packets = audio_track(mp4)
    assert min(frames) <= 2 * FPS  # the pre-event video is there ...
    assert packets and min(packets) >= press_mp4  # ... its sound is not: audio starts at the press
    assert min(packets) - press_mp4 < 1024 / SAMPLE_RATE  # the first packet heard at the press
    offsets = burst_seconds(mp4)
    assert set(offsets) == {4, 5, 6}
    assert max(abs(o) for o in offsets.values()) <= FRAME_S


def test_mute_span_is_silent_and_in_the_report(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "device")
    rig.record(hold_audio=True, press_s=1.5, stop_s=8.5, pre_event_s=1.0, mute=(3.5, 6.5))
    mp4, report = rig.export(tmp_path)
    frames = video_times(mp4)
    t0 = min(frames) * FRAME_S
    _, _, packets = audio_track(mp4)
    muted_from, muted_to = frames[round(3.5 * FPS) - 1], frames[round(6.5 * FPS) - 1]  # newest frames then
    assert not [p for p in packets if muted_from <= p < muted_to]  # nothing heard in the span was kept
    assert [p for p in packets if p >= muted_to] and [p for p in packets if p < muted_from]
    offsets = burst_seconds(mp4)
    assert {1, 2, 3, 7, 8} <= set(offsets) and not {4, 5, 6} & set(offsets)  # 4, 5 and 6 fell in the mute
    assert max(abs(o) for o in offsets.values()) <= FRAME_S  # and the sound after it is still in sync
    (span,) = report["muted_spans"]
    assert abs(span["from_timestamp_us"] / 1e6 - (3.5 - FRAME_S)) < 1e-3 + FRAME_S
    assert abs(span["to_timestamp_us"] / 1e6 - (6.5 - FRAME_S)) < 1e-3 + FRAME_S
    assert span["until_end"] is False
    labels = [m["label"] for m in report["markers"]]
    assert labels == [MUTE_MARKER, UNMUTE_MARKER]
    assert t0 >= 0


def test_power_cut_keeps_audio_and_video_of_every_sealed_chunk(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "device")
    rig.record(hold_audio=True, press_s=1.5, stop_s=6.5, pre_event_s=1.0, segment_s=10.0, power_cut=True)
    recovered = rig.open_store()  # reboot: recovery closes the torn segment
    assert len(recovered) == 1
    (segment,) = sorted(rig.root.evidence.glob("seg-*.seg"))
    chunks = [decode_chunk(p) for p in decrypt_chunks(segment, rig.agency_key, rig.signing_key.public_key())]
    chunks = [c for c in chunks if c]
    assert len(chunks) >= 5
    video = [f for c in chunks for f in c if not f.audio]
    audio = [f for c in chunks for f in c if f.audio]
    for chunk in chunks:  # every sealed GOP carries the sound heard with it
        first_video = next(f.timestamp_us for f in chunk if not f.audio)
        assert chunk[0].keyframe and any(f.audio for f in chunk)
        assert all(f.timestamp_us >= first_video - 100_000 for f in chunk if f.audio)
    steps = np.diff([f.timestamp_us for f in audio])
    assert np.all(np.abs(steps - 1024 * 1_000_000 / SAMPLE_RATE) <= 1)  # no packet lost between chunks
    assert audio[-1].timestamp_us >= video[-1].timestamp_us - 100_000  # sound up to the last sealed frame


def test_video_only_evidence_still_exports_without_an_audio_track(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "device")
    rig.record(hold_audio=False, press_s=1.5, stop_s=4.0, pre_event_s=1.0, sound=False)
    (segment, *_) = sorted(rig.root.evidence.glob("seg-*.seg"))
    chunks = list(decrypt_chunks(segment, rig.agency_key, rig.signing_key.public_key()))
    assert all(c[:1] in (b"", b"\x01") for c in chunks)  # layout 1, as a device without sound wrote
    mp4, report = rig.export(tmp_path)
    with av.open(str(mp4)) as c:
        assert not c.streams.audio and len(c.streams.video) == 1
    assert report["mp4"]["audio"] is None and report["muted_spans"] == []
    assert sorted(video_times(mp4)) == list(range(0, 4 * FPS))
