"""The device's state machine: every decision about recording is taken here, and logged.

::

    BOOT ──► BUFFERING ◄──────► RECORDING        (record / stop, auto-trigger)
                 ▲  │               │ dock: keeps recording, offload runs alongside
          undock │  ▼ dock          ▼ stop while docked
                DOCKED ◄────────────┘
                 │  ▲
                 ▼  │ update done
               UPDATING            any ──► FAULT (camera or store broke)

Events come from the controls (``record``, ``stop``, ``marker``, ``mute``, ``stealth``, ``auto``,
``dock``, ``undock``), the power monitor (``battery``), the dock link (``clock_set``) and
the recorder itself (``sink_failed``); ``tick()`` drives the time-based ones (reminder,
storage level). They are handled one at a time under one lock, so the order in which
the officer did things is the order in which they happen.

Activation hands the pre-event buffer to a new ``Segmenter`` writing to a sealer at once
(``open_output``) through a ``BackgroundOutput``: the held GOPs are queued at once and
sealed and fsync'd on the sealer's own thread (activation waits for that, the encoder
thread never does), then live frames follow without a gap. Stopping closes the buffer's output and the segmenter, which seals
the last segment. Nothing here ever deletes evidence: a full store stops the recording
(the sealer seals what it has) and refuses the next one.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from firmware.sound import AudioMute, Sound
from recorder.background import BackgroundOutput
from recorder.segmenter import Segmenter
from secure_store.audit import Event
from secure_store.errors import StorageFull, StoreError

log = logging.getLogger(__name__)

RECORD_REFUSED = "record_refused"  # an audit event of ours; secure_store.audit.Event has the rest


class State(str, enum.Enum):
    BOOT = "boot"
    BUFFERING = "buffering"
    RECORDING = "recording"
    DOCKED = "docked"
    UPDATING = "updating"
    FAULT = "fault"


class MachineError(Exception):
    """A request the state machine refuses in its current state (e.g. an update while recording)."""


class DockLink(Protocol):
    """The device end of the dock link, served while docked (firmware.offload)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Recording:
    recording_id: str
    segmenter: Segmenter
    output: BackgroundOutput
    trigger: str
    pre_event_s: float
    started_monotonic: float
    last_reminder: float
    markers: list[str] = field(default_factory=list)
    sealer: Any = None


def new_recording_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


