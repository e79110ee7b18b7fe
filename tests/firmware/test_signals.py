"""LED, buzzer and haptic patterns, read back from MockFactory pins."""

import time

import pytest
from gpiozero import LED, Buzzer, PWMOutputDevice

from firmware.signals import CUES, LIGHTS, WARNINGS, Signals
from hw_sim.pins import sim_pin_factory

PINS = {"green": 5, "red": 6, "amber": 13, "buzzer": 19, "haptic": 12}


@pytest.fixture
def rig():
    factory = sim_pin_factory()
    signals = Signals(
        green=LED(PINS["green"], pin_factory=factory),
        red=LED(PINS["red"], pin_factory=factory),
        amber=LED(PINS["amber"], pin_factory=factory),
        buzzer=Buzzer(PINS["buzzer"], pin_factory=factory),
        haptic=PWMOutputDevice(PINS["haptic"], pin_factory=factory),
    )
    pins = {name: factory.pin(number) for name, number in PINS.items()}
    for pin in pins.values():
        pin.clear_states()
    yield signals, pins
    signals.close()


def levels(pin):
    return [bool(s.state) for s in pin.states]


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    """Poll for a pin condition; the timeout only turns a hang into a failure (no timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_recording_is_solid_red_and_buffering_blinks_green(rig):
    signals, pins = rig
    signals.show("buffering")
    wait_until(lambda: len(pins["green"].states) >= 3, "the first green blink to end")
    assert levels(pins["green"])[:3] == [False, True, False]
    signals.show("recording")
    assert pins["red"].state == 1 and pins["green"].state == 0


def test_start_cue_is_two_beeps_and_two_vibrations(rig):
    signals, pins = rig
    signals.cue("start")
    signals.wait_idle()
    pins["buzzer"].assert_states([False, True, False, True, False])
    pins["haptic"].assert_states([0, 1, 0, 1, 0])
    assert len(pins["buzzer"].states) == 5 and len(pins["haptic"].states) == 5
    # each beep 0.1 s, each vibration 0.2 s: lower bounds only (a busy machine makes them longer)
    assert all(s.timestamp >= 0.09 for s in pins["buzzer"].states[2:])
    assert pins["haptic"].states[2].timestamp >= 0.19 and pins["haptic"].states[4].timestamp >= 0.19


def test_stop_cue_is_one_long(rig):
    signals, pins = rig
    signals.cue("stop")
    signals.wait_idle()
    assert levels(pins["buzzer"]) == [False, True, False]
    assert levels(pins["haptic"]) == [False, True, False]
    assert pins["buzzer"].states[2].timestamp >= 0.99   # one second on, never less


def test_every_cue_and_warning_is_distinct():
    shapes = {(c.beep, c.buzz) for c in CUES.values()}
    assert len(shapes) == len(CUES)
    assert len(set(WARNINGS.values())) == len(WARNINGS)
    assert LIGHTS["recording"][0] == "red" and LIGHTS["buffering"][0] == "green"


def test_amber_shows_the_most_urgent_warning(rig):
    signals, pins = rig
    signals.warn({"storage_nearly_full"})
    assert pins["amber"].state == 1 and levels(pins["amber"]) == [False, True]  # solid
    signals.warn({"storage_nearly_full", "storage_full"})
    # storage full blinks fast over the solid one
    wait_until(lambda: levels(pins["amber"])[2:].count(True) >= 2, "amber to blink")
    signals.warn(set())
    assert pins["amber"].state == 0


def test_stealth_silences_leds_sound_and_vibration(rig):
    signals, pins = rig
    signals.show("recording")
    signals.warn({"battery_low"})
    signals.stealth = True
    for pin in pins.values():
        pin.clear_states()
    signals.cue("start")
    signals.cue("reminder")
    signals.show("recording")
    signals.warn({"storage_full"})
    signals.wait_idle()
    time.sleep(0.3)
    for name, pin in pins.items():
        assert levels(pin) == [False], name  # nothing lit, beeped or buzzed
    signals.stealth = False
    assert pins["red"].state == 1  # the state light comes back; stealth changed nothing else
    assert signals.light == "recording" and signals.warnings == {"storage_full"}


def test_missing_parts_are_fine():
    signals = Signals()
    signals.show("recording")
    signals.cue("start")
    signals.warn({"battery_low"})
    signals.wait_idle()
    signals.close()


def test_unknown_names_are_refused(rig):
    signals, _ = rig
    with pytest.raises(ValueError):
        signals.cue("fanfare")
    with pytest.raises(ValueError):
        signals.show("disco")
