"""``bodycam export PATH --agency-key FILE --out DIR [--device-pub FILE]``: evidence to MP4 + JSON report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.errors import ExportError
from secure_store.errors import StoreError
from secure_store.keys import KeyFileError

ERRORS = (ExportError, KeyFileError, StoreError)


def _export(args: argparse.Namespace) -> int:
    from export.exporter import ExportRefused, export_evidence
    from secure_store import keys

    if not args.path.exists():
        print(f"bodycam export: {args.path}: no such file or directory", file=sys.stderr)
        return 2
    agency_key = keys.load_private_key(args.agency_key, "agency")
    device_key = keys.load_public_key(args.device_pub, "device") if args.device_pub else None
    try:
        result = export_evidence(args.path, agency_key, args.out, device_key)
    except ExportRefused as exc:
        for problem in exc.problems:
            print(f"FAIL {problem}", file=sys.stderr)
        raise
    if not result.verification.audit_logs:
        print("bodycam export: note: no audit log beside the evidence, so none was checked", file=sys.stderr)
    for rec in result.recordings:
        print(f"{rec.recording_id}: {rec.frame_count} frames -> {rec.mp4} (sha256 {rec.mp4_sha256}), report {rec.report}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="verify, decrypt and remux evidence to MP4 with a JSON report (evidence system)",
        description="Verify everything under PATH with the device public key, then decrypt it with the agency "
                    "private key and remux each recording, without re-encoding, into one MP4 plus a JSON report. "
                    "Exits 1 and exports nothing if anything fails to verify.")
    p.add_argument("path", type=Path, metavar="PATH", help="a segment, a recording or a directory tree of evidence")
    p.add_argument("--agency-key", required=True, type=Path, metavar="FILE", help="agency X25519 private key (PEM)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the MP4s and reports")
    p.add_argument("--device-pub", type=Path, metavar="FILE",
                   help="device Ed25519 public key (default: found beside the evidence)")
    p.set_defaults(func=_export)
