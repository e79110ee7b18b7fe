"""Device configuration: one TOML file, a default for every setting, strict validation.

A device runs with no file at all (every setting has a default); a file only overrides.
Every bad value is refused with one line that names the key and what is allowed, and an
unknown key is refused too, so a typo never silently falls back to a default::

    [video]
    pre_event_s = 30          # 0-120 s of video kept in RAM before a press
    resolution = "1280x720"
    fps = 30
    bitrate = 10000000        # bits per second
    segment_s = 10

    [pins]                    # BCM GPIO numbers, or false when not fitted
    record_button = 17
    lightbar = false

    [controls]
    record_start = "double"   # or "single"

    [gps]                     # NMEA 0183 receiver on a UART (firmware.gps)
    enabled = true
    port = "/dev/ttyAMA0"
    baud = 9600

    [audio]
    enabled = true
    pre_event = false         # keep sound in the pre-event buffer (default: it starts at the press)
    bitrate = 64000           # AAC-LC, 48 kHz mono
    device = "default"        # ALSA capture device on a Pi (e.g. "hw:1,0")
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

RESOLUTIONS = ("320x240", "640x480", "1280x720", "1920x1080")
FPS_CHOICES = (10, 15, 24, 25, 30)
GESTURES = ("double", "single")
PIN_RANGE = range(2, 28)  # BCM GPIO2..GPIO27 on the 40-pin header


class ConfigError(ValueError):
    """A configuration file is unreadable, or a setting in it is not allowed."""

    exit_code = 2


@dataclass(frozen=True)
class VideoConfig:
    pre_event_s: float = 30.0
    resolution: str = "1280x720"
    fps: int = 30
    bitrate: int = 10_000_000
    segment_s: float = 10.0

    @property
    def size(self) -> tuple[int, int]:
        width, height = self.resolution.split("x")
        return int(width), int(height)


@dataclass(frozen=True)
class AudioConfig:
    """Sound: AAC-LC 48 kHz mono. ``pre_event = false`` keeps the pre-event buffer silent."""

    enabled: bool = True
    pre_event: bool = False
    bitrate: int = 64_000
    device: str = "default"  # ALSA PCM the Pi's microphone is read from


@dataclass(frozen=True)
class PinConfig:
    """BCM pin numbers; ``None`` (``false`` in TOML) means the part is not fitted."""

    record_button: int | None = 17
    function_button: int | None = 27
    holster: int | None = 22
    lightbar: int | None = 23
    dock_detect: int | None = 24
    led_green: int | None = 5
    led_red: int | None = 6
    led_amber: int | None = 13
    buzzer: int | None = 19
    haptic: int | None = 12


@dataclass(frozen=True)
class ControlsConfig:
    record_start: str = "double"
    double_press_s: float = 1.0
    stop_hold_s: float = 3.0
    stealth_hold_s: float = 3.0
    bounce_s: float = 0.03
    stealth_allowed: bool = True
    auto_trigger: bool = True


@dataclass(frozen=True)
class SignalsConfig:
    reminder_s: float = 120.0


@dataclass(frozen=True)
class StorageConfig:
    reserve_mb: int = 64  # kept free on the disk for the OS and the audit log
    quota_mb: int = 0  # 0: the whole file system; >0: a cap (used by the simulator)


@dataclass(frozen=True)
class PowerConfig:
    battery_low_percent: int = 15
    battery_shutdown_percent: int = 5


@dataclass(frozen=True)
class GpsConfig:
    enabled: bool = False
    port: str = "/dev/ttyAMA0"
    baud: int = 9600
    interval_s: float = 1.0       # at most one fix sealed per interval
    pre_event: bool = False       # False: location only while recording; True: the pre-event window too


@dataclass(frozen=True)
class ClockSettings:
    dock_error_ms: float = 20.0       # how wrong a dock's time may be when it arrives
    gps_latency_ms: float = 500.0     # how late NMEA may arrive after the epoch it names
    drift_ppm: float = 50.0           # crystal tolerance assumed until the drift is measured


@dataclass(frozen=True)
class PathsConfig:
    root: str = "/var/lib/bodycam"
    serial_port: str = "/dev/ttyGS0"


@dataclass(frozen=True)
class Config:
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    pins: PinConfig = field(default_factory=PinConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    gps: GpsConfig = field(default_factory=GpsConfig)
    clock: ClockSettings = field(default_factory=ClockSettings)


def _number(lo: float, hi: float, *, integer: bool = False):
    def check(key: str, value: Any) -> Any:
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"config: {key} = {value!r} is not allowed (expected {kind} from {lo:g} to {hi:g})")
        return value if integer else float(value)
    return check


def _choice(choices: tuple):
    def check(key: str, value: Any) -> Any:
        if isinstance(value, bool) or value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"config: {key} = {value!r} is not allowed (expected one of {allowed})")
        return value
    return check


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"config: {key} = {value!r} is not allowed (expected true or false)")
    return value


def _pin(key: str, value: Any) -> int | None:
    if value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in PIN_RANGE:
        raise ConfigError(
            f"config: {key} = {value!r} is not allowed (expected a BCM GPIO number from 2 to 27, or false)"
        )
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config: {key} = {value!r} is not allowed (expected a non-empty string)")
    return value


_SECTIONS: dict[str, tuple[type, dict[str, Any]]] = {
    "video": (VideoConfig, {
        "pre_event_s": _number(0, 120),
        "resolution": _choice(RESOLUTIONS),
        "fps": _choice(FPS_CHOICES),
        "bitrate": _number(100_000, 50_000_000, integer=True),
        "segment_s": _number(2, 3600),
    }),
    "audio": (AudioConfig, {
        "enabled": _boolean,
        "pre_event": _boolean,
        "bitrate": _number(16_000, 256_000, integer=True),
        "device": _text,
    }),
    "pins": (PinConfig, {name: _pin for name in (f.name for f in fields(PinConfig))}),
    "controls": (ControlsConfig, {
        "record_start": _choice(GESTURES),
        "double_press_s": _number(0.2, 3),
        "stop_hold_s": _number(0.1, 10),
        "stealth_hold_s": _number(0.1, 10),
        "bounce_s": _number(0.001, 0.2),
        "stealth_allowed": _boolean,
        "auto_trigger": _boolean,
    }),
    "signals": (SignalsConfig, {"reminder_s": _number(10, 3600)}),
    "storage": (StorageConfig, {
        "reserve_mb": _number(0, 1_000_000, integer=True),
        "quota_mb": _number(0, 10_000_000, integer=True),
    }),
    "power": (PowerConfig, {
        "battery_low_percent": _number(1, 50, integer=True),
        "battery_shutdown_percent": _number(0, 20, integer=True),
    }),
    "paths": (PathsConfig, {"root": _text, "serial_port": _text}),
    "gps": (GpsConfig, {
        "enabled": _boolean, "port": _text, "baud": _choice((4800, 9600, 19200, 38400, 57600, 115200)),
        "interval_s": _number(0.1, 60), "pre_event": _boolean,
    }),
    "clock": (ClockSettings, {
        "dock_error_ms": _number(0, 60_000), "gps_latency_ms": _number(0, 5_000), "drift_ppm": _number(0.1, 1000),
    }),
}


def from_mapping(data: Mapping[str, Any]) -> Config:
    """Build a validated Config from parsed TOML (or any nested mapping)."""
    sections: dict[str, Any] = {}
    for name, values in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"config: unknown section [{name}] (allowed: {', '.join(_SECTIONS)})")
        cls, checks = _SECTIONS[name]
        if not isinstance(values, Mapping):
            raise ConfigError(f"config: {name} must be a table [{name}]")
        checked = {}
        for key, value in values.items():
            if key not in checks:
                raise ConfigError(f"config: unknown key {name}.{key} (allowed: {', '.join(checks)})")
            checked[key] = checks[key](f"{name}.{key}", value)
        sections[name] = cls(**checked)
    config = Config(**sections)
    _check_together(config)
    return config


def _check_together(config: Config) -> None:
    used: dict[int, str] = {}
    for f in fields(PinConfig):
        pin = getattr(config.pins, f.name)
        if pin is None:
            continue
        if pin in used:
            raise ConfigError(f"config: pins.{f.name} = {pin} is already used by pins.{used[pin]} (pins must differ)")
        used[pin] = f.name
    if config.power.battery_shutdown_percent >= config.power.battery_low_percent:
        raise ConfigError(
            "config: power.battery_shutdown_percent must be below power.battery_low_percent "
            f"({config.power.battery_low_percent})"
        )


def load(path: str | Path | None) -> Config:
    """Read and validate a TOML file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config: {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    return from_mapping(data)


def with_overrides(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of ``config`` with some settings replaced (validated like a file): for tests and the demo."""
    merged = {}
    for f in fields(Config):
        current = getattr(config, f.name)
        merged[f.name] = {k.name: _to_toml(getattr(current, k.name)) for k in fields(current)}
        merged[f.name].update(sections.get(f.name, {}))
    unknown = set(sections) - set(merged)
    if unknown:
        raise ConfigError(f"config: unknown section [{sorted(unknown)[0]}] (allowed: {', '.join(_SECTIONS)})")
    return from_mapping(merged)


def _to_toml(value: Any) -> Any:
    return False if value is None else value


def to_toml(config: Config) -> str:
    """``config`` as a TOML file that loads back to an equal Config (``bodycam config show``)."""
    lines: list[str] = []
    for section in fields(Config):
        values = getattr(config, section.name)
        lines.append(f"[{section.name}]")
        for f in fields(values):
            value = _to_toml(getattr(values, f.name))
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{f.name} = {text}")
        lines.append("")
    return "\n".join(lines)


__all__ = ["Config", "ConfigError", "load", "from_mapping", "with_overrides", "to_toml"]
