"""``bodycam keys new`` and ``bodycam verify``: key files and public-key verification.

Exit codes: 0 everything verifies / done, 1 integrity problem (each named on
its own line), 2 bad usage (unknown key kind, missing path or key file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secure_store import keys
from secure_store.errors import StoreError, UsageError

ERRORS = (StoreError, keys.KeyFileError)


def register(subparsers: argparse._SubParsersAction) -> None:
    keys_parser = subparsers.add_parser("keys", help="make key pairs")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", metavar="ACTION")
    new = keys_sub.add_parser("new", help="write PREFIX.key (private, 0600) and PREFIX.pub")
    new.add_argument("kind", help=f"one of: {', '.join(keys.KINDS)}")
    new.add_argument("--out", required=True, metavar="PREFIX", help="path prefix of the two files")
    new.set_defaults(func=cmd_keys_new)
    keys_parser.set_defaults(func=lambda args: _usage(keys_parser))

    verify = subparsers.add_parser("verify", help="verify sealed evidence with public keys only")
    verify.add_argument("path", type=Path, help="a segment, a recording's directory or a whole tree")
    verify.add_argument("--device-pub", type=Path, metavar="FILE", action="append",
                        help="device public key; repeat for keys retired by re-provisioning "
                             "(default: identity.json or device.pub beside the evidence)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=cmd_verify)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return 2


def cmd_keys_new(args: argparse.Namespace) -> int:
    if args.kind not in keys.KINDS:
        raise UsageError(f"unknown key kind {args.kind!r} (expected one of {', '.join(keys.KINDS)})")
    key_path, pub_path = keys.write_keypair(args.kind, args.out)
    fp = keys.fingerprint(keys.load_public_key(pub_path, args.kind))
    print(f"wrote {key_path} (private, 0600) and {pub_path}; {args.kind} key {fp}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from secure_store.verify import verify_path

    if not args.path.exists():
        raise UsageError(f"{args.path}: no such file or directory")
    device_key = None
    if args.device_pub:
        try:
            device_key = [keys.load_public_key(p, "device") for p in args.device_pub]
        except keys.KeyFileError as exc:
            raise UsageError(str(exc)) from None
    report = verify_path(args.path, device_key)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for problem in report.problems:
            print(f"FAIL {problem}")
        recordings = {s.manifest.recording_id for s in report.segments}
        status = "OK" if report.ok else "FAILED"
        if not report.segments and not report.audit_logs and not report.problems:
            print(f"FAILED: no evidence found under {args.path}")
        else:
            print(f"{status}: {len(report.segments)} segment(s) in {len(recordings)} recording(s), "
                  f"{len(report.audit_logs)} audit log(s), {len(report.problems)} problem(s)")
    return 0 if report.ok else 1
