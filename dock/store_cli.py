"""``bodycam store status|hold|ingest``: the force's evidence store (S3 with Object Lock).

* ``status [s3://BUCKET/PREFIX[/DEVICE]]``: devices, recordings, bytes, retention, legal holds;
  with ``--config`` also the dock's queue of objects not yet in the store, and conflicts.
* ``hold s3://BUCKET/PREFIX/DEVICE --recording ID --case REF``: a legal hold on every object
  of that recording (kept past its retention until lifted), and a locked record of the case.
* ``ingest --config FILE --archive DIR``: put a dock archive (and its queue) into the store now.

Nothing here deletes or shortens anything: the store would refuse, and bodycam never asks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from dock.ingest import IngestError, Ingestor, iter_device_dirs
from dock.store_config import StoreConfigError, load_store_config
from secure_store.sources import SourceError

ERRORS = (IngestError, StoreConfigError, SourceError)
_CASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9/._-]{0,63}")


class StoreUsageError(IngestError):
    exit_code = 2


def register(subparsers: Any) -> None:
    store = subparsers.add_parser("store", help="the evidence store (S3 Object Lock): status, legal holds, ingest",
                                  description="Look into and act on the force's WORM evidence store.")
    actions = store.add_subparsers(dest="store_action", metavar="ACTION", required=True)

    def where(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="the dock's store config (TOML, 0600) for endpoint and "
                                                   "credentials (default: boto3's environment and profiles)")

    status = actions.add_parser("status", help="devices, recordings, retention and holds in the store")
    status.add_argument("url", nargs="?", help="s3://BUCKET/PREFIX[/DEVICE] (default: the config's agency)")
    where(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)

    hold = actions.add_parser("hold", help="put a legal hold on every object of one recording")
    hold.add_argument("url", help="s3://BUCKET/PREFIX/DEVICE")
    hold.add_argument("--recording", required=True, help="the recording ID (from verify or export)")
    hold.add_argument("--case", required=True, help="the case reference the hold is for")
    where(hold)
    hold.set_defaults(func=_hold)

    ingest = actions.add_parser("ingest", help="put a dock archive into the store now (resumes, idempotent)")
    ingest.add_argument("--config", type=Path, required=True, help="the dock's store config (TOML, 0600)")
    ingest.add_argument("--archive", type=Path, required=True, help="the dock's archive directory")
    ingest.set_defaults(func=_ingest)


def _client(args: argparse.Namespace) -> tuple[Any, Any]:
    config = load_store_config(args.config) if args.config else None
    if config is not None:
        return config, config.client()
    import boto3
    return None, boto3.session.Session().client("s3")


def _split(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise StoreUsageError(f"{url}: expected an s3://BUCKET/PREFIX URL")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise StoreUsageError(f"{url}: no bucket")
    return bucket, prefix.strip("/")


def _call(fn: Any, what: str, **kw: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        return fn(**kw)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise IngestError(f"{what}: {err.get('Code')}: {err.get('Message') or 'refused by the store'}") from None
    except BotoCoreError as exc:
        raise IngestError(f"{what}: store unreachable ({exc})") from None


def _keys(client: Any, bucket: str, prefix: str) -> list[dict]:
    objects, token = [], {}
    while True:
        page = _call(client.list_objects_v2, f"s3://{bucket}/{prefix}", Bucket=bucket, Prefix=prefix, **token)
        objects += page.get("Contents", [])
        if not page.get("IsTruncated"):
            return objects
        token = {"ContinuationToken": page["NextContinuationToken"]}


def _manifest(client: Any, bucket: str, key: str) -> Any:
    from secure_store.errors import FormatError
    from secure_store.format import Manifest
    body = _call(client.get_object, key, Bucket=bucket, Key=key)["Body"].read(64 * 2**20)
    try:
        return Manifest.parse(body, key)
    except FormatError:
        return None


def device_status(client: Any, bucket: str, prefix: str) -> dict:
    """One device: its recordings (from the manifests), bytes, and each recording's retention and holds."""
    objects = _keys(client, bucket, prefix + "/")
    recordings: dict[str, dict] = {}
    for obj in objects:
        rel = obj["Key"][len(prefix) + 1:]
        if not (rel.startswith("evidence/") and rel.endswith(".manifest")):
            continue
        manifest = _manifest(client, bucket, obj["Key"])
        rec_id = manifest.recording_id if manifest else "(unreadable manifest)"
        rec = recordings.setdefault(rec_id, {"segments": 0, "bytes": 0, "retain_until": None, "legal_hold": False})
        rec["segments"] += 1
        seg = obj["Key"].removesuffix(".manifest") + ".seg"
        rec["bytes"] += obj["Size"] + next((o["Size"] for o in objects if o["Key"] == seg), 0)
        head = _call(client.head_object, obj["Key"], Bucket=bucket, Key=obj["Key"])
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None and (rec["retain_until"] is None or until < dt.datetime.fromisoformat(rec["retain_until"])):
            rec["retain_until"] = until.isoformat()
        rec["mode"] = head.get("ObjectLockMode")
        rec["legal_hold"] = rec["legal_hold"] or head.get("ObjectLockLegalHoldStatus") == "ON"
    return {"device": prefix.rsplit("/", 1)[-1], "objects": len(objects),
            "bytes": sum(o["Size"] for o in objects), "recordings": recordings,
            "holds": [o["Key"][len(prefix) + 1:] for o in objects if o["Key"][len(prefix) + 1:].startswith("holds/")]}


