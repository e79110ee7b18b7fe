"""The chunk-with-sound test vector in docs/FORMAT.md: the real codecs must produce exactly those bytes.

Run this file as a script to print the vector block for the spec:
``.venv/bin/python tests/recorder/test_chunk_vectors.py``.
"""

from __future__ import annotations

import hashlib
import re
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from buffer.frame import Frame  # noqa: E402
from recorder.chunk import decode_chunk, encode_chunk, video_span  # noqa: E402
from secure_store.format import ChunkMeta, seal_record  # noqa: E402

SPEC = ROOT / "docs" / "FORMAT.md"
INPUTS = {
    "data_key": bytes(range(0x40, 0x60)).hex(),
    "header_digest": hashlib.sha256(b"bodycam test vector: audio chunk header").hexdigest(),
    "chunk_index": "0",
}
# In arrival order: AAC packets leave their encoder a little after the video frame they overlap.
FRAMES = [
    Frame(bytes.fromhex("00000001") + b"\x67SPS\x68PPS\x65IDR-0", True, 1_000_000),
    Frame(b"\x21\x10AAC-47", False, 981_333, True),  # samples 48 128 .. (47 × 1024 at 48 kHz)
    Frame(b"\x21\x10AAC-48", False, 1_002_667, True),
    Frame(bytes.fromhex("00000001") + b"\x41P-1", False, 1_033_333),
    Frame(b"\x21\x10AAC-49", False, 1_024_000, True),
]


def vectors(inputs: dict[str, str]) -> dict[str, str]:
    plaintext = encode_chunk(FRAMES)
    meta = ChunkMeta(False, *video_span(FRAMES))
    parts, _ = seal_record(AESGCM(bytes.fromhex(inputs["data_key"])), bytes.fromhex(inputs["header_digest"]),
                           int(inputs["chunk_index"]), meta, plaintext)
    return {"audio_chunk_plaintext": plaintext.hex(), "audio_chunk_meta": meta.encode().hex(),
            "audio_chunk_record": b"".join(parts).hex()}


def spec_vectors() -> dict[str, str]:
    block = re.search(r"<!-- audio-vectors:begin -->\n```text\n(.*?)```\n<!-- audio-vectors:end -->",
                      SPEC.read_text(), re.S)
    assert block, "docs/FORMAT.md has no audio chunk vector block"
    values = {}
    for line in block.group(1).splitlines():
        name, _, value = line.partition(" = ")
        values[name.strip()] = value.strip()
    return values


def test_codecs_reproduce_the_audio_chunk_vector() -> None:
    spec = spec_vectors()
    for name, value in vectors({k: spec[k] for k in INPUTS}).items():
        assert spec[name] == value, f"FORMAT.md vector {name} differs from what the codecs write"
    assert decode_chunk(bytes.fromhex(spec["audio_chunk_plaintext"])) == FRAMES


def test_audio_chunk_vector_follows_the_written_rules() -> None:
    """Parse the plaintext and open the record from the spec's tables and formulas alone."""
    spec = spec_vectors()
    pt = bytes.fromhex(spec["audio_chunk_plaintext"])
    assert pt[:2] == b"\x02\x01"  # layout 2, AAC-LC 48 kHz mono
    entries, pos = [], 2
    while pos < len(pt):
        flags, ts, length = struct.unpack_from(">BQI", pt, pos)
        entries.append((flags, ts, pt[pos + 13:pos + 13 + length]))
        pos += 13 + length
    assert [(f, ts) for f, ts, _ in entries] == [(1, 1_000_000), (2, 981_333), (2, 1_002_667), (0, 1_033_333),
                                                 (2, 1_024_000)]
    video = [ts for f, ts, _ in entries if not f & 2]
    meta = bytes.fromhex(spec["audio_chunk_meta"])
    assert meta == struct.pack(">BIQQ", 0, len(video), video[0], video[-1])  # the meta counts video only
    record = bytes.fromhex(spec["audio_chunk_record"])
    body, digest = record[4:-32], record[-32:]
    assert struct.unpack(">I", record[:4])[0] == len(body) and hashlib.sha256(body).digest() == digest
    assert body[:21] == meta
    index = int(spec["chunk_index"])
    nonce = bytes(4) + struct.pack(">Q", index)
    aad = bytes.fromhex(spec["header_digest"]) + struct.pack(">Q", index) + meta
    assert AESGCM(bytes.fromhex(spec["data_key"])).decrypt(nonce, body[21:], aad) == pt


if __name__ == "__main__":
    for name, value in {**INPUTS, **vectors(INPUTS)}.items():
        print(f"{name} = {value}")
