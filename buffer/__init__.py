"""RAM-only pre-event buffer of encoded video."""

from buffer.frame import Frame, Output
from buffer.prebuffer import PreEventBuffer, PreEventBufferError, TimestampError

__all__ = ["Frame", "Output", "PreEventBuffer", "PreEventBufferError", "TimestampError"]
