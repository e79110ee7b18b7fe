"""Byte-level codecs of the segment file and its manifest (docs/FORMAT.md is the spec).

Every parser here is strict and bounded: lengths are checked against limits
before anything is allocated, so a hostile file gives ``FormatError`` with one
line that says what and where, never a crash, a hang or a huge allocation.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_store.clock_bound import CLOCK_BLOCK, ClockBound
from secure_store.errors import FormatError, TornRecordError, VerifyError
from secure_store.hybrid import MLDSA65_SIGNATURE_LEN, Signatures
from secure_store.keywrap import (  # noqa: F401 - the key wrap's names, as this module always offered them
    HPKE_INFO, HPKE_SUITE, HPKE_SUITE_PQ, SUITE_HPKE_MLKEM768X25519_AES256GCM, SUITE_HPKE_X25519_AES256GCM,
    WRAPPED_KEY_LEN, WRAPPED_KEY_LENS, unwrap_data_key, wrap_data_key,
)

SEGMENT_MAGIC = b"BCAMSEG\n"
MANIFEST_MAGIC = b"BCAMMAN\n"
VERSION = 1
MANIFEST_VERSION = 2          # manifests gained the clock block (docs/FORMAT.md, "Clock error bound")
MANIFEST_VERSION_HYBRID = 3   # the version-2 body, signed with Ed25519 and ML-DSA-65 ("Post-quantum protection")
MANIFEST_VERSIONS = (1, 2, 3)  # what a reader accepts: old evidence keeps verifying
ZERO_DIGEST = bytes(32)

MAX_HEADER = 4096
MAX_ID = 64
MAX_LABEL = 256
MAX_CHUNK_PLAINTEXT = 64 * 1024 * 1024
RECORD_META = struct.Struct(">BIQQ")  # flags, frame_count, first_ts_us, last_ts_us
MAX_RECORD_BODY = RECORD_META.size + MAX_CHUNK_PLAINTEXT + 16
MAX_CHUNKS = 1_000_000
MAX_MARKERS = 10_000
SIGNATURE_LEN = 64
FLAG_FINAL = 0x01
MANIFEST_RECOVERED = 0x01
MANIFEST_STORAGE_FULL = 0x02

_RECORDING_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}\Z")
_ASCII_PRINTABLE = re.compile(rb"[\x20-\x7e]{0,64}\Z")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class _Cursor:
    """Reads big-endian fields from bytes, raising FormatError that names the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = memoryview(data), 0, what

    def take(self, n: int, name: str) -> bytes:
        if len(self.data) - self.pos < n:
            raise FormatError(f"{self.what}: truncated at {name} (byte {self.pos})")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str, name: str) -> int:
        s = struct.Struct(">" + fmt)
        return s.unpack(self.take(s.size, name))[0]

    def text(self, name: str, len_fmt: str, limit: int, pattern: re.Pattern | None = None,
             allow_empty: bool = True) -> str:
        n = self.unpack(len_fmt, f"{name} length")
        if n > limit or (n == 0 and not allow_empty):
            raise FormatError(f"{self.what}: {name} length {n} out of range")
        raw = self.take(n, name)
        if pattern is not None and not pattern.match(raw):
            raise FormatError(f"{self.what}: {name} has characters outside the allowed set")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.what}: {name} is not UTF-8") from None
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise FormatError(f"{self.what}: {name} contains control characters")
        return value

    def end(self) -> None:
        if self.pos != len(self.data):
            raise FormatError(f"{self.what}: {len(self.data) - self.pos} unexpected bytes at the end")


def _text(value: str, name: str, len_fmt: str, limit: int, pattern: re.Pattern | None = None,
          allow_empty: bool = True) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit or (not raw and not allow_empty):
        raise FormatError(f"{name} must be {0 if allow_empty else 1}..{limit} bytes of UTF-8")
    if pattern is not None and not pattern.match(raw):
        raise FormatError(f"{name} {value!r} has characters outside the allowed set")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise FormatError(f"{name} {value!r} contains control characters")
    return struct.pack(">" + len_fmt, len(raw)) + raw


