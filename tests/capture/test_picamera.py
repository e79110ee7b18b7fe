"""The Pi camera backend, against a mocked ``picamera2`` that mirrors its real API.

picamera2 cannot run without libcamera and a camera, so only it is mocked: the
H.264 packets pushed through the adapter are real, and so is the buffer.
"""

import datetime as dt
import subprocess
import sys

import numpy as np
import pytest

from buffer import PreEventBuffer
from hw_sim.camera import SimCamera, read_frame_number
from hw_sim.decode import decode_frame_numbers
from recorder.encoders import PyAVEncoder, run_camera
from recorder.overlay import overlay_region
from recorder.picamera import PiCameraError, PiCameraSource

WHEN = dt.datetime(2026, 11, 24, 17, 30, tzinfo=dt.timezone.utc)


class Picamera2Output:
    """Stand-in for ``picamera2.outputs.Output`` (same constructor and hooks, picamera2 0.3.x)."""

    def __init__(self, pts=None):
        self.recording = False
        self.ptsoutput = pts
        self.needs_pacing = False
        self.needs_add_stream = False

    def start(self):
        self.recording = True

    def stop(self):
        self.recording = False

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        pass

    def _add_stream(self, encoder_stream, *args, **kwargs):
        pass


@pytest.fixture
def picamera2(mocker):
    package = mocker.MagicMock(name="picamera2")
    encoders = mocker.MagicMock(name="picamera2.encoders")
    outputs = mocker.MagicMock(name="picamera2.outputs")
    outputs.Output = Picamera2Output
    package.encoders, package.outputs = encoders, outputs
    mocker.patch.dict(
        sys.modules, {"picamera2": package, "picamera2.encoders": encoders, "picamera2.outputs": outputs}
    )
    return package


def encoded_packets(frames, fps=5):
    """Real H.264 packets from the sim camera, as picamera2's encoder would deliver them."""
    packets = []

    class Collect:
        def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
            packets.append((frame, keyframe, timestamp))

    with PyAVEncoder(Collect(), 320, 240, fps, 300_000) as encoder:
        run_camera(SimCamera(320, 240, fps).frames(frames), encoder)
    return packets


@pytest.mark.parametrize("pixel_format, sim_format", [("YUV420", "yuv420p"), ("RGB888", "bgr24")])
def test_configures_camera_encoder_and_overlay_as_picamera2_expects(picamera2, pixel_format, sim_format):
    buffer = PreEventBuffer(duration_s=2.0)
    PiCameraSource(
        buffer, 1920, 1080, 30, 8_000_000, device_id="BWC-0042", utc_clock=lambda: WHEN, pixel_format=pixel_format
    )
    picam2 = picamera2.Picamera2.return_value
    picamera2.Picamera2.assert_called_once_with()
    picam2.create_video_configuration.assert_called_once_with(
        main={"size": (1920, 1080), "format": pixel_format}, controls={"FrameRate": 30}
    )
    picam2.configure.assert_called_once_with(picam2.create_video_configuration.return_value)
    picamera2.encoders.H264Encoder.assert_called_once_with(bitrate=8_000_000, repeat=True, iperiod=30)
    picam2.start_recording.assert_not_called()

    # The pre_callback burns the overlay into the mapped main-stream buffer, in its layout.
    image = SimCamera(1920, 1080, pixel_format=sim_format).render(31)
    before = image.copy()
    picamera2.MappedArray.return_value.__enter__.return_value.array = image
    request = object()
    picam2.pre_callback(request)
    picamera2.MappedArray.assert_called_once_with(request, "main")
    y0 = overlay_region(1920, 1080)[1]
    assert not np.array_equal(image[y0:1080], before[y0:1080])
    assert np.array_equal(image[:y0], before[:y0])
    assert read_frame_number(image) == 31


def test_unknown_pixel_format_is_refused(picamera2):
    with pytest.raises(PiCameraError, match="pixel_format"):
        PiCameraSource(PreEventBuffer(duration_s=1.0), pixel_format="NV12")
    picamera2.Picamera2.assert_not_called()


