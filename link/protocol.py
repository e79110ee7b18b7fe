"""Wire format of the dock link: frames on the serial line, messages inside them.

The full specification is docs/PROTOCOL.md; this module is its codec, with no I/O.

A frame (all integers big-endian)::

    magic  2  b"\\xb0\\xdc"          where a receiver hunts for the next frame
    type   1  FrameType
    flags  1  bit 0: a 16-byte HMAC tag follows the payload; bit 1: more fragments follow
    seq    4  DATA: sequence number; ACK: next sequence number expected
    length 4  payload length, at most MAX_PAYLOAD
    hcrc   4  CRC-32 of the 12 bytes above
    payload, [tag], pcrc (CRC-32 of payload + tag)

The header CRC lets a receiver trust ``length`` before it has the payload, so after a
bit error or a dropped byte it skips at most to the next magic and loses one frame.
A tagged frame whose payload CRC shows exactly one flipped bit is repaired (the CRC-32
syndrome names the bit); its HMAC tag, checked next, proves the repair right.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import struct
import zlib
from typing import Any, NamedTuple

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAGIC = b"\xb0\xdc"
MAX_PAYLOAD = 65536            # the largest payload any frame may carry
DEFAULT_PAYLOAD = 65536        # what endpoints offer unless configured otherwise
TAG_SIZE = 16                  # HMAC-SHA256 truncated to 128 bits
FLAG_TAG = 0x01
FLAG_MORE = 0x02                # DATA: more fragments of this message follow
FRAME_OVERHEAD = 16 + TAG_SIZE + 4
REPAIR_LIMIT = 8192 + TAG_SIZE  # payload + tag bytes within which a single bit error is repaired

_HEAD = struct.Struct(">2sBBII")   # magic, type, flags, seq, length
_HCRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _HCRC.size   # 16
TRAILER_SIZE = 4


class ProtocolError(Exception):
    """A message that does not follow docs/PROTOCOL.md."""


class FrameType(enum.IntEnum):
    HELLO = 0x01        # dock → device: versions, nonce, ephemeral key, dock key
    HELLO_REPLY = 0x02  # device → dock: chosen version, identity, nonce, ephemeral, signature
    AUTH = 0x03         # dock → device: dock's signature over the transcript
    AUTH_OK = 0x04      # device → dock: tagged with the session key (key confirmation)
    REJECT = 0x05       # either way, before the session: why the handshake failed
    DATA = 0x10         # one message of the reliable stream
    ACK = 0x11          # cumulative + selective acknowledgement, receive window
    CLOSE = 0x12        # end of the session (payload: why, if it failed)
    PART = 0x13         # a piece of DATA frame ``seq``, resent smaller (offset, length, bytes)


class LinkFrame(NamedTuple):
    type: int
    flags: int
    seq: int
    payload: bytes
    tag: bytes
    head: bytes  # the 12 header bytes the tag covers

    def tag_ok(self, key: bytes) -> bool:
        """True if this frame carries a valid tag under ``key``."""
        if not self.flags & FLAG_TAG:
            return False
        return hmac.compare_digest(self.tag, frame_tag(key, self.head, self.payload))


def frame_tag(key: bytes, head: bytes, payload: bytes) -> bytes:
    return hmac.digest(key, head + payload, hashlib.sha256)[:TAG_SIZE]


def encode_frame(ftype: int, seq: int, payload: bytes = b"", key: bytes | None = None, more: bool = False) -> bytes:
    """One frame, tagged with HMAC-SHA256 under ``key`` if given."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte maximum")
    flags = (FLAG_TAG if key else 0) | (FLAG_MORE if more else 0)
    head = _HEAD.pack(MAGIC, ftype, flags, seq & 0xFFFFFFFF, len(payload))
    tag = frame_tag(key, head, payload) if key else b""
    pcrc = zlib.crc32(tag, zlib.crc32(payload))
    return b"".join((head, _HCRC.pack(zlib.crc32(head)), payload, tag, _HCRC.pack(pcrc)))


_syndromes: dict[int, int] = {}


def _bit_from_end(syndrome: int) -> int | None:
    """How many bits before the end of a CRC-32'd message a single flipped bit lies, or None.

    For the reflected CRC-32 a single bit error d bits before the end changes the CRC by
    x^d mod P, whatever the message: one table, built on first use, serves every frame.
    """
    if not _syndromes:
        table, s = {}, 0xEDB88320            # the change for the very last bit
        for d in range(8 * REPAIR_LIMIT):
            table[s] = d
            s = (s >> 1) ^ (0xEDB88320 if s & 1 else 0)
        _syndromes.update(table)
    return _syndromes.get(syndrome)


