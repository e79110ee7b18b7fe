"""The overlay: UTC time and device ID burned into the picture, clear of the number strip."""

import datetime as dt

import numpy as np
import pytest

from hw_sim.camera import SimCamera, read_frame_number, strip_region
from hw_sim.decode import decode_images
from recorder.encoders import PyAVEncoder, run_camera
from recorder.overlay import OverlayError, burn_overlay, overlay_region, overlay_text

UTC = dt.timezone.utc
WHEN = dt.datetime(2026, 11, 24, 17, 5, 9, 250_000, tzinfo=UTC)


def test_text_is_iso_utc_and_device_id():
    assert overlay_text("BWC-0042", WHEN) == "2026-11-24T17:05:09.250Z  BWC-0042"
    paris = dt.timezone(dt.timedelta(hours=1))
    assert overlay_text("X", WHEN.astimezone(paris)).startswith("2026-11-24T17:05:09.250Z")
    with pytest.raises(OverlayError, match="timezone-aware"):
        overlay_text("X", dt.datetime(2026, 11, 24, 17, 5, 9))


@pytest.mark.parametrize("size", [(320, 240), (1280, 720), (1920, 1080)])
def test_overlay_draws_only_in_its_band_and_never_on_the_strip(size):
    camera = SimCamera(*size)
    image = camera.render(777)
    before = image.copy()
    assert burn_overlay(image, "BWC-0042-A-LONG-DEVICE-IDENTIFIER-THAT-RUNS-OFF-THE-EDGE", WHEN) is image
    changed_rows = np.nonzero((image != before).any(axis=(1, 2)))[0]
    x0, y0, x1, y1 = overlay_region(*size)
    assert changed_rows.size > 0
    assert changed_rows.min() >= y0 and changed_rows.max() < y1
    sx0, sy0, sx1, sy1 = strip_region(*size)
    assert sy1 <= y0
    assert np.array_equal(image[sy0:sy1, sx0:sx1], before[sy0:sy1, sx0:sx1])
    assert read_frame_number(image) == 777


def test_different_times_and_devices_give_different_pixels():
    camera = SimCamera(640, 360)
    a = burn_overlay(camera.render(1), "BWC-1", WHEN)
    b = burn_overlay(camera.render(1), "BWC-1", WHEN + dt.timedelta(seconds=1))
    c = burn_overlay(camera.render(1), "BWC-2", WHEN)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    # White text on black: both extremes are present in the band.
    band = a[overlay_region(640, 360)[1] :]
    assert (band == 255).all(axis=2).sum() > 50 and (band == 0).all(axis=2).sum() > 500


@pytest.mark.parametrize("shape", [(240, 320), (240, 320, 4)])
def test_grey_and_four_channel_images(shape):
    image = np.full(shape, 128, np.uint8)
    burn_overlay(image, "BWC-1", WHEN)
    assert (image == 255).any() and (image == 0).any()
    assert (image[: overlay_region(320, 240)[1]] == 128).all()


def test_strided_view_like_a_mapped_buffer_is_drawn_in_place():
    padded = np.full((240, 336, 3), 128, np.uint8)  # rows padded to a larger stride, as libcamera does
    view = padded[:, :320]
    burn_overlay(view, "BWC-1", WHEN)
    assert (padded[:, :320] != 128).any()
    assert (padded[:, 320:] == 128).all()


def test_i420_text_in_luma_box_neutral_in_chroma_strip_untouched():
    camera = SimCamera(640, 360, pixel_format="yuv420p")
    image = camera.render(4321)
    before = image.copy()
    assert burn_overlay(image, "BWC-0042", WHEN, pixel_format="yuv420p") is image
    x0, y0, x1, y1 = overlay_region(640, 360)
    luma, old_luma = image[:360], before[:360]
    changed_rows = np.nonzero((luma != old_luma).any(axis=1))[0]
    assert changed_rows.min() >= y0 and changed_rows.max() < y1
    assert (luma[y0:] == 255).sum() > 50 and (luma[y0:] == 0).sum() > 500
    u = image[360:450].reshape(180, 320)
    assert (u[y0 // 2 :, :50] == 128).all()
    assert np.array_equal(image[360:450].reshape(180, 320)[: y0 // 2], before[360:450].reshape(180, 320)[: y0 // 2])
    assert read_frame_number(image) == 4321
    with pytest.raises(OverlayError, match="I420"):
        burn_overlay(np.zeros((241, 320), np.uint8), "X", WHEN, pixel_format="yuv420p")
    with pytest.raises(OverlayError, match="pixel format"):
        burn_overlay(image, "X", WHEN, pixel_format="nv12")


def test_bad_images_are_refused():
    with pytest.raises(OverlayError):
        burn_overlay(np.zeros((240, 320, 3), np.float32), "X", WHEN)
    with pytest.raises(OverlayError):
        burn_overlay(np.zeros((240, 320, 2), np.uint8), "X", WHEN)


@pytest.mark.parametrize("pixel_format", ["bgr24", "yuv420p"])
def test_overlay_survives_encoding_and_the_number_still_reads(pixel_format, recording_output):
    camera = SimCamera(640, 360, start_number=90, pixel_format=pixel_format)
    with PyAVEncoder(recording_output, 640, 360, 30, 1_000_000, input_format=pixel_format) as encoder:
        run_camera(camera.frames(3), encoder, device_id="BWC-0042", utc_clock=lambda: WHEN)
    images = list(decode_images(recording_output.data))
    assert [read_frame_number(i) for i in images] == [90, 91, 92]
    y0 = overlay_region(640, 360)[1]
    band = images[0][y0:, :200]
    assert (band < 40).mean() > 0.5 and (band > 200).sum() > 50  # black box with white text
