"""``bodycam export PATH --agency-key FILE --out DIR``: evidence to signed MP4 + JSON and HTML reports.

``bodycam export-check MP4 --trust-root ROOT.pem``: read an exported MP4's Content
Credentials and say whether they chain to the agency root and match every byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.errors import ExportError
from secure_store.errors import StoreError
from secure_store.keys import KeyFileError
from secure_store.sources import is_store_url, location

ERRORS = (ExportError, KeyFileError, StoreError)


def _export(args: argparse.Namespace) -> int:
    from export.exporter import ExportRefused, export_evidence
    from export.provenance import ExportSigner, read_pem
    from secure_store import keys
    from secure_store.cli import device_pub

    if not is_store_url(args.path) and not args.path.exists():
        print(f"bodycam export: {args.path}: no such file or directory", file=sys.stderr)
        return 2
    if bool(args.export_cert) != bool(args.export_key):
        print("bodycam export: --export-cert and --export-key go together", file=sys.stderr)
        return 2
    agency_key = keys.load_private_key(args.agency_key, "agency")
    device_key = device_pub(args.device_pub) if args.device_pub else None
    signer = ExportSigner.from_files(args.export_cert, args.export_key) if args.export_cert else None
    root = read_pem(args.trust_root, "trust root") if args.trust_root else None
    try:
        options = {"signer": signer, "trust_root": root, "best_effort": args.best_effort}
        if is_store_url(args.path):   # straight from the evidence store (docs/STORE.md)
            from export.from_store import export_from_source
            from secure_store.sources import open_source
            result = export_from_source(open_source(args.path), agency_key, args.out, device_key, **options)
        else:
            result = export_evidence(args.path, agency_key, args.out, device_key, **options)
    except ExportRefused as exc:
        for problem in exc.problems:
            print(f"FAIL {problem}", file=sys.stderr)
        print("bodycam export: --best-effort exports what verifies and names every gap", file=sys.stderr)
        raise
    for problem in result.verification.problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if not result.verification.audit_logs:
        print("bodycam export: note: no audit log beside the evidence, so none was checked", file=sys.stderr)
    if signer is None:
        print("bodycam export: note: not signed: no --export-cert given, so the MP4s carry no Content Credentials "
              "(the reports say so)", file=sys.stderr)
    for rec in result.recordings:
        tag = "PARTIAL " if rec.partial else ""
        print(f"{tag}{rec.recording_id}: {rec.frame_count} frames -> {rec.mp4} (sha256 {rec.mp4_sha256}"
              f"{', C2PA-signed' if rec.signed else ', unsigned'}), reports {rec.report.name}, {rec.html.name}")
        for missing in rec.missing:
            print(f"  missing: {missing}")
    for skipped in result.skipped:
        print(f"SKIPPED {skipped.recording_id}: {skipped.reason}", file=sys.stderr)
    if result.verification.problems:
        print(f"bodycam export: best effort: {len(result.verification.problems)} verification problem(s); "
              "only what verified was exported", file=sys.stderr)
    return 1 if result.skipped or result.verification.problems else 0


def _check(args: argparse.Namespace) -> int:
    from export.provenance import check_mp4, read_pem

    if not args.mp4.is_file():
        print(f"bodycam export-check: {args.mp4}: no such file", file=sys.stderr)
        return 2
    check = check_mp4(args.mp4, read_pem(args.trust_root, "trust root").decode())
    if check.state == "absent":
        print(f"{args.mp4.name}: no Content Credentials (an unsigned export, or not an export)")
        return 1
    evidence = check.evidence or {}
    print(f"{args.mp4.name}: C2PA {check.state}" + (f"; signed by {check.signer}" if check.signer else ""))
    if evidence:
        print(f"  device {evidence.get('device', {}).get('device_id')}, recording {evidence.get('recording_id')}, "
              f"{evidence.get('start_utc')} to {evidence.get('end_utc')}, {len(check.ingredients)} sealed segment(s)"
              + (", PARTIAL" if evidence.get("partial") else "")
              + (", BEST EFFORT" if evidence.get("best_effort") else ""))
    for failure in check.failures:
        print(f"  FAIL {failure}")
    if check.state == "Valid":
        print("  the signature is sound but its certificate does not chain to this trust root")
    return 0 if check.trusted else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="verify, decrypt and remux evidence to C2PA-signed MP4 with JSON and HTML reports",
        description="Verify everything under PATH with the device public key, then decrypt it with the agency "
                    "private key and remux each recording, without re-encoding, into a fast-start MP4 (markers "
                    "as chapters), signed with the agency export certificate (C2PA) when one is given, plus a JSON "
                    "and a self-contained HTML report. A recording that does not verify, or cannot be exported, is "
                    "skipped and named (exit 1); the others are still exported. A problem that could concern any "
                    "recording (the audit log, a segment without its manifest, the device key) exports nothing. "
                    "--best-effort also exports what verifies of damaged recordings.")
    p.add_argument("path", type=location, metavar="PATH",
                   help="a segment, a recording or a directory tree of evidence, or s3://BUCKET/PREFIX/DEVICE")
    p.add_argument("--agency-key", required=True, type=Path, metavar="FILE",
                   help="agency private key (PEM): X25519, or hybrid ML-KEM-768 + X25519 (two blocks)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the MP4s and reports")
    p.add_argument("--device-pub", type=Path, metavar="FILE",
                   help="device public key, Ed25519 or hybrid Ed25519 + ML-DSA-65 "
                        "(default: found beside the evidence)")
    p.add_argument("--export-cert", type=Path, metavar="CHAIN.pem",
                   help="agency export certificate, then its intermediates (PEM): sign each MP4 (C2PA)")
    p.add_argument("--export-key", type=Path, metavar="KEY.pem",
                   help="the export certificate's key (PEM; Ed25519 or ECDSA P-256)")
    p.add_argument("--trust-root", "--trust", type=Path, metavar="ROOT.pem",
                   help="agency root certificate: named in the reports, and each signed MP4 is checked against it")
    p.add_argument("--best-effort", action="store_true",
                   help="also export what verifies of damaged recordings, flag every gap, exit 1")
    p.set_defaults(func=_export)

    c = subparsers.add_parser(
        "export-check", help="check an exported MP4's Content Credentials (C2PA) against the agency root",
        description="Read the C2PA manifest of an exported MP4 and validate it against the agency root "
                    "certificate: exit 0 only if it is Trusted (signed under that root, every byte unchanged).")
    c.add_argument("mp4", type=Path, metavar="MP4")
    c.add_argument("--trust-root", "--trust", required=True, type=Path, metavar="ROOT.pem",
                   help="agency root certificate (PEM)")
    c.set_defaults(func=_check)