def _status(args: argparse.Namespace) -> int:
    config, client = _client(args)
    if args.url:
        bucket, prefix = _split(args.url)
    elif config is not None:
        bucket, prefix = config.bucket, f"{config.prefix}/{config.agency}"
    else:
        raise StoreUsageError("give s3://BUCKET/PREFIX or --config")
    objects = _keys(client, bucket, prefix + "/")
    devices = sorted({o["Key"][len(prefix) + 1:].split("/", 1)[0] for o in objects
                      if o["Key"][len(prefix) + 1:].endswith("identity.json")})
    if not devices and any(o["Key"].startswith(prefix + "/evidence/") for o in objects):
        devices, prefix = [prefix.rsplit("/", 1)[-1]], prefix.rsplit("/", 1)[0]   # the URL named one device
    result = {"store": f"s3://{bucket}/{prefix}", "devices": [device_status(client, bucket, f"{prefix}/{d}")
                                                              for d in devices]}
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return 0
    print(f"{result['store']}: {len(devices)} device(s)")
    for d in result["devices"]:
        print(f"  {d['device']}: {len(d['recordings'])} recording(s), {d['objects']} objects, "
              f"{d['bytes'] / 2**20:.1f} MiB")
        for rec_id, rec in sorted(d["recordings"].items()):
            print(f"    {rec_id}: {rec['segments']} segment(s), {rec.get('mode') or 'NO LOCK'} until "
                  f"{rec['retain_until']}{', LEGAL HOLD' if rec['legal_hold'] else ''}")
    return 0


def _hold(args: argparse.Namespace) -> int:
    if not _CASE_RE.fullmatch(args.case):
        raise StoreUsageError(f"--case {args.case!r}: use a case reference of letters, digits and / . _ -")
    _, client = _client(args)
    bucket, prefix = _split(args.url)
    objects = _keys(client, bucket, prefix + "/evidence/")
    held = []
    for obj in objects:
        if not obj["Key"].endswith(".manifest"):
            continue
        manifest = _manifest(client, bucket, obj["Key"])
        if manifest is None or manifest.recording_id != args.recording:
            continue
        for key in (obj["Key"], obj["Key"].removesuffix(".manifest") + ".seg"):
            if any(o["Key"] == key for o in objects):
                _call(client.put_object_legal_hold, key, Bucket=bucket, Key=key, LegalHold={"Status": "ON"})
                held.append(key)
    if not held:
        raise IngestError(f"s3://{bucket}/{prefix}: no recording {args.recording!r} in the store")
    now = dt.datetime.now(dt.timezone.utc)
    record = {"case": args.case, "recording_id": args.recording, "utc": now.isoformat(), "objects": held}
    key = f"{prefix}/holds/{args.recording}/{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    _call(client.put_object, key, Bucket=bucket, Key=key, Body=json.dumps(record, indent=2).encode(),
          IfNoneMatch="*", ObjectLockLegalHoldStatus="ON", ChecksumAlgorithm="SHA256")
    print(f"legal hold ON for recording {args.recording} (case {args.case}): {len(held)} objects; "
          f"recorded at s3://{bucket}/{key}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    config = load_store_config(args.config)
    if not args.archive.is_dir():
        raise StoreUsageError(f"{args.archive}: no such archive directory")
    from secure_store.verify import verify_segment
    ingestor = Ingestor(config, args.archive)
    ingestor.check_bucket()
    unverified = []
    for device_dir in iter_device_dirs(args.archive):
        evidence = device_dir / "evidence"
        for seg in sorted(evidence.glob("seg-*.seg")) if evidence.is_dir() else []:
            _, problems = verify_segment(seg, None, device_dir.name)   # the key pinned in identity.json
            if problems:
                unverified.append(f"{device_dir.name}/{seg.name}: {problems[0]}")
            else:
                ingestor.queue_segment(device_dir, seg.name)
        ingestor.enqueue_device(device_dir)
    held, left = ingestor.drain()
    print(f"{held} object(s) now held by s3://{config.bucket}; {left} still queued; "
          f"{len(ingestor.conflicts)} conflict(s); {len(unverified)} segment(s) not verified, not ingested")
    for line in unverified:
        print(f"  NOT VERIFIED {line}")
    for key in ingestor.conflicts:
        print(f"  CONFLICT {key}: the store holds other bytes; the dock's copy is kept beside it")
    return 0 if not left and not ingestor.conflicts and not unverified else 1