def check_recording_id(recording_id: str) -> None:
    """FormatError unless ``recording_id`` fits the header: 1-64 of ``A-Z a-z 0-9 . _ : -``."""
    _text(recording_id, "recording_id", "B", MAX_ID, _RECORDING_ID, allow_empty=False)


def check_marker(marker: "Marker") -> None:
    """FormatError unless the marker fits a manifest (u64 time, label of ≤ 256 bytes, no controls)."""
    if not 0 <= marker.timestamp_us < 2**64:
        raise FormatError(f"marker timestamp {marker.timestamp_us} out of range")
    _text(marker.label, "marker label", "H", MAX_LABEL)


def _check_version(version: int, what: str, known: tuple[int, ...] = (VERSION,)) -> None:
    if version not in known:
        knows = ", ".join(map(str, known))
        raise FormatError(f"{what}: format version {version} is not supported (this reader knows {knows})")


# --- segment header -------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentHeader:
    """The clear-text header at the start of a segment file."""

    device_id: str
    device_key_fp: bytes      # SHA-256 of the raw Ed25519 device public key
    agency_key_fp: bytes      # SHA-256 of the raw agency public key (suite 2: pk_MLKEM768 || pk_X25519)
    segment_seq: int          # device-wide, 1, 2, 3 ...
    recording_id: str
    index: int                # index of this segment within its recording, from 0
    utc_offset_us: int        # utc_us = timestamp_us + utc_offset_us
    clock_source: str
    wrapped_key: bytes        # HPKE enc || sealed data key
    suite: int = SUITE_HPKE_X25519_AES256GCM  # 1: X25519; 2: ML-KEM-768 + X25519 (secure_store.keywrap)

    def encode(self) -> bytes:
        if self.suite not in WRAPPED_KEY_LENS:
            raise FormatError(f"unknown cipher suite {self.suite}")
        body = b"".join([
            struct.pack(">H", self.suite),
            _text(self.device_id, "device_id", "B", MAX_ID, allow_empty=False),
            _fixed(self.device_key_fp, 32, "device_key_fp"),
            _fixed(self.agency_key_fp, 32, "agency_key_fp"),
            struct.pack(">Q", self.segment_seq),
            _text(self.recording_id, "recording_id", "B", MAX_ID, _RECORDING_ID, allow_empty=False),
            struct.pack(">Iq", self.index, self.utc_offset_us),
            _text(self.clock_source, "clock_source", "B", MAX_ID, _ASCII_PRINTABLE),
            struct.pack(">H", len(self.wrapped_key)),
            _fixed(self.wrapped_key, WRAPPED_KEY_LENS[self.suite], "wrapped_key"),
        ])
        total = len(SEGMENT_MAGIC) + 4 + len(body)
        return SEGMENT_MAGIC + struct.pack(">HH", VERSION, total) + body

    @classmethod
    def parse(cls, data: bytes, what: str = "segment header") -> "SegmentHeader":
        c = _Cursor(data, what)
        magic = c.take(8, "magic")
        if magic != SEGMENT_MAGIC:
            raise FormatError(f"{what}: not a bodycam segment (bad magic)")
        _check_version(c.unpack("H", "version"), what)
        total = c.unpack("H", "header_len")
        if total != len(data):
            raise FormatError(f"{what}: header_len {total} does not match {len(data)}")
        suite = c.unpack("H", "suite")
        if suite not in WRAPPED_KEY_LENS:
            raise FormatError(f"{what}: unknown cipher suite {suite}")
        device_id = c.text("device_id", "B", MAX_ID, allow_empty=False)
        device_fp, agency_fp = c.take(32, "device_key_fp"), c.take(32, "agency_key_fp")
        seq = c.unpack("Q", "segment_seq")
        recording_id = c.text("recording_id", "B", MAX_ID, _RECORDING_ID, allow_empty=False)
        index, offset = c.unpack("I", "index"), c.unpack("q", "utc_offset_us")
        clock_source = c.text("clock_source", "B", MAX_ID, _ASCII_PRINTABLE)
        wrapped_len = WRAPPED_KEY_LENS[suite]
        if c.unpack("H", "wrapped_key length") != wrapped_len:
            raise FormatError(f"{what}: wrapped_key must be {wrapped_len} bytes for suite {suite}")
        wrapped = c.take(wrapped_len, "wrapped_key")
        c.end()
        return cls(device_id, device_fp, agency_fp, seq, recording_id, index, offset, clock_source, wrapped, suite)


