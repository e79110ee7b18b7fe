"""Gestures on MockFactory pins: double press, hold, single press, bounce, knocks, boot.

Time is a ``ManualClock`` the test steps (conftest.py): every settle, hold and double-press
decision happens inside ``clock.advance`` on the test's thread, so each test's outcome depends
only on the times it gives, never on how busy the machine is. One test at the end runs the
real ``MonotonicClock`` and waits for events without a deadline on their timing.
"""

import threading

import pytest

from firmware.config import Config, with_overrides
from firmware.controls import Controls, MonotonicClock
from hw_sim.pins import Finger, sim_pin_factory

FAST = {"stop_hold_s": 0.4, "stealth_hold_s": 0.4, "double_press_s": 1.0, "bounce_s": 0.03}


class Recorder:
    def __init__(self):
        self.events = []
        self.changed = threading.Condition()

    def __call__(self, name, **details):
        with self.changed:
            self.events.append((name, details))
            self.changed.notify_all()

    @property
    def names(self):
        return [name for name, _ in self.events]

    def wait_for(self, *names, timeout=30.0):
        """For the real clock only: wait (no bound on how late) until exactly ``names`` arrived."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.events) >= len(names), timeout)
        assert self.names == list(names)


@pytest.fixture
def make(pin_factory, manual_clock, stepped_finger):
    made = []

    def make(controls=None):
        cfg = with_overrides(Config(), controls={**FAST, **(controls or {})})
        events = Recorder()
        ctl = Controls(cfg.pins, cfg.controls, events, pin_factory=pin_factory, clock=manual_clock)
        made.append(ctl)
        return ctl, events, cfg.pins

    yield make
    for ctl in made:
        ctl.close()


@pytest.fixture
def device(make):
    return make()


def test_double_press_starts(device, stepped_finger):
    _, events, pins = device
    stepped_finger.double(pins.record_button)
    assert events.events == [("record", {"gesture": "double"})]


def test_double_press_window_is_measured_between_the_presses(device, stepped_finger, manual_clock):
    """Press starts exactly 1.0 s apart count (the window is inclusive); 1/128 s later do not.

    Steps are binary fractions so the press times are exact, with no rounding at the boundary.
    """
    _, events, pins = device
    finger, clock = stepped_finger, manual_clock

    def press_then_wait(wait_s):
        finger.down(pins.record_button)
        clock.advance(0.25)
        finger.up(pins.record_button)
        clock.advance(wait_s - 0.25)

    press_then_wait(1.0)
    press_then_wait(8.0)                                 # starts exactly 1.0 s after the first
    assert events.names == ["record"]
    press_then_wait(1.0 + 1 / 128)
    press_then_wait(0.5)                                 # 1/128 s too late: a new first press...
    assert events.names == ["record"]
    press_then_wait(1.0)                                 # ...whose own second press starts recording
    assert events.names == ["record", "record"]


def test_two_presses_too_far_apart_do_nothing(device, stepped_finger, manual_clock):
    _, events, pins = device
    stepped_finger.press(pins.record_button)
    manual_clock.advance(1.2)  # double_press_s is 1.0
    stepped_finger.press(pins.record_button)
    assert events.names == []


def test_single_knock_does_nothing(device, stepped_finger):
    _, events, pins = device
    stepped_finger.press(pins.record_button, duration_s=0.05)
    assert events.names == []


def test_a_touch_shorter_than_the_settle_time_is_no_press(device, stepped_finger, manual_clock):
    _, events, pins = device
    for _ in range(2):                                   # a double "press" of 20 ms touches
        stepped_finger.press(pins.record_button, duration_s=0.02)
        manual_clock.advance(0.1)
    assert events.names == []
    stepped_finger.double(pins.record_button)            # and they leave no first half behind
    assert events.names == ["record"]


def test_contact_bounce_is_not_a_double_press(device, stepped_finger):
    _, events, pins = device
    stepped_finger.bounce(pins.record_button, edges=10)  # a knock: ten edges in 20 ms, ends released
    stepped_finger.bounce(pins.record_button, edges=10)
    assert events.names == []


def test_a_bouncy_press_counts_once(device, stepped_finger, manual_clock):
    _, events, pins = device
    stepped_finger.bounce(pins.record_button, edges=9, end_pressed=True)  # a real press whose contacts bounce
    stepped_finger.up(pins.record_button)
    manual_clock.advance(0.1)
    assert events.names == []  # one press, not two
    stepped_finger.press(pins.record_button)  # the second press of a double
    assert events.names == ["record"]


def test_hold_stops_and_is_not_a_press(device, stepped_finger):
    _, events, pins = device
    stepped_finger.hold(pins.record_button, 0.4)
    assert events.events == [("stop", {"gesture": "hold"})]
    stepped_finger.press(pins.record_button)  # a hold is never the first half of a double
    assert events.names == ["stop"]


def test_hold_fires_at_the_hold_time_while_still_held(device, stepped_finger, manual_clock):
    """The stop comes while the button is still down, not on release; a hold ends before 0.4 s is a press."""
    _, events, pins = device
    stepped_finger.down(pins.record_button)
    manual_clock.advance(0.39)
    assert events.names == []
    manual_clock.advance(0.02)
    assert events.names == ["stop"]
    manual_clock.advance(10)                             # held on: still one stop
    stepped_finger.up(pins.record_button)
    manual_clock.advance(0.1)
    assert events.names == ["stop"]
    stepped_finger.press(pins.record_button, duration_s=0.35)  # released before the hold time
    stepped_finger.press(pins.record_button)
    assert events.names == ["stop", "record"]


def test_release_and_press_again_restarts_the_hold(device, stepped_finger, manual_clock):
    """A press, released, then pressed again: the first press's hold timer finds the button down
    again but for another press, so stealth comes only 0.4 s into the second press."""
    _, events, pins = device
    stepped_finger.press(pins.function_button, duration_s=0.25)  # down at t, settled up by t+0.31
    assert events.names == ["marker"]
    manual_clock.advance(0.02)
    stepped_finger.down(pins.function_button)            # down again at t+0.33
    manual_clock.advance(0.4 - 0.33 + 0.01)
    assert events.names == ["marker"]                    # t+0.41: the first press's hold would be due
    manual_clock.advance(0.33)
    assert events.names == ["marker", "stealth"]         # t+0.74: the second press's own 0.4 s


def test_single_press_mode(make, stepped_finger):
    ctl, events, pins = make({"record_start": "single"})
    stepped_finger.bounce(pins.record_button, edges=10)  # a knock still does nothing
    assert events.names == []
    stepped_finger.press(pins.record_button)
    assert events.events == [("record", {"gesture": "single"})]


def test_press_held_through_boot_is_not_a_gesture(pin_factory, make, stepped_finger, manual_clock):
    Finger(pin_factory).down(17)  # the record button is already down when the firmware starts
    ctl, events, pins = make()
    assert ctl.record_button.is_pressed  # really held while the devices were made
    manual_clock.advance(0.6)  # longer than the hold time
    stepped_finger.up(pins.record_button)
    manual_clock.advance(0.1)
    assert events.names == []
    stepped_finger.double(pins.record_button)
    assert events.names == ["record"]


def test_function_button_marker_and_stealth(device, stepped_finger):
    _, events, pins = device
    stepped_finger.press(pins.function_button)
    assert events.events == [("marker", {"label": "officer marker"})]
    stepped_finger.hold(pins.function_button, 0.4)
    assert events.names == ["marker", "stealth"]  # a hold toggles stealth and adds no marker


def test_function_double_press_is_mute_and_a_third_press_a_marker(device, stepped_finger, manual_clock):
    _, events, pins = device
    stepped_finger.double(pins.function_button)
    assert events.names == ["marker", "mute"]
    manual_clock.advance(0.2)
    stepped_finger.press(pins.function_button)           # a pair is used up: this one starts afresh
    assert events.names == ["marker", "mute", "marker"]


def test_stealth_not_allowed(make, stepped_finger):
    _, events, pins = make({"stealth_allowed": False})
    stepped_finger.hold(pins.function_button, 0.4)
    assert events.names == []


def test_auto_triggers_and_dock(device, stepped_finger):
    _, events, pins = device
    stepped_finger.set_active(pins.holster, True)
    stepped_finger.set_active(pins.lightbar, True)
    stepped_finger.set_active(pins.dock_detect, True)
    stepped_finger.set_active(pins.dock_detect, False)
    assert events.events == [
        ("auto", {"source": "holster"}),
        ("auto", {"source": "lightbar"}),
        ("dock", {}),
        ("undock", {}),
    ]


def test_a_dock_contact_that_bounces_is_one_dock_event(device, stepped_finger):
    _, events, pins = device
    stepped_finger.bounce(pins.dock_detect, edges=8)      # a knock on the contact: still undocked
    assert events.names == []
    stepped_finger.bounce(pins.dock_detect, edges=7, end_pressed=True)
    assert events.names == ["dock"]
    stepped_finger.bounce(pins.dock_detect, edges=6, end_pressed=True)  # docked, jostled: still docked
    assert events.names == ["dock"]


def test_auto_trigger_can_be_switched_off(make, stepped_finger):
    _, events, pins = make({"auto_trigger": False})
    stepped_finger.set_active(pins.holster, True)
    assert events.names == []


def test_docked_at_boot_is_seen(pin_factory, make):
    Finger(pin_factory).down(24)
    ctl, events, _ = make()
    assert ctl.docked and events.names == []


def test_closed_controls_ignore_timers_still_pending(device, stepped_finger, manual_clock):
    ctl, events, pins = device
    stepped_finger.down(pins.record_button)
    manual_clock.advance(0.1)                            # pressed and settled; the hold timer is pending
    ctl.close()
    manual_clock.advance(1)
    assert events.names == []


def test_the_real_clock_drives_the_same_gestures():
    """``MonotonicClock`` (the device's): each wait is for an event, with no bound on how late it comes."""
    cfg = with_overrides(Config(), controls={**FAST, "record_start": "single"})
    factory = sim_pin_factory()
    events = Recorder()
    ctl = Controls(cfg.pins, cfg.controls, events, pin_factory=factory)
    assert isinstance(ctl._clock, MonotonicClock)
    finger = Finger(factory)
    try:
        finger.down(cfg.pins.record_button)               # held until its press and its hold have been seen
        events.wait_for("record", "stop")
        assert events.events == [("record", {"gesture": "single"}), ("stop", {"gesture": "hold"})]
    finally:
        finger.up(cfg.pins.record_button)
        ctl.close()
