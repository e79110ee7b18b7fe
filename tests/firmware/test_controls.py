"""Gestures on MockFactory pins: double press, hold, single press, bounce, knocks, boot."""

import time

import pytest

from firmware.config import Config, with_overrides
from firmware.controls import Controls
from hw_sim.pins import Finger, sim_pin_factory

FAST = {"stop_hold_s": 0.4, "stealth_hold_s": 0.4, "double_press_s": 1.0, "bounce_s": 0.03}


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, name, **details):
        self.events.append((name, details))

    @property
    def names(self):
        return [name for name, _ in self.events]

    def expect(self, *names, timeout=2.0):
        """The events so far are exactly ``names`` (waiting a little for settle timers on a busy machine)."""
        deadline = time.monotonic() + timeout
        while self.names != list(names) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.names == list(names)


def make(controls=None, factory=None):
    cfg = with_overrides(Config(), controls={**FAST, **(controls or {})})
    factory = factory or sim_pin_factory()
    events = Recorder()
    ctl = Controls(cfg.pins, cfg.controls, events, pin_factory=factory)
    return ctl, Finger(factory, cfg.controls.bounce_s), events, cfg.pins


@pytest.fixture
def device():
    made = make()
    yield made
    made[0].close()


def test_double_press_starts(device):
    _, finger, events, pins = device
    finger.double(pins.record_button)
    events.expect("record")
    assert events.events[0][1] == {"gesture": "double"}


def test_two_presses_too_far_apart_do_nothing(device):
    _, finger, events, pins = device
    finger.press(pins.record_button)
    time.sleep(1.2)  # double_press_s is 1.0
    finger.press(pins.record_button)
    assert events.names == []


def test_single_knock_does_nothing(device):
    _, finger, events, pins = device
    finger.press(pins.record_button, duration_s=0.05)
    assert events.names == []


def test_contact_bounce_is_not_a_double_press(device):
    _, finger, events, pins = device
    finger.bounce(pins.record_button, edges=10)  # a knock: ten edges in 20 ms, ends released
    finger.bounce(pins.record_button, edges=10)
    assert events.names == []


def test_a_bouncy_press_counts_once(device):
    _, finger, events, pins = device
    finger.bounce(pins.record_button, edges=9, end_pressed=True)  # a real press whose contacts bounce
    finger.up(pins.record_button)
    time.sleep(0.1)
    assert events.names == []  # one press, not two
    finger.press(pins.record_button)  # the second press of a double
    events.expect("record")


def test_hold_stops_and_is_not_a_press(device):
    _, finger, events, pins = device
    finger.hold(pins.record_button, 0.4)
    events.expect("stop")
    finger.press(pins.record_button)  # a hold is never the first half of a double
    assert events.names == ["stop"]


def test_single_press_mode():
    ctl, finger, events, pins = make({"record_start": "single"})
    try:
        finger.bounce(pins.record_button, edges=10)  # a knock still does nothing
        assert events.names == []
        finger.press(pins.record_button)
        events.expect("record")
        assert events.events[0][1] == {"gesture": "single"}
    finally:
        ctl.close()


def test_press_held_through_boot_is_not_a_gesture():
    factory = sim_pin_factory()
    Finger(factory).down(17)  # the record button is already down when the firmware starts
    ctl, finger, events, pins = make(factory=factory)
    try:
        assert ctl.record_button.is_pressed  # really held while the devices were made
        time.sleep(0.6)  # longer than the hold time
        finger.up(pins.record_button)
        time.sleep(0.1)
        assert events.names == []
        finger.double(pins.record_button)
        events.expect("record")
    finally:
        ctl.close()


def test_function_button_marker_and_stealth(device):
    _, finger, events, pins = device
    finger.press(pins.function_button)
    events.expect("marker")
    finger.hold(pins.function_button, 0.4)
    events.expect("marker", "stealth")  # a hold toggles stealth and adds no marker


def test_stealth_not_allowed():
    ctl, finger, events, pins = make({"stealth_allowed": False})
    try:
        finger.hold(pins.function_button, 0.4)
        assert events.names == []
    finally:
        ctl.close()


def test_auto_triggers_and_dock(device):
    _, finger, events, pins = device
    finger.set_active(pins.holster, True)
    finger.set_active(pins.lightbar, True)
    finger.set_active(pins.dock_detect, True)
    finger.set_active(pins.dock_detect, False)
    events.expect("auto", "auto", "dock", "undock")
    assert events.events == [
        ("auto", {"source": "holster"}),
        ("auto", {"source": "lightbar"}),
        ("dock", {}),
        ("undock", {}),
    ]


def test_auto_trigger_can_be_switched_off():
    ctl, finger, events, pins = make({"auto_trigger": False})
    try:
        finger.set_active(pins.holster, True)
        assert events.names == []
    finally:
        ctl.close()


def test_docked_at_boot_is_seen():
    factory = sim_pin_factory()
    Finger(factory).down(24)
    ctl, _, events, _ = make(factory=factory)
    try:
        assert ctl.docked and events.names == []
    finally:
        ctl.close()