def _fixed(value: bytes, n: int, name: str) -> bytes:
    if len(value) != n:
        raise FormatError(f"{name} must be {n} bytes, not {len(value)}")
    return bytes(value)


def read_header(f: BinaryIO, what: str = "segment") -> tuple[SegmentHeader, bytes]:
    """Read and parse the header at the start of ``f``; returns it and its raw bytes."""
    start = f.read(12)
    if len(start) < 12:
        raise FormatError(f"{what}: too short for a segment header ({len(start)} bytes)")
    if start[:8] != SEGMENT_MAGIC:
        raise FormatError(f"{what}: not a bodycam segment (bad magic)")
    version, total = struct.unpack(">HH", start[8:12])
    _check_version(version, what)
    if not 12 < total <= MAX_HEADER:
        raise FormatError(f"{what}: header_len {total} out of range")
    rest = f.read(total - 12)
    if len(rest) < total - 12:
        raise FormatError(f"{what}: truncated header")
    raw = start + rest
    return SegmentHeader.parse(raw, f"{what} header"), raw


# --- chunk records --------------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkMeta:
    """The clear-text, authenticated (AAD) metadata of one chunk."""

    final: bool
    frame_count: int
    first_ts_us: int
    last_ts_us: int

    def encode(self) -> bytes:
        return RECORD_META.pack(FLAG_FINAL if self.final else 0, self.frame_count,
                                self.first_ts_us, self.last_ts_us)


@dataclass(frozen=True)
class Record:
    """One chunk record as it lies in the file."""

    index: int
    offset: int
    meta: ChunkMeta
    ciphertext: bytes
    digest: bytes          # SHA-256 of the record body (meta || ciphertext), as computed
    stored_digest: bytes   # the digest written after the body

    @property
    def body(self) -> bytes:
        return self.meta.encode() + self.ciphertext


def chunk_nonce(index: int) -> bytes:
    """The 96-bit AES-GCM nonce of chunk ``index``: 4 zero bytes || u64 index."""
    return struct.pack(">IQ", 0, index)


def chunk_aad(header_digest: bytes, index: int, meta: ChunkMeta) -> bytes:
    """AAD = header digest || u64 index || record meta (flags incl. final, counts, times)."""
    return header_digest + struct.pack(">Q", index) + meta.encode()


def seal_record(aead: AESGCM, header_digest: bytes, index: int, meta: ChunkMeta,
                plaintext: bytes) -> tuple[list[bytes], bytes]:
    """Encrypt one chunk; returns (the record's parts, to append with one writev, record digest).

    Parts, not one joined buffer: a GOP is megabytes and every copy shows in the CPU budget.
    """
    meta_bytes = meta.encode()
    ct = aead.encrypt(chunk_nonce(index), plaintext, chunk_aad(header_digest, index, meta))
    h = hashlib.sha256(meta_bytes)
    h.update(ct)
    digest = h.digest()
    return [struct.pack(">I", len(meta_bytes) + len(ct)), meta_bytes, ct, digest], digest


def open_record(aead: AESGCM, header_digest: bytes, record: Record, what: str = "segment") -> bytes:
    """Decrypt one chunk record; VerifyError if it does not authenticate."""
    try:
        return aead.decrypt(chunk_nonce(record.index), record.ciphertext,
                            chunk_aad(header_digest, record.index, record.meta))
    except InvalidTag:
        raise VerifyError(f"{what}: chunk {record.index} does not decrypt (wrong key or altered)") from None


