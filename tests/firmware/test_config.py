"""Config: defaults for everything, one-line errors naming the key and what is allowed."""

import pytest

from firmware import config
from firmware.config import ConfigError


def test_no_file_gives_defaults():
    cfg = config.load(None)
    assert cfg.video.pre_event_s == 30.0
    assert cfg.video.size == (1280, 720)
    assert cfg.controls.record_start == "double"
    assert cfg.controls.double_press_s == 1.0 and cfg.controls.stop_hold_s == 3.0
    assert cfg.signals.reminder_s == 120.0
    assert cfg.pins.record_button == 17


def test_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        '[video]\npre_event_s = 45\nresolution = "1920x1080"\n'
        '[controls]\nrecord_start = "single"\nstealth_allowed = false\n'
        "[pins]\nlightbar = false\n"
        '[paths]\nserial_port = "/dev/ttyGS1"\n'
    )
    cfg = config.load(path)
    assert cfg.video.pre_event_s == 45.0 and cfg.video.size == (1920, 1080)
    assert cfg.video.fps == 30  # untouched default
    assert cfg.controls.record_start == "single" and cfg.controls.stealth_allowed is False
    assert cfg.pins.lightbar is None and cfg.pins.holster == 22
    assert cfg.paths.serial_port == "/dev/ttyGS1"


@pytest.mark.parametrize(
    "text, words",
    [
        ("[video]\npre_event_s = 121", ["video.pre_event_s", "0 to 120"]),
        ("[video]\npre_event_s = -1", ["video.pre_event_s", "0 to 120"]),
        ("[video]\npre_event_s = true", ["video.pre_event_s"]),
        ('[video]\nresolution = "1000x1000"', ["video.resolution", "'1280x720'", "'1920x1080'"]),
        ("[video]\nfps = 29", ["video.fps", "30"]),
        ('[controls]\nrecord_start = "triple"', ["controls.record_start", "'double'", "'single'"]),
        ('[controls]\nstealth_allowed = "yes"', ["controls.stealth_allowed", "true or false"]),
        ("[pins]\nbuzzer = 40", ["pins.buzzer", "2 to 27"]),
        ("[pins]\nbuzzer = 17", ["pins.buzzer", "pins.record_button"]),
        ("[video]\nprevent_s = 3", ["unknown key video.prevent_s", "pre_event_s"]),
        ("[camera]\nfps = 3", ["unknown section [camera]", "video"]),
        ("[power]\nbattery_shutdown_percent = 20\nbattery_low_percent = 10", ["battery_shutdown_percent"]),
        ("[video\n", ["not valid TOML"]),
    ],
)
def test_bad_settings_are_refused_in_one_line(tmp_path, text, words):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")


def test_overrides_are_validated_too():
    cfg = config.with_overrides(config.Config(), video={"resolution": "320x240", "fps": 10})
    assert cfg.video.size == (320, 240) and cfg.video.fps == 10
    with pytest.raises(ConfigError, match="video.fps"):
        config.with_overrides(cfg, video={"fps": 7})
