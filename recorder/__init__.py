"""Cuts the buffered and live frame stream into segments of GOP-sized chunks."""

from recorder.chunk import ChunkFormatError, decode_chunk, encode_chunk
from recorder.segmenter import (
    ChunkSink,
    MemoryChunkSink,
    Segmenter,
    SegmenterClosed,
    SegmenterError,
    SegmenterTimestampError,
)

__all__ = [
    "ChunkFormatError",
    "ChunkSink",
    "MemoryChunkSink",
    "Segmenter",
    "SegmenterClosed",
    "SegmenterError",
    "SegmenterTimestampError",
    "decode_chunk",
    "encode_chunk",
]