class DeviceMachine:
    """BOOT → BUFFERING ⇄ RECORDING, DOCKED, UPDATING, FAULT; see the module docstring."""

    def __init__(
        self,
        *,
        buffer,
        store,
        audit,
        signals,
        segment_s: float = 60.0,
        reminder_s: float = 120.0,
        battery_low_percent: int = 15,
        battery_shutdown_percent: int = 5,
        dock_link: DockLink | None = None,
        recording_id: Callable[[], str] = new_recording_id,
        clock: Callable[[], float] = time.monotonic,
        audio: AudioMute | None = None,
    ):
        self.buffer, self.store, self.audit, self.signals = buffer, store, audit, signals
        self.sound = Sound(audio, audit, signals, pre_event=bool(getattr(buffer, "hold_audio", False)))
        self.dock_link = dock_link
        self._segment_s = segment_s
        self._reminder_s = reminder_s
        self._battery_low = battery_low_percent
        self._battery_shutdown = battery_shutdown_percent
        self._new_recording_id = recording_id
        self._clock = clock
        self._lock = threading.RLock()
        self.state = State.BOOT
        self.recording: Recording | None = None
        self.docked = False
        self.stealth = False
        self.battery_percent: int | None = None
        self.storage_level = "ok"
        self.clock_set = True
        self.last_recording: Recording | None = None
        self.listeners: list[Callable[[State, State, str], None]] = []
        self.decisions: list[str] = []  # what events led to, in words, newest last (the sim console says them)
        self.decision_count = 0

    # -- the one entry point ------------------------------------------------------------------
    def handle(self, event: str, **details: Any) -> None:
        """Handle one event (thread-safe); unknown events are a programming error."""
        handler = getattr(self, f"_on_{event}", None)
        if handler is None:
            raise MachineError(f"unknown event {event!r}")
        with self._lock:
            log.debug("event %s %s in %s", event, details, self.state.value)
            handler(**details)

    def boot(self, *, docked: bool = False, clock_set: bool = True) -> None:
        """Start up: recover torn segments, check storage and clock, then buffer (or dock)."""
        with self._lock:
            if self.state is not State.BOOT:
                raise MachineError(f"boot() in state {self.state.value}")
            self.signals.show("boot")
            self.audit.append(Event.BOOT, docked=docked, clock_set=clock_set)
            recovered = self.store.recover()
            if recovered:
                log.warning("recovered %d torn segment(s) at boot: %s", len(recovered), ", ".join(recovered))
            self.clock_set = clock_set
            self._check_storage(announce=True)
            self.docked = docked
            self._enter(State.DOCKED if docked else State.BUFFERING, Event.BUFFER_START)
            if docked:
                self._start_link()
            if not clock_set:
                self.signals.cue("clock_not_set")

    # -- recording ----------------------------------------------------------------------------
    def _on_record(self, gesture: str = "double") -> None:
        self._start_recording(trigger=f"button:{gesture}")

    def _on_auto(self, source: str) -> None:
        self._start_recording(trigger=f"auto:{source}")

    def _start_recording(self, trigger: str) -> None:
        if self.recording is not None:
            self._decided(f"already recording ({trigger} changes nothing)")
            return  # already recording: a second trigger changes nothing
        if self.state not in (State.BUFFERING, State.DOCKED):
            log.info("record (%s) ignored in state %s", trigger, self.state.value)
            self._decided(f"record ignored in state {self.state.value}")
            return
        if self.battery_percent is not None and self.battery_percent <= self._battery_shutdown:
            self._refuse(trigger, "battery_low", battery_percent=self.battery_percent)
            return
        self._check_storage(announce=False)  # "full" = the next chunk would not fit: known before we start
        try:
            sealer = self.store.open_sealer()
        except StorageFull as exc:
            self.storage_level = "full"
            self._show_warnings()
            self._refuse(trigger, "storage_full", error=str(exc))  # the store has logged storage_full
            return
        recording_id = self._new_recording_id()
        segmenter = Segmenter(sealer, recording_id, self._segment_s)
        self.sound.begin(segmenter)
        # The sealer runs on a thread of its own: the encoder thread never waits for the disk.
        output = BackgroundOutput(segmenter, on_failure=self._report_sink_failure, name=f"seal-{recording_id}")
        self.signals.show("recording")  # the officer sees red first: everything else can take a moment
        self.signals.cue("start")
        pre_event_s = round(self.buffer.held_seconds, 3)
        now = self._clock()
        self.recording = Recording(recording_id, segmenter, output, trigger, pre_event_s, now, now, sealer=sealer)
        self.buffer.open_output(output)  # held GOPs queued at once; live frames follow
        output.wait()  # ... and sealed and fsync'd before we go on (the LED is already red)
        self._enter(State.RECORDING, Event.RECORD_START, recording_id=recording_id, trigger=trigger,
                    pre_event_s=pre_event_s, docked=self.docked, **self.sound.policy())

    def _on_stop(self, gesture: str = "hold") -> None:
        if self.recording is not None:
            self._stop_recording(reason=f"button:{gesture}")

    def _stop_recording(self, reason: str) -> None:
        rec = self.recording
        assert rec is not None
        self.buffer.close_output()
        sealed, full_at_close = True, False
        try:
            rec.output.close()  # every frame handed over is written ...
            rec.segmenter.close()  # ... before the last segment is sealed
        except StorageFull as exc:  # the GOP in flight found the disk full: the sealer sealed, then said so
            full_at_close = True
            log.warning("closing recording %s: %s", rec.recording_id, exc)
        except (StoreError, OSError) as exc:
            sealed = False
            log.error("closing recording %s: %s", rec.recording_id, exc)
        failure = rec.output.failure
        storage_full = full_at_close or isinstance(failure, StorageFull)
        unsealed = getattr(rec.sealer, "unsealed", None)  # left for recovery: not even the reserve fitted
        self.recording = None
        self.last_recording = rec
        self.signals.cue("stop")
        details: dict[str, Any] = dict(
            recording_id=rec.recording_id, reason=reason, segments=rec.segmenter.segments_begun,
            markers=len(rec.markers), sealed=sealed and not unsealed and (failure is None or storage_full),
            failure=None if failure is None or storage_full else str(failure))
        if storage_full:
            details["storage_full"] = True
        if unsealed:
            details["unsealed"] = unsealed
        self._enter(State.DOCKED if self.docked else State.BUFFERING, Event.RECORD_STOP, **details)

    def _on_marker(self, label: str = "officer marker") -> None:
        if self.recording is None:
            log.info("marker ignored: not recording")
            self._decided("marker ignored: not recording")
            return
        segmenter = self.recording.segmenter
        self.recording.output.call(lambda: segmenter.add_marker(label))  # after the frames seen so far
        self.recording.markers.append(label)
        self.audit.append(Event.MARKER, recording_id=self.recording.recording_id, label=label)
        self.signals.cue("marker")
        self._decided(f"marker added to {self.recording.recording_id}")

    def _report_sink_failure(self, exc: BaseException) -> None:
        self.handle("sink_failed", error=exc)

    def _on_sink_failed(self, error: BaseException) -> None:
        if self.recording is None or self.recording.output.failure is not error:
            return  # a recording that has already been stopped
        if isinstance(error, StorageFull):
            self.storage_level = "full"
            self._show_warnings()
            self.signals.cue("storage_full")  # the sealer sealed the segment and logged storage_full
            self._stop_recording(reason="storage_full")
        else:
            self._stop_recording(reason="recorder_failed")
            self._on_fault(reason=f"recorder failed: {error}")

    def _refuse(self, trigger: str, why: str, **details: Any) -> None:
        log.warning("recording refused (%s): %s", trigger, why)
        self._decided(f"recording refused: {why.replace('_', ' ')}")
        self.signals.cue(why)
        self.audit.append(RECORD_REFUSED, trigger=trigger, reason=why, state=self.state.value, **details)

    def _on_mute(self) -> None:
        self.sound.toggle(self.recording, self.state.value)  # firmware/sound.py

    # -- stealth ------------------------------------------------------------------------------
    def _on_stealth(self) -> None:
        self.stealth = not self.stealth
        self.signals.stealth = self.stealth
        self._decided("stealth on" if self.stealth else "stealth off")
        self.audit.append(Event.STEALTH_ON if self.stealth else Event.STEALTH_OFF, state=self.state.value)

    # -- dock ---------------------------------------------------------------------------------
    def _on_dock(self) -> None:
        if self.docked:
            return
        self.docked = True
        if self.state is State.BUFFERING:
            self._enter(State.DOCKED, Event.DOCK_CONNECT)
        else:  # recording (or updating, fault): the state stays, the dock is noted
            self.audit.append(Event.DOCK_CONNECT, state=self.state.value)
        self._start_link()

    def _on_undock(self) -> None:
        if not self.docked:
            return
        self.docked = False
        self._stop_link()
        if self.state is State.DOCKED:
            self._enter(State.BUFFERING, Event.DOCK_DISCONNECT)
        else:
            self.audit.append(Event.DOCK_DISCONNECT, state=self.state.value)

    def _start_link(self) -> None:
        if self.dock_link is not None:
            self.dock_link.start()

    def _stop_link(self) -> None:
        if self.dock_link is not None:
            self.dock_link.stop()

    def _on_clock_set(self, offset_us: int | None = None) -> None:
        """The dock synced the clock (it audit-logs the offset itself)."""
        self.clock_set = True
        self._show_warnings()

    # -- updates ------------------------------------------------------------------------------
    def begin_update(self) -> None:
        """Enter UPDATING; refused while recording (the evidence comes first)."""
        with self._lock:
            if self.recording is not None:
                raise MachineError("firmware update refused: the device is recording")
            if self.state not in (State.BUFFERING, State.DOCKED):
                raise MachineError(f"firmware update refused in state {self.state.value}")
            self._enter(State.UPDATING, Event.STATE_CHANGE, cause="update")

    def end_update(self, ok: bool) -> None:
        with self._lock:
            if self.state is not State.UPDATING:
                raise MachineError(f"end_update() in state {self.state.value}")
            self._enter(State.DOCKED if self.docked else State.BUFFERING, Event.STATE_CHANGE,
                        cause="update done" if ok else "update failed")

    # -- power, storage, time -----------------------------------------------------------------
    def _on_battery(self, percent: int) -> None:
        was_low = self.battery_percent is not None and self.battery_percent <= self._battery_low
        self.battery_percent = percent
        low = percent <= self._battery_low
        if low and not was_low:
            self.signals.cue("battery_low")
            self.audit.append(Event.BATTERY_LOW, battery_percent=percent)
        self._show_warnings()
        if percent <= self._battery_shutdown and self.recording is not None:
            self._stop_recording(reason="battery_low")

    def tick(self) -> None:
        """Time-driven duties, called about once a second: reminder cue, storage level."""
        with self._lock:
            if self.state in (State.BOOT, State.FAULT, State.UPDATING):
                return
            if getattr(self.store, "recovery_pending", False) and self.recording is None:
                self.store.recover_pending()  # a torn segment waited for room (the dock freed some)
            self._check_storage(announce=True)
            rec = self.recording
            if rec is not None:
                now = self._clock()
                if now - rec.last_reminder >= self._reminder_s:
                    rec.last_reminder = now
                    self.signals.cue("reminder")
                if self.storage_level == "full":
                    self._stop_recording(reason="storage_full")

    def _check_storage(self, announce: bool) -> None:
        level = self.store.storage_status().level
        if level == self.storage_level:
            return
        previous, self.storage_level = self.storage_level, level
        self._show_warnings()
        if announce and level != "ok" and (previous, level) != ("full", "nearly_full"):
            self.signals.cue("storage_full" if level == "full" else "storage_nearly_full")
            self.audit.append(Event.STORAGE_FULL if level == "full" else Event.STORAGE_NEARLY_FULL)

    def _show_warnings(self) -> None:
        warnings = set()
        if self.storage_level in ("full", "nearly_full"):
            warnings.add("storage_" + self.storage_level)
        if self.battery_percent is not None and self.battery_percent <= self._battery_low:
            warnings.add("battery_low")
        if not self.clock_set:
            warnings.add("clock_not_set")
        self.signals.warn(warnings)

    def shutdown(self, reason: str = "shutdown") -> None:
        """Power-down: seal any recording first, then log the shutdown."""
        with self._lock:
            if self.recording is not None:
                self._stop_recording(reason=reason)
            self._stop_link()
            self.audit.append(Event.SHUTDOWN, state=self.state.value, reason=reason)

    # -- faults -------------------------------------------------------------------------------
    def _on_fault(self, reason: str) -> None:
        if self.recording is not None:
            self._stop_recording(reason="fault")
        if self.state is not State.FAULT:
            self._enter(State.FAULT, Event.FAULT, reason=reason)

    # -- transitions --------------------------------------------------------------------------
    def _enter(self, new: State, event: str, **details: Any) -> None:
        """Change state: lights, audit entry (one per transition), listeners, then ``state``.

        ``state`` changes last, so whoever sees the new state sees everything that goes with it.
        """
        old = self.state
        if new is not State.RECORDING:
            self.signals.show(new.value)
        self.audit.append(event, **{"from": old.value, "to": new.value}, **details)
        log.info("%s -> %s (%s)", old.value, new.value, event)
        said = {Event.RECORD_START: f"recording {details.get('recording_id')} started",
                Event.RECORD_STOP: f"recording {details.get('recording_id')} stopped ({details.get('reason')}), "
                                   f"{'sealed' if details.get('sealed') else 'NOT sealed'}"}.get(event)
        self._decided(said or f"{old.value} -> {new.value}")
        for listener in self.listeners:
            listener(old, new, event)
        self.state = new
        self._show_warnings()

    def _decided(self, what: str) -> None:
        self.decisions.append(what)
        del self.decisions[:-100]  # the newest hundred are plenty for a console
        self.decision_count += 1

    def decisions_since(self, count: int) -> list[str]:
        """What happened since ``decision_count`` was ``count`` (waits for an event being handled)."""
        with self._lock:
            n = min(self.decision_count - count, len(self.decisions))
            return self.decisions[-n:] if n > 0 else []

    def status(self) -> dict[str, Any]:
        """What `status` shows and the dock link reports."""
        with self._lock:
            rec = self.recording
            return {
                "state": self.state.value,
                "recording_id": rec.recording_id if rec else None,
                "docked": self.docked,
                "stealth": self.stealth,
                "audio": self.sound.state,
                "battery_percent": self.battery_percent,
                "storage": self.storage_level,
                "clock_set": self.clock_set,
                "pre_event_held_s": round(self.buffer.held_seconds, 2),
            }
