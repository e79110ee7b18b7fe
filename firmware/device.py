"""The composition root: one provisioned device root + a config → a running camera.

Everything is built here and nowhere else: camera and encoder, pre-event buffer, sealed
store and audit log, pins (controls and signals), battery, the dock link and the state
machine. ``sim=True`` swaps in the simulated hardware — the hw_sim camera, gpiozero's
MockFactory pins, the sim battery — behind the same seams; a Raspberry Pi gets
picamera2 (``recorder.picamera``) and gpiozero's default pin factory.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from buffer.prebuffer import PreEventBuffer
from firmware import update
from firmware.clock import ClockConfig, ClockTracker
from firmware.config import Config
from firmware.controls import Controls
from firmware.gps import LocationLog, SerialGps
from firmware.machine import DeviceMachine, State
from firmware.offload import OffloadServer, OffsetClock, load_enrolled_docks
from firmware import rootlock
from secure_store.admission import DeviceTrustAnchor
from firmware.provision import ProvisionError, load_identity, signer
from firmware.signals import Signals
from recorder.audio import MuteGate
from secure_store import keys
from secure_store.audit import AuditLog
from secure_store.layout import DeviceRoot
from secure_store.reserve import RESERVE_FILE, ReservedAudit, SealingReserve, is_no_space
from secure_store.store import EvidenceStore, chunk_bytes_for

log = logging.getLogger(__name__)

MIB = 1024 * 1024
TICK_S = 0.5
EARLIEST_PLAUSIBLE_UTC = 1_704_067_200  # 2024-01-01: a Pi without RTC boots in 1970
CAMERA_CLOCKS = ("real", "fast", "stepped")  # stepped: fast, but only as far as ``sensor_gate`` allows


class DeviceError(Exception):
    """The device cannot start: not provisioned, keys missing, hardware absent."""

    exit_code = 1


class FrameTap:
    """Between the encoder and the pre-event buffer: counts frames and keeps the newest timestamp.

    The newest timestamp is the device's sensor time (in simulation with a fast clock,
    the only clock that tells how much video exists); the count is the health check.
    """

    def __init__(self, output) -> None:
        self.output = output
        self.frames = 0
        self.newest_us: int | None = None
        self._arrived = threading.Condition()

    def outputframe(self, frame: bytes, keyframe: bool = True, timestamp: int | None = None,
                    packet: object = None, audio: bool = False) -> None:
        self.output.outputframe(frame, keyframe, timestamp, packet, audio)
        if not audio:  # sound runs a little behind the picture: the sensor time is the video's
            with self._arrived:
                self.newest_us = timestamp
                self.frames += 1
                self._arrived.notify_all()

    def wait_frame(self, after: int, timeout: float) -> bool:
        """Wait until more than ``after`` frames have passed; False if none came within ``timeout``."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.frames > after, timeout)


class ReservedClock(OffsetClock):
    """The device clock: a dock's time sync is kept even on a full disk (in memory until there is room)."""

    def __init__(self, state_file: Path, *, reserve: SealingReserve) -> None:
        super().__init__(state_file)
        self._reserve = reserve

    def sync(self, reference_utc: float, source: str) -> tuple[int, int]:
        try:
            return self._reserve.run(lambda: super(ReservedClock, self).sync(reference_utc, source))
        except Exception as exc:  # noqa: BLE001 - only "no room" is handled here
            if not is_no_space(exc):
                raise
        old, self.source = self.offset_us, source  # a full disk must not stop the dock's pull
        self.offset_us = round((reference_utc - self.base()) * 1e6)
        log.error("disk full: clock offset from %s kept in memory only", source)
        return old, self.offset_us


def _signals(config: Config, pin_factory) -> Signals:
    from gpiozero import LED, Buzzer, PWMOutputDevice

    pins = config.pins

    def made(cls, pin):
        return None if pin is None else cls(pin, pin_factory=pin_factory)

    return Signals(green=made(LED, pins.led_green), red=made(LED, pins.led_red), amber=made(LED, pins.led_amber),
                   buzzer=made(Buzzer, pins.buzzer), haptic=made(PWMOutputDevice, pins.haptic))