def test_records_into_our_buffer_through_a_picamera2_output(picamera2, recording_output):
    buffer = PreEventBuffer(duration_s=2.0)
    source = PiCameraSource(buffer, 320, 240, 5, 300_000, device_id="BWC-0042")
    picam2 = picamera2.Picamera2.return_value
    source.start()
    encoder = picamera2.encoders.H264Encoder.return_value
    picam2.start_recording.assert_called_once()
    (called_encoder, output), kwargs = picam2.start_recording.call_args
    assert called_encoder is encoder and kwargs == {}
    assert isinstance(output, Picamera2Output)  # picamera2's Encoder.output setter insists on this
    with pytest.raises(PiCameraError, match="already recording"):
        source.start()

    # picamera2's Encoder.outputframe calls each output with five positional arguments.
    for frame, keyframe, timestamp in encoded_packets(20):
        output.outputframe(frame, keyframe, timestamp, None, False)
    output.outputframe(None, True, 3_900_000, b"\x21\x10\x05", True)  # sound before a press: not held by default
    buffer.open_output(recording_output)
    assert decode_frame_numbers(recording_output.data) == list(range(5, 20))  # ≥ 2 s, from a keyframe

    source.stop()
    source.stop()
    picam2.stop_recording.assert_called_once_with()
    source.close()
    picam2.close.assert_called_once_with()


def test_without_picamera2_a_clear_error(mocker):
    mocker.patch.dict(sys.modules, {"picamera2": None})
    with pytest.raises(PiCameraError, match="needs picamera2"):
        PiCameraSource(PreEventBuffer(duration_s=1.0))


def test_importing_the_backend_does_not_import_picamera2():
    code = "import sys, recorder.picamera, recorder.encoders; assert 'picamera2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sound_comes_from_picamera2_encoder_audio_and_reaches_the_buffer(picamera2):
    """``audio_bitrate`` turns on picamera2's encoder audio (AAC-LC 48 kHz mono through PyAV);
    its packets arrive as ``outputframe(None, True, ts, packet, audio=True)`` and are carried."""
    import av

    from buffer import Frame
    from hw_sim.microphone import SimMicrophone
    from recorder.audio import AacEncoder, AudioCapture

    buffer = PreEventBuffer(duration_s=2.0, hold_audio=True)
    source = PiCameraSource(buffer, 320, 240, 5, 300_000, audio_bitrate=48_000, audio_device="hw:1,0")
    encoder = picamera2.encoders.H264Encoder.return_value
    assert encoder.audio is True
    assert encoder.audio_input == {"file": "hw:1,0", "format": "alsa"}
    assert encoder.audio_output == {"codec_name": "aac", "rate": 48_000, "layout": "mono", "bit_rate": 48_000}
    source.start()
    (_, output), _ = picamera2.Picamera2.return_value.start_recording.call_args

    aac = []

    class Keep:
        def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
            aac.append((frame, timestamp))

    sound = AudioCapture(SimMicrophone(), AacEncoder(Keep(), 48_000))
    sound.until(4_000_000)
    sound.close()
    pending = list(aac)
    for frame, keyframe, timestamp in encoded_packets(20):  # picamera2's audio thread interleaves
        while pending and pending[0][1] <= timestamp:
            data, ts = pending.pop(0)
            output.outputframe(None, True, ts, av.Packet(data), True)  # a PyAV packet, as picamera2 sends
        output.outputframe(frame, keyframe, timestamp, None, False)

    got = []

    class Sink:
        def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
            got.append(Frame(frame, keyframe, timestamp, audio))

    buffer.open_output(Sink())
    video = [f for f in got if not f.audio]
    heard = [f for f in got if f.audio]
    assert decode_frame_numbers(f.data for f in video) == list(range(5, 20))
    assert heard and all(not f.keyframe for f in heard)
    first = next(i for i, (_, ts) in enumerate(aac) if ts == heard[0].timestamp_us)
    assert [(f.data, f.timestamp_us) for f in heard] == aac[first:first + len(heard)]  # bytes and times kept
    output.outputframe(None, True, 0, av.Packet(b"\x21\x10"), True)  # time going back: dropped, never raised
    assert [f for f in got if f.audio] == heard  # into picamera2's audio thread, which would die of it
    source.close()
