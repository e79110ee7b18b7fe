"""``bodycam dock pull`` and ``bodycam dock watch``: the dock station's commands."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from dock.client import PullError, PullSummary
from link.transport import LinkError
from secure_store.errors import StoreError
from secure_store.keys import KeyFileError


def register(subparsers: Any) -> None:
    dock = subparsers.add_parser("dock", help="dock station: pull, verify and confirm evidence from devices",
                                 description="Pull sealed evidence from a docked device over USB serial.")
    actions = dock.add_subparsers(dest="dock_action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", required=True, help="serial port path or pyserial URL, e.g. /dev/ttyACM0")
        p.add_argument("--out", required=True, help="archive directory (one subdirectory per device)")
        p.add_argument("--dock-key", required=True, help="this dock's Ed25519 private key (PEM)")
        p.add_argument("--no-confirm", action="store_true",
                       help="pull and verify every segment, but do not confirm: the device keeps its copy")
        p.add_argument("--no-time-sync", action="store_true", help="do not set the device's clock offset")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--trust", metavar="ROOT_PEM", help="agency root: admit only devices it certifies")
        p.add_argument("--cert", metavar="PEM", help="this dock's certificate chain, shown to devices")
        p.add_argument("--crl", action="append", default=[], metavar="PEM", help="revocation list to check "
                       "devices against and hand on to them; repeatable")
        p.add_argument("--accept-new-key", action="store_true", help="accept a device's new, uncertified key "
                       "once (after a re-provisioning); its old key is kept as retired")

    pull = actions.add_parser("pull", help="pull everything new from the device on PORT once")
    common(pull)
    pull.set_defaults(func=_pull)
    watch = actions.add_parser("watch", help="serve devices as they dock and undock, until interrupted")
    common(watch)
    watch.add_argument("--interval", type=float, default=60.0,
                       help="seconds between pulls while a device stays docked (default 60)")
    watch.add_argument("--max-sessions", type=int, default=0, help="stop after N pulls (default: never)")
    watch.set_defaults(func=_watch)


def _load_key(path: str) -> Any:
    from secure_store.keys import check_private_mode, load_private_key
    key = load_private_key(path, "dock")
    check_private_mode(path)
    return key


def _run_pull(args: argparse.Namespace, key: Any) -> PullSummary:
    from dock.client import pull
    from dock.trust import DockTrust
    trust = DockTrust.load(args.trust, args.crl, args.cert, args.accept_new_key)
    progress = not args.no_progress and sys.stderr.isatty()   # a bar only for a person watching, never in logs
    return pull(args.port, args.out, key, progress=progress,
                confirm=not args.no_confirm, sync_time=not args.no_time_sync, trust=trust)


def _report(summary: PullSummary, confirm: bool = True) -> None:
    mib = summary.bytes_fetched / 2**20
    rate = mib / summary.seconds if summary.seconds else 0.0
    footage = [n for n in summary.fetched if not n.startswith("audit/")]
    fetched = (f"fetched {len(summary.fetched)} files ({mib:.1f} MiB, {rate:.1f} MiB/s"
               f"{f', {summary.bytes_resumed} bytes resumed' if summary.bytes_resumed else ''})" if footage
               else "no new footage" + (", audit log updated" if summary.fetched else ""))
    print(f"{summary.device_id}: {fetched}, "
          f"{len(summary.skipped)} already here; {len(summary.verified)} segments verified, "
          + (f"{len(summary.confirmed)} confirmed and released on the device" if confirm
             else "none confirmed (--no-confirm): the device keeps its copy")
          + (f"; clock offset {summary.clock_offset_us / 1000:+.1f} ms" if summary.clock_offset_us is not None else "")
          + (f"; line noise: {summary.damaged_frames} frames failed their CRC and came again"
             + (f", {summary.repaired_frames} had one bad bit, repaired" if summary.repaired_frames else "")
             if summary.damaged_frames or summary.repaired_frames else ""))
    for problem in summary.problems:
        print(f"  problem: {problem}")


def _pull(args: argparse.Namespace) -> int:
    summary = _run_pull(args, _load_key(args.dock_key))
    _report(summary, not args.no_confirm)
    return 0 if summary.ok else 1


def _present(port: str) -> bool:
    return "://" in port or os.path.exists(port)


def _watch(args: argparse.Namespace) -> int:
    key = _load_key(args.dock_key)
    sessions, failures = 0, 0
    print(f"watching {args.port} (Ctrl-C to stop)", flush=True)
    while not args.max_sessions or sessions < args.max_sessions:
        if not _present(args.port):
            time.sleep(0.5)
            continue
        try:
            summary = _run_pull(args, key)
        except (PullError, LinkError) as exc:
            print(f"bodycam: {exc}", file=sys.stderr, flush=True)
            failures += 1
            time.sleep(1.0)
            continue
        sessions += 1
        _report(summary, not args.no_confirm)
        sys.stdout.flush()
        if args.max_sessions and sessions >= args.max_sessions:
            break
        deadline = time.monotonic() + args.interval
        while _present(args.port) and time.monotonic() < deadline:
            # the device stays docked: pull again later, or when it comes back (polled often
            # enough that a quick undock and redock is not mistaken for staying docked)
            time.sleep(0.1)
    return 0 if not failures else 1


ERRORS = (PullError, LinkError, KeyFileError, StoreError)
