"""Shared pieces for the capture tests: a recording output."""

import pytest

from buffer.frame import Frame


class RecordingOutput:
    """An ``Output`` that keeps every frame it is given, in order."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.frames.append(Frame(frame, keyframe, timestamp))

    @property
    def data(self) -> bytes:
        return b"".join(f.data for f in self.frames)


@pytest.fixture
def recording_output() -> RecordingOutput:
    return RecordingOutput()


@pytest.fixture
def make_output():
    """Make further recording outputs (for tests that swap or compare outputs)."""
    return RecordingOutput
