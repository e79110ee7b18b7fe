"""`bodycam device` (the firmware daemon), `bodycam demo` (the simulated journey) and `bodycam config show`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from firmware.config import ConfigError
from firmware.demo import DemoError
from firmware.machine import MachineError


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # each one seals and stops


def _effective_config(args: argparse.Namespace):
    from firmware import config as config_mod

    config_path = args.config
    if config_path is None and args.root and (Path(args.root) / "config.toml").exists():
        config_path = Path(args.root) / "config.toml"
    return config_mod.load(config_path), config_path


def _say(line: str) -> None:
    """A daemon line on stderr; a closed terminal (SIGHUP) must not stop the shutdown."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _device(args: argparse.Namespace) -> int:
    from firmware import rootlock
    from firmware.device import Device, DeviceError

    config, _ = _effective_config(args)
    root = Path(args.root or config.paths.root)
    if not root.is_dir():
        error = DeviceError(f"device root {root} does not exist (provision it first, or fix --root)")
        error.exit_code = 2  # a missing input path is bad usage
        raise error
    port = args.port if args.port else (None if args.sim else config.paths.serial_port)
    with rootlock.acquire(root) as lock:  # one daemon per device root, before anything is built
        device = Device(root, config, sim=args.sim, port=port, camera_clock="real", root_lock=lock)
        stop = threading.Event()
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda signum, _frame: stop.set())
        device.start()
        _say(f"bodycam: device {device.device_id} running ({'simulated' if args.sim else 'Raspberry Pi'}); "
             f"state {device.machine.state.value}")
        try:
            if args.sim:
                _console(device, stop)
            else:
                stop.wait()
        finally:
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the sealing short
            device.stop("daemon stopped")
            _say(f"bodycam: device {device.device_id} stopped; {_last_words(device)}")
    return 0


def _last_words(device) -> str:
    rec = device.machine.last_recording
    return "no recording" if rec is None else f"last recording {rec.recording_id} sealed"


def _console(device, stop: threading.Event) -> None:
    from firmware.console import SignalWatch, SimConsole

    console = SimConsole(device)
    SignalWatch(device.signals, lambda line: _print_line(line))
    _say("type commands (help for the list, quit to stop)")
    reader = threading.Thread(target=_read_lines, args=(console, stop), name="console", daemon=True)
    reader.start()
    stop.wait()


def _read_lines(console, stop: threading.Event) -> None:
    from firmware.console import ConsoleError, Quit

    for line in sys.stdin:
        try:
            answer = console.execute(line)
        except ConsoleError as exc:
            answer = f"error: {exc}"
        except Quit:
            break
        if answer:
            _print_line(answer)
    stop.set()


def _print_line(line: str) -> None:
    try:
        print(line, flush=True)
    except (OSError, ValueError):
        pass  # stdout gone (terminal closed): the device goes on until it is told to stop


def _config_show(args: argparse.Namespace) -> int:
    from firmware.config import to_toml

    config, path = _effective_config(args)
    source = f"{path} over the defaults" if path else "the defaults (no config file)"
    print(f"# effective settings: {source}")
    print(to_toml(config), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from firmware.demo import run_demo

    quiet = getattr(args, "quiet", False)  # --quiet: the summary only, not each step
    summary = run_demo(args.out, resolution=args.resolution,
                       say=lambda line: None if quiet else print(f"demo: {line}", flush=True))
    ok = summary.verified and not summary.problems
    print()
    print(f"  device           {summary.device_id} (SIMULATION ONLY) in {summary.out}")
    print(f"  segments         {summary.segments} sealed, {summary.bytes_sealed:,} bytes")
    print(f"  pre-event        {summary.pre_event_s:.1f} s before the press, on disk")
    print(f"  recorded         {summary.recorded_s:.1f} s after the press, markers: {', '.join(summary.markers) or '-'}")
    print(f"  dock pull        {summary.pulled} files, {summary.confirmed} segments confirmed and released")
    print(f"  verification     {'OK' if ok else 'FAILED'}")
    print(f"  protection       {summary.protection}")
    for problem in summary.problems:
        print(f"    problem: {problem}")
    for mp4, report in zip(summary.mp4s, summary.reports):
        print(f"  mp4              {mp4}")
        print(f"  report           {report}")
    print(f"  wall time        {summary.wall_s:.1f} s")
    return 0 if ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("device", help="run the camera firmware daemon",
                              description="Run the body camera: buttons, LEDs, pre-event buffer, sealed "
                                          "recording, dock link. --sim runs it on simulated hardware and "
                                          "reads button presses from stdin.")
    p.add_argument("--sim", action="store_true", help="simulated camera, MockFactory pins, sim battery")
    p.add_argument("--config", type=Path, help="TOML config (default: ROOT/config.toml if present)")
    p.add_argument("--root", type=Path, help="device root (default: paths.root from the config)")
    p.add_argument("--port", help="dock link serial port (default: paths.serial_port; none with --sim)")
    p.set_defaults(func=_device)

    c = subparsers.add_parser("config", help="device configuration: show the effective settings",
                              description="Show the settings a device runs with: the defaults, overridden by "
                                          "the config file. docs/bodycam.sample.toml lists every setting.")
    actions = c.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the effective settings as TOML")
    show.add_argument("--config", type=Path, help="TOML config (default: ROOT/config.toml if present)")
    show.add_argument("--root", type=Path, help="device root whose config.toml to read")
    show.set_defaults(func=_config_show)

    d = subparsers.add_parser("demo", help="simulated device end to end: record, dock pull, verify, export",
                              description="Provision a throw-away simulated device (SIMULATION ONLY keys), "
                                          "record with pre-event, pull over a simulated USB link, verify and "
                                          "export to MP4.")
    d.add_argument("--out", type=Path, default=Path("demo-output"), help="output directory (default: demo-output)")
    d.add_argument("--resolution", default="1280x720", choices=("320x240", "640x480", "1280x720", "1920x1080"),
                   help="sim camera resolution (default: 1280x720)")
    d.set_defaults(func=_demo)


def _errors() -> tuple[type[BaseException], ...]:
    from dock.client import PullError
    from export.errors import ExportError
    from firmware.console import ConsoleError
    from firmware.device import DeviceError
    from firmware.provision import ProvisionError
    from firmware.rootlock import RootLockError
    from firmware.update.slots import UpdateError
    from secure_store.errors import StoreError
    from secure_store.keys import KeyFileError

    return (ConfigError, DemoError, DeviceError, MachineError, ConsoleError, ProvisionError, UpdateError,
            StoreError, KeyFileError, PullError, ExportError, RootLockError)


ERRORS = _errors()
