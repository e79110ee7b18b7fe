"""The simulated camera: deterministic frames that carry a readable number."""

import numpy as np
import pytest

from hw_sim.camera import FrameNumberError, SimCamera, read_frame_number, strip_region


@pytest.mark.parametrize("size", [(320, 240), (1280, 720), (1920, 1080)])
def test_frame_number_reads_back_from_raw_image(size):
    camera = SimCamera(*size, start_number=0)
    for number in (0, 1, 2, 255, 256, 65_535, 1_234_567, (1 << 24) - 1):
        assert read_frame_number(camera.render(number)) == number


def test_iteration_yields_numbers_images_and_exact_timestamps():
    camera = SimCamera(320, 240, fps=30, start_number=300)
    frames = list(camera.frames(31))
    assert [n for n, _, _ in frames] == list(range(300, 331))
    assert [t for _, _, t in frames] == [round(n * 1_000_000 / 30) for n in range(300, 331)]
    # Timestamps spaced 1/fps without drift: 30 frames later is exactly one second later.
    assert frames[30][2] - frames[0][2] == 1_000_000
    assert all(read_frame_number(image) == n for n, image, _ in frames)


def test_scene_moves_and_is_deterministic():
    a, b = SimCamera(320, 240), SimCamera(320, 240)
    first, second = a.render(10), a.render(11)
    assert np.array_equal(first, b.render(10))
    x0, y0, x1, y1 = strip_region(320, 240)
    scene_first, scene_second = first[y1:], second[y1:]
    assert np.count_nonzero(scene_first != scene_second) > scene_first.size // 2


def test_each_image_is_a_fresh_array():
    camera = SimCamera(320, 240)
    (_, image, _), = camera.frames(1)
    image[:] = 0
    assert read_frame_number(camera.render(0)) == 0


def test_damaged_strip_is_reported_not_misread():
    image = SimCamera(320, 240).render(4242)
    image[:32, :16] = 255 - image[:32, :16]  # flip the first bit
    with pytest.raises(FrameNumberError, match="check failed"):
        read_frame_number(image)
    with pytest.raises(FrameNumberError):
        read_frame_number(np.zeros((240, 320, 3), np.uint8))
    with pytest.raises(FrameNumberError, match="too small"):
        read_frame_number(np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize(
    "kwargs",
    [dict(clock="slow"), dict(width=321), dict(width=64, height=48), dict(fps=0), dict(start_number=-1)],
)
def test_bad_settings_are_refused(kwargs):
    settings = dict(width=320, height=240) | kwargs
    with pytest.raises(ValueError):
        SimCamera(**settings)


def test_yuv420p_frames_match_the_bgr_scene_and_carry_the_number():
    import cv2

    bgr, i420 = SimCamera(640, 360), SimCamera(640, 360, pixel_format="yuv420p")
    assert i420.shape == (540, 640)
    for number in (0, 77, 1_000_001):
        image = i420.render(number)
        assert image.shape == i420.shape and image.flags.c_contiguous
        assert read_frame_number(image) == number
        # Same picture as the BGR camera, up to colour-conversion rounding, outside the strip.
        as_bgr = cv2.cvtColor(image, cv2.COLOR_YUV2BGR_I420)
        reference = bgr.render(number)
        y1 = strip_region(640, 360)[3]
        diff = np.abs(as_bgr[y1:].astype(int) - reference[y1:].astype(int))
        assert np.median(diff) <= 3


class FakeTime:
    """Stands in for the ``time`` module: ``sleep`` advances ``monotonic``, nothing waits."""

    def __init__(self) -> None:
        self.now = 500.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_real_clock_paces_frames_to_their_timestamps(monkeypatch):
    import hw_sim.camera as camera_module

    fake = FakeTime()
    monkeypatch.setattr(camera_module, "time", fake)
    camera = SimCamera(320, 240, fps=25, clock="real", start_number=50)
    delivered = []
    for number, _, timestamp in camera.frames(6):
        delivered.append((fake.now - 500.0, timestamp - camera.timestamp_us(50)))
        if number == 52:
            fake.now += 0.1  # a slow consumer: the camera catches up without sleeping
    for at, offset_us in delivered[:3]:
        assert at == pytest.approx(offset_us / 1e6)
    # Frames 53 and 54 were due at 0.12 s and 0.16 s: they come late (at once), never early,
    # and frame 55 is back on its own time without drift.
    assert [at for at, _ in delivered[3:]] == pytest.approx([0.18, 0.18, 0.2])
    assert [t for _, t in delivered] == [0, 40_000, 80_000, 120_000, 160_000, 200_000]
    fast = FakeTime()
    monkeypatch.setattr(camera_module, "time", fast)
    list(SimCamera(320, 240, clock="fast").frames(5))
    assert fast.sleeps == []