class Device:
    """A running body camera; ``start()`` boots it, ``stop()`` seals and shuts down."""

    def __init__(self, root: str | Path, config: Config, *, sim: bool = False, port: str | None = None,
                 camera_clock: str = "real", pin_factory=None, battery=None,
                 root_lock: rootlock.RootLock | None = None) -> None:
        self._root_lock = root_lock  # the daemon locks the root before it builds anything (firmware.rootlock)
        self.root = DeviceRoot(root)
        self.config = config
        self.sim = sim
        try:
            identity = load_identity(self.root)
            self.device_id: str = identity["device_id"]
            self.device_key = keys.load_signing_key(self.root.device_key, "device")  # hybrid: Ed25519 + ML-DSA-65
            agency_public_key = keys.load_public_key(self.root.agency_pub, "agency")
        except (ProvisionError, keys.KeyFileError) as exc:
            raise DeviceError(f"device {self.root.root} cannot start: {exc}") from None
        # The sealing reserve: room set aside so that a full disk never leaves a segment
        # unsealed nor an audit entry unwritten (secure_store.reserve).
        sealing_reserve = SealingReserve(self.root.state / RESERVE_FILE)
        self.audit = ReservedAudit(AuditLog(self.root.audit, signer(self.device_key), self.device_id), sealing_reserve)
        self.clock = ReservedClock(self.root.state / "clock.json", reserve=sealing_reserve)
        self.clock_tracker = ClockTracker(self.clock, self.audit, ClockConfig(
            dock_error_ms=config.clock.dock_error_ms, gps_latency_ms=config.clock.gps_latency_ms,
            default_drift_ppm=config.clock.drift_ppm))
        self.location = LocationLog(pre_event=config.gps.pre_event, interval_s=config.gps.interval_s,
                                    window_s=config.video.pre_event_s + 10)
        storage, video = config.storage, config.video
        self.store = EvidenceStore(
            self.root, device_id=self.device_id, signing_key=signer(self.device_key),
            agency_public_key=agency_public_key, audit=self.audit, clock=self.clock,
            quota_bytes=storage.quota_mb * MIB if storage.quota_mb else None,
            reserve_bytes=storage.reserve_mb * MIB, chunk_bytes=chunk_bytes_for(video.bitrate),
            sealing_reserve=sealing_reserve,
            sensor_clock=lambda: self.tap.newest_us,  # UTC of pre-event frames is their own, not the press's
            clock_bound=self.clock_tracker.segment_bound,
            locations=self.location.take if config.gps.enabled else None,
        )
        video = config.video
        audio = config.audio
        hold_audio = audio.enabled and audio.pre_event
        held_bitrate = video.bitrate + (audio.bitrate if hold_audio else 0)
        held_bytes = int(video.pre_event_s * held_bitrate / 8 * 1.5) + 8 * MIB
        self.buffer = PreEventBuffer(video.pre_event_s, max_bytes=held_bytes, hold_audio=hold_audio)
        self.tap = FrameTap(self.buffer)
        # The officer's mute, in front of the buffer; the encoders feed it (None: no sound at all).
        self.mute_gate = MuteGate(self.tap, lambda: self.tap.newest_us) if audio.enabled else None

        if sim and pin_factory is None:
            from hw_sim.pins import sim_pin_factory
            pin_factory = sim_pin_factory()
        elif pin_factory is None:
            pin_factory = _default_pin_factory()
        self.pin_factory = pin_factory
        if sim and battery is None:
            from hw_sim.battery import SimBattery
            battery = SimBattery()
        self.battery = battery
        self.signals = _signals(config, pin_factory)

        self.port = port
        self.offload = None
        if port and "://" not in port and not Path(port).exists():
            log.warning("dock port %s does not exist (yet): the dock link starts when it appears; "
                        "check --port or paths.serial_port", port)
        if port:
            self.offload = OffloadServer(
                port, self.store, self.audit, self.device_key.ed25519, self.device_id,  # the link: Ed25519
                enrolled_docks=lambda: load_enrolled_docks(self.root.docks),
                status_provider=self._dock_status, clock=self.clock,
                on_clock_set=self._on_clock_set,
                trust=DeviceTrustAnchor(self.root.root, self.device_key.public_key()),
            )
        self.machine = DeviceMachine(
            buffer=self.buffer, store=self.store, audit=self.audit, signals=self.signals,
            segment_s=video.segment_s, reminder_s=config.signals.reminder_s,
            battery_low_percent=config.power.battery_low_percent,
            battery_shutdown_percent=config.power.battery_shutdown_percent,
            dock_link=self.offload, audio=self.mute_gate,
        )
        self.machine.listeners.append(self._on_transition)
        if self.offload is not None:  # firmware over the dock link, bracketed by UPDATING
            from firmware.update.flash import attach_firmware_commands

            attach_firmware_commands(self.offload, self.root, recording=lambda: self.machine.recording is not None,
                                     begin_update=self.machine.begin_update, end_update=self.machine.end_update)
        self.controls = Controls(config.pins, config.controls, self.machine.handle, pin_factory=pin_factory)
        self.sensor_gate = None  # hw_sim.sensor_gate.SensorGate with camera_clock="stepped"
        self.camera = self._camera(camera_clock)
        self.sim_gps, self.gps = self._gps() if config.gps.enabled else (None, None)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="device-tick", daemon=True)
        self._healthy = False
        self._last_battery: int | None = None
        self.recording_started_us: int | None = None  # sensor time of the newest frame at activation

    def _camera(self, camera_clock: str):
        if camera_clock not in CAMERA_CLOCKS:
            raise DeviceError(f"camera clock must be one of {', '.join(CAMERA_CLOCKS)}, not {camera_clock!r}")
        video, audio = self.config.video, self.config.audio
        width, height = video.size
        front = self.mute_gate or self.tap

        def utc() -> dt.datetime:
            return dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)

        if self.sim:
            from hw_sim.camera import SimCamera
            from hw_sim.microphone import SimMicrophone
            from recorder.audio import AacEncoder, AudioCapture
            from recorder.encoders import CaptureThread, PyAVEncoder

            camera = SimCamera(width, height, video.fps, clock="real" if camera_clock == "real" else "fast",
                               pixel_format="yuv420p")
            if camera_clock == "stepped":
                from hw_sim.sensor_gate import SensorGate
                camera = self.sensor_gate = SensorGate(camera)
            encoder = PyAVEncoder(front, width, height, video.fps, video.bitrate, input_format="yuv420p")
            sound = AudioCapture(SimMicrophone(), AacEncoder(front, audio.bitrate)) if audio.enabled else None
            return CaptureThread(camera, encoder, device_id=self.device_id, utc_clock=utc, audio=sound)
        from recorder.picamera import PiCameraSource

        return PiCameraSource(front, width, height, video.fps, video.bitrate, device_id=self.device_id,
                              utc_clock=utc, audio_bitrate=audio.bitrate if audio.enabled else None,
                              audio_device=audio.device)

    def _gps(self):
        """The GPS receiver: the configured UART, or in simulation a hw_sim twin on a pty."""
        sim_gps, port = None, self.config.gps.port
        if self.sim:
            from hw_sim.gps import Route, SimGps

            sim_gps = SimGps(self.root.state / "gps.tty", Route(),
                             utc=lambda: dt.datetime.fromtimestamp(time.time(), dt.timezone.utc))
            port = str(sim_gps.path)
        return sim_gps, SerialGps(port, self.config.gps.baud, self._on_fix,
                                  stamp=lambda: (self.tap.newest_us, self.clock.base()),
                                  on_status=lambda what: self.audit.append("gps_receiver", status=what, port=port))

    def _on_fix(self, fix, base_s: float) -> None:
        self.location.add(fix)
        if fix.has_fix and fix.gps_utc_us is not None:
            self.clock_tracker.gps_time(fix.gps_utc_us, base_s)

    def _on_clock_set(self, offset_us: int) -> None:
        self.clock_tracker.dock_synced(offset_us)
        self.machine.handle("clock_set", offset_us=offset_us)

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Boot: choose the firmware slot, recover the store, start the camera and the machine."""
        if self._root_lock is None:
            try:
                self._root_lock = rootlock.acquire(self.root.root)  # provisioning refuses while we run
            except rootlock.RootInUse as exc:
                raise DeviceError(str(exc)) from None
        update.clear_recording(self.root)  # no recording survives a reboot
        slot = update.boot_slot(self.root, audit=self.audit)
        log.info("device %s booting firmware slot %s (%s)", self.device_id, slot.slot, slot.version)
        clock_set = (self.root.state / "clock.json").exists() and self.clock() > EARLIEST_PLAUSIBLE_UTC
        self.machine.boot(docked=self.controls.docked, clock_set=clock_set)
        if self.offload is not None and self.config.pins.dock_detect is None:
            self.offload.start()  # no dock-detect pin: serve the link whenever the port is there
        self.camera.start()
        if self.gps is not None:
            self.gps.start()
            if self.sim_gps is not None:
                self.sim_gps.start(rate_hz=1.0, sensor_clock=lambda: self.tap.newest_us)
        self._ticker.start()

    def stop(self, reason: str = "shutdown") -> None:
        """Seal any recording, stop the camera and the dock link, release the pins."""
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join(timeout=2)
        self.controls.close()  # first: no press may start a recording while we shut down
        self.machine.shutdown(reason)
        if self.gps is not None:
            self.gps.stop()
            if self.sim_gps is not None:
                self.sim_gps.close()
        if self.sensor_gate is not None:
            self.sensor_gate.close()  # a paused sim camera must not hold the capture thread
        try:
            getattr(self.camera, "close", self.camera.stop)()  # a Pi camera is also released
        except Exception as exc:  # noqa: BLE001 - already a FAULT (audit-logged); shutdown goes on
            log.error("camera: %s", exc)
        finally:
            self.signals.close()
            if getattr(self, "_root_lock", None) is not None:
                self._root_lock.release()

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the ticker must outlive one bad tick
                log.exception("device tick failed")

    def _tick(self) -> None:
        error = getattr(self.camera, "error", None)
        if error is not None and self.machine.state is not State.FAULT:
            self.machine.handle("fault", reason=f"camera stopped: {error}")
        if self.battery is not None:
            percent = self.battery.percent
            if percent != self._last_battery:
                self._last_battery = percent
                self.machine.handle("battery", percent=percent)
        self.clock_tracker.check_jump()
        self.machine.tick()
        if not self._healthy and self.tap.frames >= self.config.video.fps and self.machine.state in (
                State.BUFFERING, State.DOCKED, State.RECORDING):
            self._healthy = True  # a second of video through the buffer: this firmware works
            update.mark_healthy(self.root, audit=self.audit)

    def _on_transition(self, old: State, new: State, event: str) -> None:
        if new is State.RECORDING and self.machine.recording is not None:
            self.recording_started_us = self.tap.newest_us
            self.location.recording_started(self.tap.newest_us)
            update.set_recording(self.root, self.machine.recording.recording_id)
        elif old is State.RECORDING:
            update.clear_recording(self.root)

    # -- what a person or a dock can see ----------------------------------------------------------
    @property
    def sensor_seconds(self) -> float:
        """Seconds of video the camera has produced (sensor time, fast in simulation)."""
        return 0.0 if self.tap.newest_us is None else self.tap.newest_us / 1e6

    def status(self) -> dict[str, Any]:
        status = self.machine.status()
        status.update(device_id=self.device_id, sensor_s=round(self.sensor_seconds, 2),
                      frames=self.tap.frames, storage_free_bytes=self.store.storage_status().free_bytes)
        if self.gps is not None:
            status["gps"] = {"connected": self.gps.connected.is_set(), **self.gps.stats()}
        status["clock_error"] = self.clock_tracker.bound().describe()
        return status

    def _dock_status(self) -> dict[str, Any]:
        status = self.machine.status()
        manifests = list(self.root.evidence.glob("seg-*.manifest"))
        queued = sum(m.stat().st_size + _size(m.with_suffix(".seg")) for m in manifests)
        return {"battery_percent": status["battery_percent"], "recording_state": status["state"],
                "recording_id": status["recording_id"], "queued": {"segments": len(manifests), "bytes": queued}}

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``condition`` until true; DeviceError naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not condition():
            error = getattr(self.camera, "error", None)
            if error is not None:
                raise DeviceError(f"camera failed while waiting for {what}: {error}")
            if time.monotonic() > deadline:
                raise DeviceError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.01)

    def wait_sensor(self, seconds: float, what: str, stall_s: float = 120.0) -> None:
        """Wait until the camera has produced ``seconds`` of video (sensor time).

        However slow the machine, this waits as long as frames keep coming; DeviceError
        only if the camera fails or no frame at all arrives for ``stall_s`` (a hang).
        """
        target = round(seconds * 1_000_000)
        while self.tap.newest_us is None or self.tap.newest_us < target:
            error = getattr(self.camera, "error", None)
            if error is not None:
                raise DeviceError(f"camera failed while waiting for {what}: {error}")
            if not self.tap.wait_frame(self.tap.frames, stall_s) and (
                    self.tap.newest_us is None or self.tap.newest_us < target):
                raise DeviceError(f"no video for {stall_s:g} s while waiting for {what}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _default_pin_factory():
    """gpiozero's own choice of pin driver, or DeviceError with a hint on a machine without GPIO."""
    import warnings

    from gpiozero import Device as GpioDevice
    from gpiozero.exc import BadPinFactory, PinFactoryFallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PinFactoryFallback)  # one clear line below, not four warnings
        if GpioDevice.pin_factory is not None:
            return GpioDevice.pin_factory
        try:
            return GpioDevice._default_pin_factory()
        except BadPinFactory:
            raise DeviceError("no GPIO pin driver found (not a Raspberry Pi?); "
                              "run with --sim to use simulated hardware") from None
