"""A moto S3 server for Glacier restore semantics, started once per session.

moto (``python -m moto.server``, in its own process so its state and warnings stay
out of the test process) answers ``RestoreObject`` and reports restores in
``HeadObject``'s ``x-amz-restore`` header, and ``GetObject`` of an archived object
not restored fails with ``InvalidObjectState``, as AWS does. Use it for that only:
moto accepts wrong checksums, so it proves nothing about integrity (the SeaweedFS
server of :mod:`tests.support.s3server` is the S3 endpoint for everything else).

How moto completes restores (``moto/s3/models.py``, ``FakeKey`` is a
``ManagedState`` named ``s3::keyrestore`` with states None -> IN_PROGRESS ->
RESTORED): by default the progression is ``immediate``, so a restore is ready as
soon as it is asked for. :meth:`MotoS3.restore_progression` switches it through
moto's state-manager API (``/moto-api/state-manager/set-transition``), e.g. to
``{"progression": "time", "seconds": 1}``. Beware that moto starts counting at the
object's creation, not at the restore request, and shows ``ongoing-request="false"``
while the state is still None: with a time progression, wait ``seconds`` between
writing an object and first asking about its restore, then it stays in progress
``seconds`` long. moto never answers ``RestoreAlreadyInProgress`` (a repeated
request gets 200).

Usage::

    def test_glacier(moto_s3):
        tier = S3Tier("cold", **moto_s3.tier_settings(moto_s3.make_bucket()),
                      storage_class="GLACIER")
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.support.s3server import free_ports

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
RESTORE_MODEL = "s3::keyrestore"


@dataclass(frozen=True)
class MotoS3:
    """Where the moto server listens; its credentials are dummies it does not check."""

    endpoint_url: str
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    region_name: str = "us-east-1"

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
        """Keyword arguments for ``S3Tier(name, **settings)`` on ``bucket`` (5 MiB parts)."""
        return {
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "region_name": self.region_name,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "multipart_threshold": 5 * MiB,
            "multipart_chunksize": 5 * MiB,
        }

    @contextlib.contextmanager
    def restore_progression(self, transition: dict[str, Any]) -> Iterator[None]:
        """Make restores progress as ``transition`` says inside the block (server-wide)."""
        self._moto_api("set-transition", {"model_name": RESTORE_MODEL, "transition": transition})
        try:
            yield
        finally:
            self._moto_api("unset-transition", {"model_name": RESTORE_MODEL})

    def _moto_api(self, action: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/state-manager/{action}",
            data=json.dumps(body).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status in (200, 201), f"moto {action}: HTTP {response.status}"


def _wait_until_ready(server: MotoS3, process: subprocess.Popen[bytes], log: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    client = server.client()
    last_error: Exception | None = None
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                client.list_buckets()
                return
            except (ClientError, BotoCoreError) as exc:
                last_error = exc
            time.sleep(0.1)
    finally:
        client.close()
    state = f"exited with {process.returncode}" if process.poll() is not None else "still starting"
    pytest.fail(
        f"moto server did not come up within {START_TIMEOUT:.0f} s ({state}); "
        f"last error: {last_error!r}; log: {log}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """A moto S3 endpoint on 127.0.0.1 in a subprocess, for the whole session."""
    (port,) = free_ports(1)
    server = MotoS3(endpoint_url=f"http://127.0.0.1:{port}")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_until_ready(server, process, str(log))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
