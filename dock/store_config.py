"""The dock's settings: a TOML file, mode 0600 (it may hold the store's credentials).

    [dock]
    ports = ["/dev/serial/by-path/bay-1", "/dev/serial/by-path/bay-2"]   # bodycam dock watch

    [store]
    endpoint = "https://s3.eu-west-2.amazonaws.com"   # omit for AWS's default endpoint
    bucket = "met-bwv-evidence"
    region = "eu-west-2"
    agency = "met"                # first part of every key: v1/<agency>/<device-id>/...
    profile = "bodycam-dock"      # or access_key_id + secret_access_key
    confirm_after = "store"       # "store" (default) or "local"

    [retention]                   # COMPLIANCE retention, in days, per category
    default_days = 2557           # 7 years
    evidence_days = 2557
    audit_days = 2557

Nothing here can shorten a retention already in force: the store refuses that itself.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CATEGORIES = ("evidence", "audit", "identity", "receipt")
DEFAULT_RETENTION_DAYS = 2557   # 7 years
_AGENCY_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class StoreConfigError(Exception):
    """The store settings are missing, unreadable, too open or malformed (a usage error)."""

    exit_code = 2


@dataclass(frozen=True)
class StoreConfig:
    bucket: str
    agency: str
    endpoint: str | None = None
    region: str = "us-east-1"
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    prefix: str = "v1"
    confirm_after: str = "store"
    retention_days: dict[str, int] = field(default_factory=dict)
    multipart_threshold: int = 8 * 2**20     # as boto3's upload_file: parts go up in parallel
    part_size: int = 8 * 2**20
    max_concurrency: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 3
    ports: tuple[str, ...] = ()     # [dock] ports: the station's bays, for ``bodycam dock watch``

    def retention_for(self, category: str) -> int:
        """Days of COMPLIANCE retention for an object of ``category``."""
        return self.retention_days.get(category, self.retention_days.get("default", DEFAULT_RETENTION_DAYS))

    def client(self) -> Any:
        """A boto3 S3 client for this store (credentials from the file, a profile, or the environment)."""
        import boto3
        from botocore.config import Config
        session = boto3.session.Session(profile_name=self.profile) if self.profile else boto3.session.Session()
        config = Config(connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                        retries={"mode": "standard", "max_attempts": self.max_attempts},
                        max_pool_connections=max(10, 2 * self.max_concurrency),
                        request_checksum_calculation="when_required", response_checksum_validation="when_required",
                        # every body the store keeps goes up with its SHA-256 in x-amz-checksum-sha256, a signed
                        # header the server checks the bytes against: hashing the body again for the signature
                        # (botocore does on plain HTTP) only costs time
                        s3={"payload_signing_enabled": False})
        kwargs: dict[str, Any] = {"region_name": self.region, "config": config}
        if self.endpoint:
            kwargs["endpoint_url"] = self.endpoint
        if self.access_key_id:
            kwargs.update(aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)
        return session.client("s3", **kwargs)


def parse_store_config(doc: dict[str, Any], source: str = "store config") -> StoreConfig:
    """Check and convert a parsed TOML document (StoreConfigError naming the bad field)."""
    store = doc.get("store")
    if not isinstance(store, dict):
        raise StoreConfigError(f"{source}: no [store] table")
    unknown = set(store) - {"endpoint", "bucket", "region", "agency", "profile", "access_key_id",
                            "secret_access_key", "prefix", "confirm_after", "multipart_threshold_mib",
                            "part_size_mib", "max_concurrency", "connect_timeout", "read_timeout", "max_attempts"}
    if unknown:
        raise StoreConfigError(f"{source}: unknown [store] setting(s) {', '.join(sorted(unknown))}")

    def text(name: str, default: str | None = None) -> str | None:
        value = store.get(name, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise StoreConfigError(f"{source}: [store] {name} must be a non-empty string")
        return value

    def number(name: str, default: float, low: float, high: float) -> float:
        value = store.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise StoreConfigError(f"{source}: [store] {name} must be a number from {low:g} to {high:g}")
        return value

    bucket, agency = text("bucket"), text("agency")
    if bucket is None or not _BUCKET_RE.fullmatch(bucket):
        raise StoreConfigError(f"{source}: [store] bucket must be an S3 bucket name (3-63 of a-z 0-9 . -)")
    if agency is None or not _AGENCY_RE.fullmatch(agency):
        raise StoreConfigError(f"{source}: [store] agency must be a short code of a-z 0-9 - (no personal data)")
    confirm_after = text("confirm_after", "store")
    if confirm_after not in ("store", "local"):
        raise StoreConfigError(f"{source}: [store] confirm_after must be \"store\" or \"local\"")
    key_id, secret = text("access_key_id"), text("secret_access_key")
    if (key_id is None) != (secret is None):
        raise StoreConfigError(f"{source}: [store] access_key_id and secret_access_key go together")
    if key_id and store.get("profile"):
        raise StoreConfigError(f"{source}: [store] give either a profile or access keys, not both")
    retention = doc.get("retention", {})
    if not isinstance(retention, dict):
        raise StoreConfigError(f"{source}: [retention] must be a table")
    days: dict[str, int] = {}
    for name, value in retention.items():
        category = name.removesuffix("_days")
        if not name.endswith("_days") or category not in (*CATEGORIES, "default"):
            raise StoreConfigError(f"{source}: unknown [retention] setting {name} "
                                   f"(expected default_days or one of {', '.join(c + '_days' for c in CATEGORIES)})")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 36500:
            raise StoreConfigError(f"{source}: [retention] {name} must be a whole number of days from 1 to 36500")
        days[category] = value
    dock = doc.get("dock", {})
    ports = dock.get("ports", []) if isinstance(dock, dict) else None
    if not isinstance(ports, list) or not all(isinstance(p, str) and p for p in ports):
        raise StoreConfigError(f"{source}: [dock] ports must be a list of serial port paths or URLs")
    part_size = int(number("part_size_mib", 8, 5, 5120) * 2**20)
    return StoreConfig(
        bucket=bucket, agency=agency, endpoint=text("endpoint"), region=text("region", "us-east-1") or "us-east-1",
        profile=text("profile"), access_key_id=key_id, secret_access_key=secret,
        prefix=text("prefix", "v1") or "v1", confirm_after=confirm_after, retention_days=days,
        multipart_threshold=max(int(number("multipart_threshold_mib", 8, 5, 5 * 2**20) * 2**20), part_size),
        part_size=part_size, max_concurrency=int(number("max_concurrency", 4, 1, 64)),
        connect_timeout=number("connect_timeout", 10, 0.1, 600), read_timeout=number("read_timeout", 60, 0.1, 3600),
        max_attempts=int(number("max_attempts", 3, 1, 20)), ports=tuple(ports))


def load_store_config(path: str | Path) -> StoreConfig:
    """Read the dock's store config; refuse a file others can read (it may hold a secret key)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise StoreConfigError(f"{path}: cannot read store config ({exc.strerror})") from None
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        raise StoreConfigError(f"{path}: store config is mode {stat.S_IMODE(mode):04o}; make it 0600 "
                               f"(chmod 600 {path}): it may hold credentials")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StoreConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_store_config(doc, str(path))


def store_config_toml(config: StoreConfig) -> str:
    """The TOML text for ``config`` (the demo writes one for its embedded store)."""
    lines = ["[dock]", f"ports = {json.dumps(list(config.ports))}", "", "[store]"]
    for name in ("endpoint", "bucket", "region", "agency", "profile", "access_key_id", "secret_access_key",
                 "prefix", "confirm_after"):
        value = getattr(config, name)
        if value is not None:
            lines.append(f"{name} = {json.dumps(value)}")
    lines += [f"multipart_threshold_mib = {config.multipart_threshold / 2**20:g}",
              f"part_size_mib = {config.part_size / 2**20:g}", "", "[retention]"]
    lines += [f"{c}_days = {d}" for c, d in sorted(config.retention_days.items())]
    return "\n".join(lines) + "\n"
