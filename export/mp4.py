"""Mp4Remuxer: H.264 access units into an MP4 with PyAV, copied, never re-encoded.

The MP4 is fast-start (``moov`` before ``mdat``: a player starts before the whole file has
arrived) and carries the markers as chapters (a QuickTime chapter track and a Nero ``chpl``
box: what VLC, mpv, QuickTime and ffprobe show). Chapters must be known when the file is
opened, because the muxer reserves the chapter track in the header; the exporter knows them
from the signed manifests before it decrypts anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, NamedTuple

from buffer.frame import Frame
from secure_store.durable import fsync_dir
from secure_store.sources import as_path

from export.audio import SAMPLE_RATE as AUDIO_RATE, AudioTrack, count_audio_packets
from export.errors import ExportError

TIME_BASE = Fraction(1, 1_000_000)  # frame timestamps are µs; the MP4 keeps them exactly


def sha256_file(path: Path) -> str:
    with as_path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def iso_utc(utc_us: float) -> str:
    return dt.datetime.fromtimestamp(utc_us / 1e6, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Chapter(NamedTuple):
    """A named span of the MP4, in µs from its first frame."""

    start_us: int
    end_us: int
    title: str


def box_order(path: Path) -> list[str]:
    """The top-level ISO BMFF box types of a file, in order (``ftyp``, ``moov``, ``mdat``, ...)."""
    order = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(16)
            length, kind = int.from_bytes(head[:4], "big"), head[4:8].decode("latin-1")
            if length == 1:
                length = int.from_bytes(head[8:16], "big")
            elif length == 0:
                length = size - offset
            if length < 8:
                break
            order.append(kind)
            offset += length
    return order


class Mp4Remuxer:
    """Copy H.264 Annex B access units into an MP4 (PyAV, no re-encode), streaming.

    The first frame must be a keyframe carrying SPS/PPS; the muxer takes the MP4's codec
    configuration from it. Each packet keeps its frame's timestamp (µs, relative to the
    first frame) and lasts until the next frame; the last lasts one nominal interval.
    """

    def __init__(self, partial_path: Path, rate: Fraction, metadata: dict[str, str] | None = None,
                 chapters: list[Chapter] = (), audio: bool = False) -> None:
        self.partial_path = Path(partial_path)
        self.rate = rate
        self.metadata = dict(metadata or {})
        self.chapters = list(chapters)
        self.frames = 0
        self.previous_ts = 0
        self._container: Any = None
        self._stream: Any = None
        self._pending: Frame | None = None
        self._t0 = 0
        self._with_audio = audio  # the recording has sound: an AAC track (export/audio.py)
        self.audio_track: AudioTrack | None = None

    def add(self, frame: Frame) -> int:
        """Queue one frame; returns the time since the previous frame in µs (0 for the first)."""
        if self._pending is None and self._container is None:
            self._open(frame)
            self._pending, self._t0, self.previous_ts = frame, frame.timestamp_us, frame.timestamp_us
            return 0
        prev = self._pending
        assert prev is not None
        delta = frame.timestamp_us - prev.timestamp_us
        if delta <= 0:
            raise ExportError(f"frame timestamps do not increase ({prev.timestamp_us} then {frame.timestamp_us} µs)")
        self._mux(prev, delta)
        self._pending, self.previous_ts = frame, prev.timestamp_us
        return delta

    def add_audio(self, frame: Frame) -> None:
        """Copy one AAC access unit into the audio track, on the video's clock."""
        if self.audio_track is None:
            raise ExportError("audio before the first video frame, or in a recording opened without sound")
        self.audio_track.add(frame, self._t0)

    def finish(self, final_path: Path, first_utc_us: int, seal: Callable[[Path, Path], Any] | None = None,
               chapters: list[Chapter] | None = None) -> dict:
        """Flush, close, fsync and move into place (never over an existing file); returns facts.

        ``chapters``: the final list, if it differs from the one given at the start (the file is
        then copied once more, packets unchanged, to write them). ``seal(source, dest)`` writes a
        signed copy (C2PA) of the finished MP4 to a new file; that copy lands at ``final_path``.
        """
        import av

        if self._pending is None:
            raise ExportError("no frames to export")
        self._mux(self._pending, round(1_000_000 / self.rate))
        self._container.close()
        self._container = None
        if chapters is not None and list(chapters) != self.chapters:
            self._rewrite_chapters(list(chapters))
        done = self.partial_path
        if seal is not None:
            done = self.partial_path.with_name(self.partial_path.name + ".signed")
            done.unlink(missing_ok=True)
            try:
                seal(self.partial_path, done)
            except BaseException:
                done.unlink(missing_ok=True)
                raise
            self.partial_path.unlink()
        _fsync_file(done)
        try:
            os.link(done, final_path)
        except FileExistsError:
            done.unlink()
            raise ExportError(f"{final_path} already exists; refusing to overwrite an export") from None
        done.unlink()
        fsync_dir(final_path.parent)
        boxes = box_order(final_path)
        if "moov" not in boxes or "mdat" not in boxes or boxes.index("moov") > boxes.index("mdat"):
            raise ExportError(f"{final_path.name}: not fast-start (boxes {' '.join(boxes)})")
        with av.open(str(final_path)) as check:  # read back: the file is an MP4 with every frame in it
            stream = check.streams.video[0]
            packets = sum(1 for p in check.demux(stream) if p.size)
            width, height = stream.codec_context.width, stream.codec_context.height
            duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        if packets != self.frames:
            raise ExportError(f"{final_path.name}: holds {packets} packets, {self.frames} were written")
        sound = self.audio_track
        if sound is not None and count_audio_packets(final_path) != sound.packets:
            raise ExportError(f"{final_path.name}: its audio track does not hold the {sound.packets} packets written")
        return {"sha256": sha256_file(final_path), "size": final_path.stat().st_size, "frames": self.frames,
                "width": width, "height": height, "duration_s": round(duration, 6),
                "time_base": "1/1000000", "first_frame_utc": iso_utc(first_utc_us), "file": final_path.name,
                "boxes": boxes, "chapters": [c._asdict() for c in self.chapters],
                "audio": None if sound is None else sound.facts()}

    def _rewrite_chapters(self, chapters: list[Chapter]) -> None:
        """Copy the finished file's packets into a new one whose header holds ``chapters``."""
        import av

        copy = self.partial_path.with_name(self.partial_path.name + ".chapters")
        copy.unlink(missing_ok=True)
        try:
            with av.open(str(self.partial_path)) as src, \
                    av.open(str(copy), "w", format="mp4", options=self._options()) as dst:
                dst.metadata.update(self.metadata)
                dst.set_chapters(_av_chapters(chapters))
                copied = {s: dst.add_stream_from_template(s) for s in (*src.streams.video[:1], *src.streams.audio[:1])}
                for packet in src.demux(*copied):
                    if packet.size:
                        packet.stream = copied[packet.stream]
                        dst.mux(packet)
            os.replace(copy, self.partial_path)
        except BaseException:
            copy.unlink(missing_ok=True)
            raise
        self.chapters = chapters

    def abort(self) -> None:
        """Drop the partial file after a failure."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - already failing; the partial file goes anyway
                pass
            self._container = None
        self.partial_path.unlink(missing_ok=True)
        for leftover in (".signed", ".chapters"):
            self.partial_path.with_name(self.partial_path.name + leftover).unlink(missing_ok=True)

    def _open(self, frame: Frame) -> None:
        import av

        if not frame.keyframe:
            raise ExportError("recording does not start with a keyframe")
        width, height = _frame_size(frame.data)
        self.partial_path.unlink(missing_ok=True)  # left by an earlier crash: never evidence
        self._container = av.open(str(self.partial_path), "w", format="mp4", options=self._options())
        self._container.metadata.update(self.metadata)
        if self.chapters:
            self._container.set_chapters(_av_chapters(self.chapters))
        self._stream = self._container.add_mux_stream("h264", rate=self.rate, width=width, height=height)
        self._stream.time_base = TIME_BASE
        if self._with_audio:
            self.audio_track = AudioTrack(self._container)

    def _options(self) -> dict[str, str]:
        """Fast start; with sound, the movie's own clock (edit lists) counts audio samples, so the
        audio track starts on its exact sample rather than the default whole millisecond."""
        options = {"movflags": "+faststart"}
        if self._with_audio:
            options["movie_timescale"] = str(AUDIO_RATE)
        return options

    def _mux(self, frame: Frame, duration_us: int) -> None:
        import av

        packet = av.Packet(frame.data)
        packet.stream = self._stream
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = frame.timestamp_us - self._t0
        packet.duration = duration_us
        packet.is_keyframe = frame.keyframe
        self._container.mux(packet)
        self.frames += 1


def _av_chapters(chapters: list[Chapter]) -> list[dict]:
    return [{"id": i + 1, "start": c.start_us, "end": c.end_us, "time_base": TIME_BASE, "metadata": {"title": c.title}}
            for i, c in enumerate(chapters)]


def _frame_size(keyframe: bytes) -> tuple[int, int]:
    """Width and height from decoding the first keyframe (decoding, not re-encoding)."""
    import av

    ctx = av.CodecContext.create("h264", "r")
    try:
        packets = ctx.parse(keyframe) + ctx.parse(None)
        for packet in packets:
            for image in ctx.decode(packet):
                return image.width, image.height
        for image in ctx.decode(None):
            return image.width, image.height
    except av.FFmpegError as exc:
        raise ExportError(f"first keyframe does not decode as H.264: {exc}") from None
    raise ExportError("first keyframe does not decode as H.264")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