def iter_records(f: BinaryIO, offset: int, what: str = "segment") -> Iterator[Record]:
    """Yield the records from ``offset`` to the end of ``f``.

    A record cut short at the end raises TornRecordError (recovery drops it); a
    record that is complete but whose stored digest is wrong is still yielded
    (the verifier reports it, recovery stops before it).
    """
    index = 0
    while True:
        f.seek(offset)
        head = f.read(4)
        if not head:
            return
        if len(head) < 4:
            raise TornRecordError(f"{what}: torn record length at byte {offset} (chunk {index})", offset, index)
        (n,) = struct.unpack(">I", head)
        if not RECORD_META.size + 16 <= n <= MAX_RECORD_BODY:
            raise TornRecordError(f"{what}: chunk {index} at byte {offset} has impossible length {n}",
                                  offset, index)
        body = f.read(n)
        stored = f.read(32)
        if len(body) < n or len(stored) < 32:
            raise TornRecordError(f"{what}: chunk {index} at byte {offset} is cut short (torn tail)",
                                  offset, index)
        flags, frames, first, last = RECORD_META.unpack_from(body)
        if flags & ~FLAG_FINAL:
            raise TornRecordError(f"{what}: chunk {index} at byte {offset} has unknown flags {flags:#x}",
                                  offset, index)
        meta = ChunkMeta(bool(flags & FLAG_FINAL), frames, first, last)
        yield Record(index, offset, meta, body[RECORD_META.size:], sha256(body), stored)
        offset += 4 + n + 32
        index += 1


# --- manifest -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Marker:
    timestamp_us: int
    label: str


