"""RAM-only pre-event buffer of encoded video."""

from buffer.frame import Frame, Output

__all__ = ["Frame", "Output"]
