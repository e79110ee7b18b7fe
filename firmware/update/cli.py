"""``bodycam provision`` and ``bodycam firmware {build,inspect,install,status,flash}``: the technician's tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from firmware.update.image import ImageError
from firmware.provision import ProvisionError
from firmware.update.slots import UpdateError
from secure_store.errors import StoreError, UsageError
from secure_store.keys import KeyFileError

ERRORS = (ImageError, ProvisionError, UpdateError, KeyFileError, StoreError)


def _provision(args: argparse.Namespace) -> int:
    from firmware import provision

    if args.enroll_dock:
        if args.device_id or args.agency_pub or args.vendor_pub or args.dock_pub or args.force or args.pq \
                or args.classic:
            print("bodycam provision: --enroll-dock takes only --root", file=sys.stderr)
            return 2
        fp, new = provision.enroll_dock(args.root, args.enroll_dock)
        print(f"dock {fp[:16]} {'enrolled' if new else 'was already enrolled'}")
        return 0
    missing = [flag for flag, value in (("--device-id", args.device_id), ("--agency-pub", args.agency_pub),
                                         ("--vendor-pub", args.vendor_pub)) if not value]
    if missing:
        print(f"bodycam provision: {', '.join(missing)} required", file=sys.stderr)
        return 2
    pq = True if args.pq else False if args.classic else None  # None: hybrid when the agency key is
    identity = provision.provision(args.root, args.device_id, args.agency_pub, args.vendor_pub,
                                   args.dock_pub or (), force=args.force, ca=args.ca, pq=pq)
    kind = "Ed25519 + ML-DSA-65" if identity.public_key_pem.count("BEGIN PUBLIC KEY") == 2 else "Ed25519"
    print(f"device {identity.device_id} provisioned; device key {identity.fingerprint} ({kind})")
    print(f"identity for the evidence system: {Path(args.root) / 'identity.json'}")
    return 0


def _must_exist(path: Path, what: str) -> None:
    """A missing input is bad usage (exit 2), said in one line."""
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")


def _build(args: argparse.Namespace) -> int:
    from firmware.update.image import build_image
    from secure_store import keys

    _must_exist(args.source, "source directory")
    if args.out.exists() or args.out.is_symlink():
        raise ImageError(f"{args.out} already exists; an image is never overwritten (choose another --out)")
    vendor = keys.load_signing_key(args.key, "vendor")  # hybrid: a format-2 image signed by both halves
    keys.check_private_mode(args.key)
    manifest = build_image(args.source, args.version, vendor, args.out, min_version=args.min_version)
    print(f"built {args.out}: firmware {manifest.version} (replaces >= {manifest.min_version}), "
          f"{len(manifest.files)} files, {manifest.payload_size} bytes, manifest {manifest.digest[:16]}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from firmware.update.image import verify_image
    from secure_store import keys

    _must_exist(args.image, "image")
    vendor = keys.load_verify_key(args.vendor_pub, "vendor")
    manifest = verify_image(args.image, vendor)
    print(f"firmware {manifest.version}  min_version {manifest.min_version}  built {manifest.built_utc}")
    print(f"manifest sha256 {manifest.digest}")
    print(f"signed by vendor key {keys.fingerprint(vendor)} "
          f"({'Ed25519 + ML-DSA-65' if vendor.hybrid else 'Ed25519'}, image format {manifest.image_format})")
    for entry in manifest.files:
        print(f"  {entry.mode:04o} {entry.size:>10} {entry.sha256[:16]}  {entry.path}")
    print(f"OK: {len(manifest.files)} files, {manifest.payload_size} bytes, signature and hashes verify")
    return 0


def _install(args: argparse.Namespace) -> int:
    from firmware.update import install_image

    _must_exist(args.image, "image")
    _must_exist(args.root, "device root")
    result = install_image(args.image, args.root, max_boot_tries=args.boot_tries)
    print(f"firmware {result.version} installed in slot {result.slot} ({result.files} files, {result.bytes} bytes); "
          f"it is on trial: mark it healthy within {args.boot_tries} boots or slot {result.previous_slot} "
          f"({result.previous_version}) comes back")
    return 0


def _flash(args: argparse.Namespace) -> int:
    from firmware.update.flash import flash
    from secure_store import keys

    dock_key = keys.load_signing_key(args.dock_key, "dock")  # the link authenticates with its Ed25519 half
    reply = flash(args.port, dock_key, args.image, progress=not args.quiet and sys.stderr.isatty())
    print(f"device {reply['device_id']}: firmware {reply['version']} installed in slot {reply['slot']} "
          f"(trial; previous {reply['previous_version']} in slot {reply['previous_slot']})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from firmware.update import status

    _must_exist(args.root, "device root")  # not a "good factory state" of a device that is not there
    if not (args.root / "identity.json").exists():
        raise UpdateError(f"{args.root} is not a provisioned device root (no identity.json)")
    print(json.dumps(status(args.root), indent=1, sort_keys=True))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("provision", help="give a device its keys and identity (technician)",
                              description="Create the device key, install trusted public keys, set the clock, "
                                          "write identity.json. Or, with --enroll-dock, add one dock key.")
    p.add_argument("--root", required=True, type=Path, help="device root directory")
    p.add_argument("--device-id", help="device ID, e.g. CAM-0042")
    p.add_argument("--agency-pub", type=Path, help="agency X25519 public key (PEM)")
    p.add_argument("--vendor-pub", type=Path, help="vendor Ed25519 firmware key (PEM)")
    p.add_argument("--dock-pub", type=Path, action="append", help="dock Ed25519 public key (repeatable)")
    p.add_argument("--force", action="store_true", help="re-provision (evidence and audit log are kept)")
    p.add_argument("--ca", type=Path, metavar="DIR", help="agency CA directory (bodycam ca init): certify the "
                                                          "device key and install the agency root")
    p.add_argument("--enroll-dock", type=Path, metavar="FILE", help="enroll one more dock public key")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--pq", action="store_true", help="a hybrid (Ed25519 + ML-DSA-65) device key even with an "
                                                        "X25519 agency key (default: hybrid iff the agency key is)")
    kind.add_argument("--classic", action="store_true", help="an Ed25519-only device key even with a hybrid "
                                                             "agency key (say why: its evidence is then classic)")
    p.set_defaults(func=_provision)

    fw = subparsers.add_parser("firmware", help="build, inspect, install or flash signed firmware images")
    sub = fw.add_subparsers(dest="firmware_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build and sign an image of a directory")
    b.add_argument("--version", required=True, help="X.Y.Z")
    b.add_argument("--min-version", default="0.0.0", help="oldest installed version it may replace")
    b.add_argument("--key", required=True, type=Path, help="vendor private key (0600; Ed25519, or Ed25519 + ML-DSA-65)")
    b.add_argument("--out", required=True, type=Path, help="image file to write")
    b.add_argument("source", type=Path, metavar="SOURCE_DIR")
    b.set_defaults(func=_build)

    i = sub.add_parser("inspect", help="show an image; exit 0 only if it verifies")
    i.add_argument("image", type=Path, metavar="FILE")
    i.add_argument("--vendor-pub", required=True, type=Path, help="vendor public key (Ed25519, or Ed25519 + ML-DSA-65)")
    i.set_defaults(func=_inspect)

    n = sub.add_parser("install", help="install an image into the inactive slot of a device")
    n.add_argument("image", type=Path, metavar="FILE")
    n.add_argument("--root", required=True, type=Path, help="device root directory")
    n.add_argument("--boot-tries", type=int, default=3, choices=range(1, 11), metavar="N",
                   help="boots the new slot gets to be marked healthy (default 3)")
    n.set_defaults(func=_install)

    f = sub.add_parser("flash", help="send an image to a docked device over the authenticated dock link")
    f.add_argument("--port", required=True, help="serial port of the docked device (path or pyserial URL)")
    f.add_argument("--dock-key", required=True, type=Path, help="this dock's private key (Ed25519, or Ed25519 + ML-DSA-65)")
    f.add_argument("image", type=Path, metavar="IMAGE")
    f.set_defaults(func=_flash)

    s = sub.add_parser("status", help="show the A/B slot state of a device")
    s.add_argument("--root", required=True, type=Path, help="device root directory")
    s.set_defaults(func=_status)
