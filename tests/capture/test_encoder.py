"""PyAV libx264 encoder: real H.264, decoded again and read back from the pixels."""

import pytest

from hw_sim.camera import SimCamera
from hw_sim.decode import decode_frame_numbers, nal_unit_types
from recorder.encoders import CaptureError, CaptureThread, EncoderError, PyAVEncoder, run_camera

SPS, PPS, IDR, NON_IDR = 7, 8, 5, 1


def encode(output, camera, frames, bitrate=2_000_000):
    size = (camera.width, camera.height)
    with PyAVEncoder(output, *size, camera.fps, bitrate, input_format=camera.pixel_format) as encoder:
        assert run_camera(camera.frames(frames), encoder) == frames


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080)])
@pytest.mark.parametrize("pixel_format", ["bgr24", "yuv420p"])
def test_frame_numbers_survive_encode_and_decode(size, pixel_format, recording_output):
    camera = SimCamera(*size, start_number=5000, pixel_format=pixel_format)
    encode(recording_output, camera, 8, bitrate=10_000_000)
    assert decode_frame_numbers(f.data for f in recording_output.frames) == list(range(5000, 5008))
    assert [f.timestamp_us for f in recording_output.frames] == [camera.timestamp_us(n) for n in range(5000, 5008)]


def test_keyframe_every_second_with_sps_pps_and_every_gop_decodes_alone(recording_output):
    camera = SimCamera(320, 240, fps=10)
    encode(recording_output, camera, 35, bitrate=300_000)
    frames = recording_output.frames
    assert len(frames) == 35
    assert [i for i, f in enumerate(frames) if f.keyframe] == [0, 10, 20, 30]
    for frame in frames:
        types = nal_unit_types(frame.data)
        if frame.keyframe:
            assert {SPS, PPS, IDR} <= set(types), types
            assert types.index(SPS) < types.index(PPS) < types.index(IDR)
        else:
            assert set(types) <= {NON_IDR, 6} and NON_IDR in types, types
    timestamps = [f.timestamp_us for f in frames]
    assert timestamps == sorted(set(timestamps))
    for start in (0, 10, 20, 30):
        gop = frames[start : start + 10]
        assert decode_frame_numbers(b"".join(f.data for f in gop)) == list(range(start, start + len(gop)))


def test_output_can_be_swapped_between_frames(make_output):
    first, second = make_output(), make_output()
    camera = SimCamera(320, 240, fps=5)
    with PyAVEncoder(first, 320, 240, 5, 300_000) as encoder:
        for number, image, timestamp in camera.frames(10):
            if number == 5:
                encoder.output = second
            encoder.encode(image, timestamp)
    assert decode_frame_numbers(first.data) == [0, 1, 2, 3, 4]
    assert decode_frame_numbers(second.data) == [5, 6, 7, 8, 9]


def test_misuse_is_refused_with_a_clear_error(recording_output):
    camera = SimCamera(320, 240)
    encoder = PyAVEncoder(recording_output, 320, 240, 30, 300_000)
    image = camera.render(0)
    encoder.encode(image, 1000)
    with pytest.raises(EncoderError, match="does not follow"):
        encoder.encode(camera.render(1), 1000)
    with pytest.raises(EncoderError, match="expects 320x240 bgr24"):
        encoder.encode(SimCamera(640, 360).render(1), 2000)
    encoder.encode(camera.render(1), 2000)
    encoder.close()
    encoder.close()  # idempotent
    with pytest.raises(EncoderError, match="closed"):
        encoder.encode(camera.render(2), 3000)
    assert decode_frame_numbers(recording_output.data) == [0, 1]
    with pytest.raises(EncoderError, match="multiple of 4"):
        PyAVEncoder(recording_output, 322, 240)
    with pytest.raises(EncoderError, match="input_format"):
        PyAVEncoder(recording_output, 320, 240, input_format="nv12")
    i420 = PyAVEncoder(recording_output, 320, 240, input_format="yuv420p")
    with pytest.raises(EncoderError, match="expects 320x240 yuv420p"):
        i420.encode(camera.render(0), 0)


def test_capture_thread_runs_bounded_and_flushes(recording_output):
    camera = SimCamera(320, 240, start_number=40)
    encoder = PyAVEncoder(recording_output, 320, 240, 30, 300_000)
    capture = CaptureThread(camera, encoder, frames=45).start()
    assert capture.join(timeout=60)
    capture.stop()
    assert capture.frames_encoded == 45
    assert decode_frame_numbers(recording_output.data) == list(range(40, 85))


def test_capture_thread_surfaces_a_failing_output():
    class FailingOutput:
        def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
            raise OSError("sink gone")

    encoder = PyAVEncoder(FailingOutput(), 320, 240, 30, 300_000)
    capture = CaptureThread(SimCamera(320, 240), encoder).start()
    assert capture.join(timeout=60)  # the loop ends on its own
    with pytest.raises(CaptureError, match="sink gone"):
        capture.stop()