class FrameDecoder:
    """Turns a damaged byte stream back into whole, CRC-checked frames.

    Feed it whatever the port returned; it keeps partial frames, skips garbage, and
    after a bad header or payload resumes the hunt one byte after the bad magic.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self._need = 0   # bytes the frame in progress still needs before it is worth a look
        self.garbage_bytes = 0
        self.bad_headers = 0
        self.bad_payloads = 0
        self.repaired = 0    # tagged frames with one bit error, put right (the tag then checks them)

    def feed(self, data: bytes) -> list[LinkFrame]:
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return []
        frames: list[LinkFrame] = []
        pos, need = 0, 0
        end = len(buf)
        with memoryview(buf) as view:
            while True:
                start = buf.find(MAGIC, pos)
                if start < 0:
                    keep = end - 1 if end > pos and buf[end - 1] == MAGIC[0] else end
                    self.garbage_bytes += keep - pos
                    pos = keep
                    break
                self.garbage_bytes += start - pos
                pos = start
                if end - start < HEADER_SIZE:
                    need = HEADER_SIZE
                    break
                _, ftype, flags, seq, length = _HEAD.unpack_from(buf, start)
                (hcrc,) = _HCRC.unpack_from(buf, start + _HEAD.size)
                head = bytes(view[start:start + _HEAD.size])
                if zlib.crc32(head) != hcrc or length > self.max_payload or flags & ~(FLAG_TAG | FLAG_MORE):
                    self.bad_headers += 1
                    pos = start + 1
                    continue
                body_start = start + HEADER_SIZE
                body_end = body_start + length + (TAG_SIZE if flags & FLAG_TAG else 0)
                if end < body_end + TRAILER_SIZE:
                    need = body_end + TRAILER_SIZE - start
                    break
                (pcrc,) = _HCRC.unpack_from(buf, body_end)
                crc = zlib.crc32(view[body_start:body_end])
                if crc != pcrc:
                    if not (flags & FLAG_TAG and self._repair(buf, body_start, body_end, crc ^ pcrc)):
                        self.bad_payloads += 1
                        pos = start + 1
                        continue
                    self.repaired += 1
                frames.append(LinkFrame(ftype, flags, seq, bytes(view[body_start:body_start + length]),
                                        bytes(view[body_start + length:body_end]), head))
                pos = body_end + TRAILER_SIZE
        del buf[:pos]
        self._need = need
        return frames

    @staticmethod
    def _repair(buf: bytearray, start: int, end: int, syndrome: int) -> bool:
        """Flip the one bit the syndrome names; False if it names none (more damage, a drop)."""
        if syndrome & (syndrome - 1) == 0:   # one bit of the stored CRC itself flipped
            return True
        d = _bit_from_end(syndrome)
        if d is None or d >= 8 * (end - start):
            return False
        bit = 8 * (end - start) - 1 - d      # CRC-32 takes each byte's bits low bit first
        buf[start + bit // 8] ^= 1 << (bit % 8)
        return True


# --- messages: what the reliable stream carries ------------------------------------------

class Kind(enum.IntEnum):
    REQUEST = 1    # dock → device (or device → dock for future use): a command
    RESPONSE = 2   # the final answer to a request
    ERROR = 3      # a request failed: meta {"error": one line, "code": short name}
    CHUNK = 4      # part of a fetched range: meta {"offset": n}, blob = the bytes


_MSG = struct.Struct(">BII")  # kind, request id, meta length
MESSAGE_OVERHEAD = _MSG.size


class Message(NamedTuple):
    kind: int
    request_id: int
    meta: dict[str, Any]
    blob: bytes = b""


def encode_message(kind: int, request_id: int, meta: dict[str, Any] | None = None, blob: bytes = b"") -> bytes:
    meta_bytes = json.dumps(meta or {}, separators=(",", ":"), sort_keys=True).encode()
    return _MSG.pack(kind, request_id, len(meta_bytes)) + meta_bytes + blob


def decode_message(data: bytes) -> Message:
    """Parse a message; anything malformed is a ProtocolError, never another exception."""
    if len(data) < _MSG.size:
        raise ProtocolError("message shorter than its header")
    kind, request_id, meta_len = _MSG.unpack_from(data)
    if kind not in Kind.__members__.values():
        raise ProtocolError(f"unknown message kind {kind}")
    if _MSG.size + meta_len > len(data):
        raise ProtocolError("message metadata runs past its end")
    try:
        meta = json.loads(data[_MSG.size:_MSG.size + meta_len])
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("message metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise ProtocolError("message metadata is not a JSON object")
    return Message(Kind(kind), request_id, meta, bytes(data[_MSG.size + meta_len:]))


def chunk_header_size(offset: int, request_id: int = 0) -> int:
    """Bytes a CHUNK message spends before its data (to size chunks to fit a frame)."""
    return len(encode_message(Kind.CHUNK, request_id, {"offset": offset}))
