"""Cuts the buffered and live frame stream into segments of GOP-sized chunks."""

from recorder.chunk import ChunkFormatError, decode_chunk, encode_chunk

__all__ = ["ChunkFormatError", "decode_chunk", "encode_chunk"]
