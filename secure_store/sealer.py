"""SegmentSealer: the recorder's ChunkSink that encrypts, appends and fsyncs each chunk.

One segment = one file ``seg-NNNNNNNNNN.seg`` (header, then one record per GOP)
plus, once sealed, ``seg-NNNNNNNNNN.manifest`` signed by the device. Each
segment has a fresh data key that only the agency can unwrap; the sealer
forgets it when the segment ends. docs/FORMAT.md is the byte-level spec.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from buffer.frame import Frame
from recorder.chunk import encode_chunk, video_span
from recorder.location import encode_records
from secure_store import hybrid, keys
from secure_store.chain import ChainHead
from secure_store.clock_bound import ClockBound
from secure_store.durable import fsync_dir, write_atomic
from secure_store.errors import FormatError, SealerStateError, StorageFull
from secure_store.format import (
    MANIFEST_VERSION, MANIFEST_VERSION_HYBRID, ChunkMeta, Manifest, Marker, SegmentHeader, check_marker,
    check_recording_id, seal_record, sha256,
)
from secure_store.keywrap import suite_for, wrap_data_key
from secure_store.layout import DeviceRoot

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
MANIFEST_SUFFIX = ".manifest"
MANIFEST_HEADROOM = 64 * 1024  # room kept free so a segment can always be sealed
RECORD_OVERHEAD = 64  # a chunk record's bytes besides its plaintext (header, tag), rounded up


class SealingStore(Protocol):
    """What the sealer and recovery need of the store (``EvidenceStore`` is the one implementation).

    A protocol, so that the store may import the sealer and never the other way round.
    """

    root: DeviceRoot
    device_id: str
    signing_key: "ed25519.Ed25519PrivateKey | hybrid.SigningKey"
    agency_public_key: "x25519.X25519PublicKey | hybrid.HybridAgencyPublicKey"
    audit: Any
    chain_head: ChainHead
    recovery_pending: bool
    head_dirty: bool

    def has_room(self, nbytes: int) -> bool: ...
    def check_room(self, nbytes: int, *, during: str) -> None: ...
    def report_full(self, *, during: str, segment: str | None = None) -> None: ...
    def note_written(self, nbytes: int) -> None: ...
    def save_chain_head(self) -> bool: ...
    def with_room(self, action: Callable[[], Any]) -> Any: ...
    def clock_us(self) -> int: ...
    def utc_offset_us(self, written_ts_us: int) -> int: ...
    def clock_source(self) -> str: ...
    def clock_bound(self, start: ClockBound | None) -> ClockBound: ...
    def locations_for(self, first_us: int, last_us: int) -> list: ...


def new_data_key() -> bytes:
    """A fresh 256-bit data key (a seam the test vectors replace with a fixed key)."""
    return AESGCM.generate_key(256)


def segment_stem(seq: int) -> str:
    return f"seg-{seq:010d}"


@dataclass
class SegmentTally:
    """What the manifest will say about the chunks written so far."""

    chunk_digests: list[bytes] = field(default_factory=list)
    frame_count: int = 0
    first_ts_us: int | None = None
    last_ts_us: int = 0

    def add(self, meta: ChunkMeta, digest: bytes) -> None:
        self.chunk_digests.append(digest)
        if meta.frame_count:
            self.frame_count += meta.frame_count
            if self.first_ts_us is None:
                self.first_ts_us = meta.first_ts_us
            self.last_ts_us = meta.last_ts_us


def seal_manifest(store: "SealingStore", header: SegmentHeader, header_digest: bytes, tally: SegmentTally,
                  markers: Sequence[Marker], *, recovered: bool, storage_full: bool,
                  clock: ClockBound | None = None) -> Manifest:
    """Sign the manifest, write it durably next to its segment, advance the chain head.

    A hybrid device key signs version 3 (Ed25519 and ML-DSA-65 over the same bytes); a
    classic key keeps writing version 2, so its evidence reads as it always did.
    """
    key = hybrid.as_signing_key(store.signing_key)
    head = store.chain_head
    if header.segment_seq != head.next_seq:
        raise SealerStateError(f"segment {header.segment_seq} does not follow chain head {head.seq}")
    first = tally.first_ts_us or 0
    unsigned = Manifest(
        device_id=header.device_id, device_key_fp=header.device_key_fp, segment_seq=header.segment_seq,
        recording_id=header.recording_id, index=header.index, header_digest=header_digest,
        recovered=recovered, storage_full=storage_full, frame_count=tally.frame_count,
        first_ts_us=first, last_ts_us=tally.last_ts_us, utc_offset_us=header.utc_offset_us,
        clock_source=header.clock_source, first_utc_us=first + header.utc_offset_us,
        last_utc_us=tally.last_ts_us + header.utc_offset_us, prev_digest=head.digest,
        chunk_digests=tuple(tally.chunk_digests), markers=tuple(markers), clock=clock or ClockBound(),
        version=MANIFEST_VERSION_HYBRID if key.hybrid else MANIFEST_VERSION,
    )
    signatures = key.sign(unsigned.signed_bytes())
    manifest = Manifest(**{**unsigned.__dict__, "signature": signatures.ed25519,
                           "signature_mldsa65": signatures.mldsa65 or b""})
    data = manifest.encode()
    path = store.root.evidence / (segment_stem(header.segment_seq) + MANIFEST_SUFFIX)
    # Each write may draw on the sealing reserve: a full disk never leaves a segment unsealed.
    store.with_room(lambda: write_atomic(path, data, 0o644, overwrite=False))
    store.note_written(len(data))
    # The signed manifest is the durable record; the saved chain head can be rolled forward
    # from it, so a head that finds no room is saved later (``save_chain_head``), never lost.
    store.chain_head = ChainHead(header.segment_seq, manifest.digest)
    store.save_chain_head()
    store.audit.append("segment_sealed", segment=path.stem, seq=header.segment_seq,
                       recording_id=header.recording_id, index=header.index, chunks=len(tally.chunk_digests),
                       frames=tally.frame_count, recovered=recovered, manifest_sha256=manifest.digest.hex())
    log.info("sealed %s: %d chunks, %d frames%s", path.name, len(tally.chunk_digests), tally.frame_count,
             " (recovered)" if recovered else "")
    return manifest


class SegmentSealer:
    """Implements recorder.ChunkSink; get one from ``EvidenceStore.open_sealer()``.

    Chunks are sealed with ``final=0``; ``end_segment`` appends an empty chunk
    sealed with ``final=1``, so a decryptor notices a truncated segment even
    without the manifest. ``write_chunk`` raises StorageFull after sealing the
    segment cleanly when the store has no room for the chunk.
    """

    def __init__(self, store: "SealingStore") -> None:
        self._store = store
        self._lock = threading.Lock()
        self._open = False
        self._stopped_full = False
        self.unsealed: str | None = None  # a segment left for recovery (not even the reserve was enough)

    @property
    def recording(self) -> bool:
        """True between begin_segment and end_segment."""
        return self._open

    def begin_segment(self, recording_id: str, index: int) -> None:
        with self._lock:
            if self._open:
                raise SealerStateError("begin_segment while a segment is open; call end_segment first")
            check_recording_id(recording_id)
            if not 0 <= index < 2**32:
                raise FormatError(f"segment index {index} out of range")
            self._store.check_room(RECORD_OVERHEAD, during="begin_segment")
            self._recording_id, self._index = recording_id, index
            self._data_key = new_data_key()
            self._aead = AESGCM(self._data_key)
            self._wrapped = wrap_data_key(self._data_key, self._store.agency_public_key)
            self._header: SegmentHeader | None = None
            self._path = None
            self._fd: int | None = None
            self._tally = SegmentTally()
            self._markers: list[Marker] = []
            self._open, self._stopped_full = True, False

    def write_chunk(self, frames: Sequence[Frame]) -> None:
        with self._lock:
            if not self._open:
                if self._stopped_full:
                    raise StorageFull("storage full: recording stopped, segment sealed")
                raise SealerStateError("write_chunk without begin_segment")
            if not frames:
                return
            if not all(0 <= f.timestamp_us < 2**63 for f in (frames[0], frames[-1])):
                raise FormatError("frame timestamp out of range (0 .. 2**63 µs)")
            plaintext = encode_chunk(frames) + encode_records(  # GPS fixes ride inside the encrypted chunk
                self._store.locations_for(frames[0].timestamp_us, frames[-1].timestamp_us))
            # The manifest, chain head and audit entries that close the segment come out of the
            # sealing reserve, so the chunk only needs its own room.
            if not self._store.has_room(len(plaintext) + RECORD_OVERHEAD):
                segment = segment_stem(self._header_seq())
                self._stopped_full = True
                self._finish(storage_full=True)
                self._store.report_full(during="write_chunk", segment=segment)
                raise StorageFull("storage full: recording stopped, segment sealed")
            meta = ChunkMeta(False, *video_span(frames))  # audio rides along uncounted
            try:
                if self._header is None:
                    self._write_header(self._store.utc_offset_us(frames[-1].timestamp_us))
                self._append(meta, plaintext)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                self._out_of_space()
                raise StorageFull(f"storage full while writing a chunk ({exc.strerror}); segment sealed") from None

    def add_marker(self, timestamp_us: int, label: str) -> None:
        with self._lock:
            if not self._open:
                raise SealerStateError("add_marker without an open segment")
            marker = Marker(int(timestamp_us), label)
            check_marker(marker)  # refuse it now, not when the manifest is signed
            self._markers.append(marker)

    def end_segment(self) -> None:
        with self._lock:
            if not self._open:
                if self._stopped_full:
                    return  # already sealed when storage ran out
                raise SealerStateError("end_segment without begin_segment")
            self._finish(storage_full=False)

    # --- internals ----------------------------------------------------------------------------

    def _header_seq(self) -> int:
        return self._header.segment_seq if self._header else self._store.chain_head.next_seq

    def _write_header(self, utc_offset_us: int) -> None:
        device_pub = self._store.signing_key.public_key()
        agency = self._store.agency_public_key
        self._header = SegmentHeader(
            device_id=self._store.device_id, device_key_fp=sha256(keys.raw_public(device_pub)),
            agency_key_fp=sha256(keys.raw_public(agency)), suite=suite_for(agency),
            segment_seq=self._store.chain_head.next_seq, recording_id=self._recording_id, index=self._index,
            utc_offset_us=utc_offset_us, clock_source=self._store.clock_source(), wrapped_key=self._wrapped,
        )
        raw = self._header.encode()
        self._clock_bound = self._store.clock_bound(None)  # the clock error as the segment starts
        self._header_digest = sha256(raw)
        path = self._store.root.evidence / (segment_stem(self._header.segment_seq) + SEGMENT_SUFFIX)
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise SealerStateError(f"{path.name} exists but is not sealed; run EvidenceStore.recover()") from None
        self._path, self._offset = path, 0
        try:
            self._write_all(raw)
            os.fsync(self._fd)
            fsync_dir(path.parent)
        except OSError:  # e.g. a full disk: no half header left behind, so the write can be tried again
            os.close(self._fd)
            self._fd = None
            path.unlink(missing_ok=True)
            self._header = None
            raise
        self._offset = len(raw)
        self._store.note_written(len(raw))

    def _append(self, meta: ChunkMeta, plaintext: bytes) -> None:
        index = len(self._tally.chunk_digests)
        parts, digest = seal_record(self._aead, self._header_digest, index, meta, plaintext)
        size = sum(len(p) for p in parts)
        try:
            written = os.writev(self._fd, parts)
            if written != size:  # a short write: finish the record from where it stopped
                self._write_all(b"".join(parts)[written:])
            os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, self._offset)  # no torn record: the write can be tried again
            raise
        self._offset += size
        self._store.note_written(size)
        self._tally.add(meta, digest)

    def _out_of_space(self) -> None:
        """The disk filled up under us: the partial record is gone; seal with what was written, say so."""
        self._stopped_full = True
        segment = self._path.stem if self._path else segment_stem(self._header_seq())
        try:
            self._finish(storage_full=True)
        except OSError as exc:  # not even the sealing reserve was enough: recovery will seal it
            self.unsealed = segment
            log.error("cannot seal %s on a full disk (%s); recovery will close it", segment, exc.strerror)
        self._store.report_full(during="write_chunk", segment=segment)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def _finish(self, *, storage_full: bool) -> None:
        """Append the final chunk, close the file and sign the manifest."""
        try:
            if self._header is None:
                utc_offset_us = self._store.clock_us()
                self._store.with_room(lambda: self._write_header(utc_offset_us))
            last = self._tally.last_ts_us
            self._store.with_room(lambda: self._append(ChunkMeta(True, 0, last, last), b""))
            os.close(self._fd)
            self._fd = None
            seal_manifest(self._store, self._header, self._header_digest, self._tally, self._markers,
                          recovered=False, storage_full=storage_full,
                          clock=self._store.clock_bound(self._clock_bound))
        except OSError:
            self.unsealed = segment_stem(self._header_seq())
            raise
        finally:
            if self._fd is not None:
                os.close(self._fd)
            self._open = False
            self._data_key = self._aead = None  # forget the key: the device cannot decrypt it any more
