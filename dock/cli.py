"""``bodycam dock pull`` and ``bodycam dock watch``: the dock station's commands.

With ``--store-config`` (the dock's TOML, 0600) every verified segment also goes into the
evidence store (``dock.ingest``), and with ``confirm_after = "store"`` (the default) the
camera is told to free a segment only once the store holds it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dock.client import PullError, PullSummary
from dock.ingest import IngestError
from dock.store_config import StoreConfigError
from link.transport import LinkError
from secure_store.errors import StoreError
from secure_store.keys import KeyFileError


def register(subparsers: Any) -> None:
    dock = subparsers.add_parser("dock", help="dock station: pull, verify and confirm evidence from devices",
                                 description="Pull sealed evidence from a docked device over USB serial.")
    actions = dock.add_subparsers(dest="dock_action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, bays: bool = False) -> None:
        if bays:
            p.add_argument("--port", action="append", help="a bay's serial port path or pyserial URL; repeat for "
                                                           "each bay (default: [dock] ports of --store-config)")
        else:
            p.add_argument("--port", required=True, help="serial port path or pyserial URL, e.g. /dev/ttyACM0")
        p.add_argument("--out", required=True, help="archive directory (one subdirectory per device)")
        p.add_argument("--dock-key", required=True, help="this dock's private key (PEM: Ed25519, or Ed25519 + ML-DSA-65)")
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
        p.add_argument("--store-config", type=Path, metavar="FILE",
                       help="dock config (TOML, 0600): ingest into the evidence store (S3 Object Lock) and "
                            "confirm only what it holds; see docs/STORE.md")

    pull = actions.add_parser("pull", help="pull everything new from the device on PORT once")
    common(pull)
    pull.set_defaults(func=_pull)
    watch = actions.add_parser("watch", help="serve devices as they dock and undock, in every bay, until interrupted")
    common(watch, bays=True)
    watch.add_argument("--interval", type=float, default=60.0,
                       help="seconds between pulls while a device stays docked (default 60)")
    watch.add_argument("--max-sessions", type=int, default=0, help="stop after N pulls per bay (default: never)")
    watch.set_defaults(func=_watch)
    status = actions.add_parser("status", help="show a docked camera's battery, storage, firmware, clock and "
                                               "queued footage, without pulling")
    status.add_argument("--port", required=True, help="serial port path or pyserial URL, e.g. /dev/ttyACM0")
    status.add_argument("--dock-key", required=True, help="this dock's private key (PEM: Ed25519, or Ed25519 + ML-DSA-65)")
    status.set_defaults(func=_status)


def _load_key(path: str) -> Any:
    """The dock key, classic or hybrid: a hybrid one signs receipts with both halves (the link uses Ed25519)."""
    from secure_store.keys import check_private_mode, load_signing_key
    key = load_signing_key(path, "dock")
    check_private_mode(path)
    return key


def _ingestor(args: argparse.Namespace) -> Any:
    """The store ingest for ``--store-config`` (None without); refuses a bad bucket up front."""
    if not args.store_config:
        return None
    from dock.ingest import Ingestor, StoreUnreachable
    from dock.store_config import load_store_config
    ingestor = Ingestor(load_store_config(args.store_config), args.out)
    try:
        ingestor.check_bucket()
    except StoreUnreachable as exc:   # pull anyway: the queue uploads once the store is back
        print(f"bodycam: {exc}; pulling into the local archive, the store gets it later", file=sys.stderr)
    return ingestor


def _trust(args: argparse.Namespace) -> Any:
    from dock.trust import DockTrust
    return DockTrust.load(args.trust, args.crl, args.cert, args.accept_new_key)


def _run_pull(args: argparse.Namespace, key: Any, ingestor: Any = None) -> PullSummary:
    from dock.bays import DockStation
    station = DockStation([args.port], args.out, key, ingestor=ingestor,
                          confirm_after=ingestor.config.confirm_after if ingestor else "store",
                          progress=not args.no_progress and sys.stderr.isatty(), confirm=not args.no_confirm,
                          sync_time=not args.no_time_sync, trust=_trust(args))
    return station.pull_one(args.port)


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
             if summary.damaged_frames or summary.repaired_frames else "")
          + (f"; {len(summary.awaiting_store)} kept on the device until the evidence store holds them"
             if summary.awaiting_store else ""))
    for problem in summary.problems:
        print(f"  problem: {problem}")


def _pull(args: argparse.Namespace) -> int:
    key = _load_key(args.dock_key)
    ingestor = _ingestor(args)
    summary = _run_pull(args, key, ingestor)
    _report(summary, not args.no_confirm)
    _report_recordings(args, summary)
    if ingestor is not None:
        held, left = ingestor.drain()
        print(f"evidence store s3://{ingestor.config.bucket}: {held} more object(s) held; {left} queued for later"
              + (f"; {len(ingestor.conflicts)} CONFLICT(S), see the log" if ingestor.conflicts else ""))
        return 0 if summary.ok and not left and not ingestor.conflicts else 1
    return 0 if summary.ok else 1


def _report_recordings(args: argparse.Namespace, summary: PullSummary) -> None:
    """The camera's status and the recordings this pull brought in (dock.report)."""
    from pathlib import Path

    from dock.report import format_recordings, format_status, recordings_in

    if getattr(args, "quiet", False):
        return
    pulled = [n for n in summary.fetched if n.endswith(".seg")]
    for line in format_recordings(recordings_in(Path(args.out) / summary.device_id, pulled)):
        print(line)
    if summary.status:
        print("camera at docking:")
        print("\n".join(format_status(summary.status)))


def _status(args: argparse.Namespace) -> int:
    from dock.client import DockClient
    from dock.report import format_status

    with DockClient.connect(args.port, _load_key(args.dock_key)) as client:
        status = client.status()
    print("\n".join(format_status(status)))
    return 0


def _present(port: str) -> bool:
    return "://" in port or os.path.exists(port)


def _watch(args: argparse.Namespace) -> int:
    from dock.bays import DockStation
    key = _load_key(args.dock_key)
    ingestor = _ingestor(args)
    ports = args.port or (list(ingestor.config.ports) if ingestor else [])
    if not ports:
        raise StoreConfigError("no bays: give --port (repeat it for each bay) or [dock] ports in --store-config")

    def report(port: str, result: Any) -> None:
        if isinstance(result, PullSummary):
            _report(result, not args.no_confirm)
            sys.stdout.flush()
        else:
            print(f"bodycam: {port}: {result}", file=sys.stderr, flush=True)

    station = DockStation(ports, args.out, key, ingestor=ingestor,
                          confirm_after=ingestor.config.confirm_after if ingestor else "store",
                          interval=args.interval, max_sessions=args.max_sessions, report=report,
                          progress=not args.no_progress and len(ports) == 1 and sys.stderr.isatty(), confirm=not args.no_confirm,
                          sync_time=not args.no_time_sync, trust=_trust(args))
    print(f"watching {', '.join(ports)} (Ctrl-C to stop)", flush=True)
    return station.run()


ERRORS = (PullError, LinkError, KeyFileError, StoreError, IngestError, StoreConfigError)
