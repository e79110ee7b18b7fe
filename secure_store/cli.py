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
from secure_store.sources import is_store_url, location

ERRORS = (StoreError, keys.KeyFileError)


def register(subparsers: argparse._SubParsersAction) -> None:
    keys_parser = subparsers.add_parser("keys", help="make key pairs")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", metavar="ACTION")
    new = keys_sub.add_parser("new", help="write PREFIX.key (private, 0600) and PREFIX.pub")
    new.add_argument("kind", help=f"one of: {', '.join(keys.KINDS)}")
    new.add_argument("--out", required=True, metavar="PREFIX", help="path prefix of the two files")
    new.add_argument("--classic", action="store_true",
                     help="agency: X25519 only (default: hybrid ML-KEM-768 + X25519, so footage recorded today "
                          "stays closed to a future quantum computer)")
    new.add_argument("--pq", action="store_true",
                     help="device, dock, vendor: hybrid Ed25519 + ML-DSA-65 signing key (default: Ed25519 only)")
    new.set_defaults(func=cmd_keys_new)
    keys_parser.set_defaults(func=lambda args: _usage(keys_parser))

    verify = subparsers.add_parser("verify", help="verify sealed evidence with public keys only")
    verify.add_argument("path", type=location, help="a segment, a recording's directory or a whole tree, "
                                                    "or s3://BUCKET/PREFIX/DEVICE in the evidence store")
    verify.add_argument("--device-pub", type=Path, metavar="FILE", action="append",
                        help="device public key; repeat for keys retired by re-provisioning "
                             "(default: identity.json or device.pub beside the evidence)")
    verify.add_argument("--trust", type=Path, metavar="ROOT_PEM",
                        help="the agency root certificate (a hybrid agency's trust-roots.pem: both roots): "
                             "trust only device and dock keys certified by it")
    verify.add_argument("--crl", type=Path, action="append", default=[], metavar="FILE",
                        help="a certificate revocation list (PEM) of the agency; repeat for several")
    verify.add_argument("--anchor", action="append", default=[], metavar="SEQ:DIGEST",
                        help="an audit head recorded elsewhere that the log must still reach; repeatable")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=cmd_verify)
    from secure_store import ca_cli
    ca_cli.register(subparsers)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return 2


def cmd_keys_new(args: argparse.Namespace) -> int:
    if args.kind not in keys.KINDS:
        raise UsageError(f"unknown key kind {args.kind!r} (expected one of {', '.join(keys.KINDS)})")
    if args.classic and args.kind != "agency":
        raise UsageError(f"--classic is for agency keys (a {args.kind} key is classic unless --pq)")
    if args.pq and args.kind not in keys.HYBRID_KINDS:
        raise UsageError(f"a {args.kind} key has no post-quantum form")
    if args.pq and args.classic:
        raise UsageError("--pq and --classic contradict each other")
    # Agency keys are hybrid by default: harvest-now-decrypt-later threatens footage recorded today,
    # for ~1.1 KB and well under a millisecond per 10-s segment (BENCHMARKS.md).
    pq = not args.classic if args.kind == "agency" else args.pq
    key_path, pub_path = keys.write_keypair(args.kind, args.out, pq=pq)
    public = keys.load_public_key(pub_path, args.kind) if args.kind in ("agency", "export") \
        else keys.load_verify_key(pub_path, args.kind)
    kind = ("hybrid " if pq else "") + args.kind
    print(f"wrote {key_path} (private, 0600) and {pub_path}; {kind} key {keys.fingerprint(public)}")
    return 0


def device_pub(path: Path):
    """A ``--device-pub`` file: a classic Ed25519 key as the plain key, a hybrid one (two PEM blocks) whole."""
    key = keys.load_verify_key(path, "device")
    return key if key.hybrid else key.ed25519


def cmd_verify(args: argparse.Namespace) -> int:
    from secure_store.verify import verify_path

    if not is_store_url(args.path) and not args.path.exists():
        raise UsageError(f"{args.path}: no such file or directory")
    device_key = None
    if args.device_pub:
        try:
            device_key = [device_pub(p) for p in args.device_pub]
        except keys.KeyFileError as exc:
            raise UsageError(str(exc)) from None
    root, crls, anchors = _trust_args(args)
    path = args.path
    if is_store_url(args.path):   # straight from the evidence store, nothing copied (docs/STORE.md)
        from secure_store.sources import SourcePath, open_source
        path = SourcePath(open_source(args.path))
    report = verify_path(path, device_key, trust_root=root, crls=crls, anchors=anchors)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for problem in report.problems:
            print(f"FAIL {problem}")
        for warning in report.warnings:
            print(f"WARN {warning}")
        for directory, trust in report.trust.items():
            signatures = f"; signatures {trust['signatures']}" if trust.get("signatures") else ""
            print(f"TRUST {directory}: {trust['source']}{signatures}")
        recordings = {s.manifest.recording_id for s in report.segments}
        _print_protection(report.segments)
        status = "OK" if report.ok else "FAILED"
        if not report.segments and not report.audit_logs and not report.problems:
            print(f"FAILED: no evidence found under {args.path}")
        else:
            anchored = ("keys anchored to the agency root" if report.anchored else
                        "keys NOT anchored to an agency root (taken from beside the evidence or given)")
            print(f"{status}: {len(report.segments)} segment(s) in {len(recordings)} recording(s), "
                  f"{len(report.audit_logs)} audit log(s), {len(report.problems)} problem(s); {anchored}")
    return 0 if report.ok else 1


def _print_protection(segments: list) -> None:
    """One line per kind of protection the segments have (FORMAT.md, "Post-quantum protection")."""
    kinds: dict[tuple, int] = {}
    for s in segments:
        kind = tuple(s.protection[k] for k in ("signatures", "suite", "key_wrap"))
        kinds[kind] = kinds.get(kind, 0) + 1
    for (signatures, suite, wrap), n in sorted(kinds.items(), key=str):
        print(f"PROTECTION {n} segment(s): signatures {signatures}, key wrap suite {suite} ({wrap})")


def _trust_args(args: argparse.Namespace) -> tuple:
    """The --trust root, --crl lists and --anchor heads, each checked (UsageError: exit 2)."""
    import re

    from secure_store import pki
    from secure_store.audit_format import AuditHead

    root = None
    if args.trust is not None:
        try:
            root = pki.read_roots(args.trust)  # the Ed25519 root, and the ML-DSA-65 one of a hybrid agency
        except pki.PkiError as exc:
            raise UsageError(f"--trust wants the agency root certificate: {exc}") from None
    try:
        crls = pki.read_crls(args.crl)
    except pki.PkiError as exc:
        raise UsageError(f"--crl: {exc}") from None
    anchors = []
    for text in args.anchor:
        m = re.fullmatch(r"(0|[1-9][0-9]{0,18}):([0-9a-f]{64})", text)
        if not m:
            raise UsageError(f"--anchor {text!r} must be SEQ:DIGEST (entry number, 64 lowercase hex digits)")
        anchors.append(AuditHead(int(m.group(1)), m.group(2)))
    return root, crls, anchors