@dataclass(frozen=True)
class Manifest:
    """The signed summary of one sealed segment."""

    device_id: str
    device_key_fp: bytes
    segment_seq: int
    recording_id: str
    index: int
    header_digest: bytes
    recovered: bool
    storage_full: bool
    frame_count: int
    first_ts_us: int
    last_ts_us: int
    utc_offset_us: int
    clock_source: str
    first_utc_us: int
    last_utc_us: int
    prev_digest: bytes
    chunk_digests: tuple[bytes, ...]
    markers: tuple[Marker, ...] = field(default=())
    clock: ClockBound = field(default_factory=ClockBound)  # the clock error bound (secure_store.clock_bound)
    signature: bytes = b""          # Ed25519, 64 bytes
    version: int = MANIFEST_VERSION  # 1: before the clock block (still read: old evidence verifies); 2: with it;
    #                                  3: version 2 signed by a hybrid key (both signatures)
    signature_mldsa65: bytes = b""  # version 3 only: ML-DSA-65, 3309 bytes, over the same message

    @property
    def signatures(self) -> Signatures:
        """The trailer as ``hybrid.VerifyKey.verify`` takes it."""
        return Signatures(self.signature, self.signature_mldsa65 or None)

    @property
    def hybrid(self) -> bool:
        return self.version >= MANIFEST_VERSION_HYBRID

    def signed_bytes(self) -> bytes:
        """Everything before the signatures: the exact message both algorithms sign."""
        if len(self.chunk_digests) > MAX_CHUNKS or len(self.markers) > MAX_MARKERS:
            raise FormatError("manifest: too many chunks or markers")
        flags = (MANIFEST_RECOVERED if self.recovered else 0) | (MANIFEST_STORAGE_FULL if self.storage_full else 0)
        parts = [
            _text(self.device_id, "device_id", "B", MAX_ID, allow_empty=False),
            _fixed(self.device_key_fp, 32, "device_key_fp"),
            struct.pack(">Q", self.segment_seq),
            _text(self.recording_id, "recording_id", "B", MAX_ID, _RECORDING_ID, allow_empty=False),
            struct.pack(">I", self.index),
            _fixed(self.header_digest, 32, "header_digest"),
            struct.pack(">BIQQq", flags, self.frame_count, self.first_ts_us, self.last_ts_us, self.utc_offset_us),
            _text(self.clock_source, "clock_source", "B", MAX_ID, _ASCII_PRINTABLE),
            struct.pack(">qq", self.first_utc_us, self.last_utc_us),
            _fixed(self.prev_digest, 32, "prev_digest"),
            struct.pack(">I", len(self.chunk_digests)),
            *(_fixed(d, 32, "chunk digest") for d in self.chunk_digests),
            struct.pack(">I", len(self.markers)),
            *(struct.pack(">Q", m.timestamp_us) + _text(m.label, "marker label", "H", MAX_LABEL)
              for m in self.markers),
        ]
        if self.version >= 2:
            parts.append(self.clock.encode())
        body = b"".join(parts)
        return MANIFEST_MAGIC + struct.pack(">HI", self.version, len(body)) + body

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_LEN:
            raise FormatError("manifest: not signed")
        if len(self.signature_mldsa65) != (MLDSA65_SIGNATURE_LEN if self.hybrid else 0):
            raise FormatError(f"manifest: version {self.version} " + (
                "needs an ML-DSA-65 signature" if self.hybrid else "has no room for an ML-DSA-65 signature"))
        return self.signed_bytes() + self.signature + self.signature_mldsa65

    @property
    def digest(self) -> bytes:
        """SHA-256 of the whole signed manifest: the chain link and the release confirmation."""
        return sha256(self.encode())

    @classmethod
    def parse(cls, data: bytes, what: str = "manifest") -> "Manifest":
        if len(data) > 14 + 32 * MAX_CHUNKS + MAX_MARKERS * (10 + MAX_LABEL) + 1024 + MLDSA65_SIGNATURE_LEN:
            raise FormatError(f"{what}: {len(data)} bytes is larger than any manifest can be")
        c = _Cursor(data, what)
        if c.take(8, "magic") != MANIFEST_MAGIC:
            raise FormatError(f"{what}: not a bodycam manifest (bad magic)")
        version = c.unpack("H", "version")
        _check_version(version, what, MANIFEST_VERSIONS)
        body_len = c.unpack("I", "body_len")
        trailer = SIGNATURE_LEN + (MLDSA65_SIGNATURE_LEN if version >= MANIFEST_VERSION_HYBRID else 0)
        if body_len != len(data) - 14 - trailer:
            raise FormatError(f"{what}: body_len {body_len} does not match the file size {len(data)}")
        device_id = c.text("device_id", "B", MAX_ID, allow_empty=False)
        device_fp, seq = c.take(32, "device_key_fp"), c.unpack("Q", "segment_seq")
        recording_id = c.text("recording_id", "B", MAX_ID, _RECORDING_ID, allow_empty=False)
        index, header_digest = c.unpack("I", "index"), c.take(32, "header_digest")
        flags = c.unpack("B", "flags")
        if flags & ~(MANIFEST_RECOVERED | MANIFEST_STORAGE_FULL):
            raise FormatError(f"{what}: unknown flags {flags:#x}")
        frames, first, last = c.unpack("I", "frame_count"), c.unpack("Q", "first_ts_us"), c.unpack("Q", "last_ts_us")
        offset = c.unpack("q", "utc_offset_us")
        clock_source = c.text("clock_source", "B", MAX_ID, _ASCII_PRINTABLE)
        first_utc, last_utc = c.unpack("q", "first_utc_us"), c.unpack("q", "last_utc_us")
        prev = c.take(32, "prev_digest")
        n_chunks = c.unpack("I", "chunk_count")
        if n_chunks > MAX_CHUNKS or n_chunks * 32 > len(data):
            raise FormatError(f"{what}: chunk_count {n_chunks} out of range")
        chunks = tuple(c.take(32, f"chunk digest {i}") for i in range(n_chunks))
        n_markers = c.unpack("I", "marker_count")
        if n_markers > MAX_MARKERS or n_markers * 10 > len(data):
            raise FormatError(f"{what}: marker_count {n_markers} out of range")
        markers = tuple(Marker(c.unpack("Q", "marker timestamp"), c.text("marker label", "H", MAX_LABEL))
                        for _ in range(n_markers))
        clock = ClockBound()  # version 1: no clock block, the error is unknown
        if version >= 2:
            try:
                clock = ClockBound.decode(c.take(CLOCK_BLOCK.size, "clock block"))
            except ValueError as exc:
                raise FormatError(f"{what}: clock block: {exc}") from None
        signature = c.take(SIGNATURE_LEN, "signature")
        pq_signature = c.take(MLDSA65_SIGNATURE_LEN, "ML-DSA-65 signature") if trailer > SIGNATURE_LEN else b""
        c.end()
        m = cls(device_id, device_fp, seq, recording_id, index, header_digest,
                bool(flags & MANIFEST_RECOVERED), bool(flags & MANIFEST_STORAGE_FULL), frames, first, last,
                offset, clock_source, first_utc, last_utc, prev, chunks, markers, clock, signature, version,
                pq_signature)
        if m.signed_bytes() != data[:-trailer]:
            raise FormatError(f"{what}: not in canonical encoding")
        return m
