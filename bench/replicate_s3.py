"""The S3 side of ``bench/replicate.py``: a SeaweedFS endpoint on loopback and the
plain-boto3 baseline the archive's replication is compared with.

The server is the test suite's (``tests.support.s3server``: ``weed server -s3`` with
one volume per bucket), started once for the whole benchmark. The baseline is what
an operator would write by hand: ``upload_file`` of each stored object with the
default ``TransferConfig`` (multipart above 8 MiB, 10 threads per file), files
handed out by a thread pool as wide as the archive's workers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from archive.config import S3TierConfig
from tests.support.s3server import S3Server, new_server, run_seaweedfs


@contextmanager
def seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """A SeaweedFS S3 endpoint on 127.0.0.1 until the block ends (data in ``workdir``)."""
    server, ports = new_server()
    with run_seaweedfs(workdir, server, ports) as running:
        yield running


def plain_client(
    server: S3Server, checksums: Literal["when_supported", "when_required"] = "when_required"
) -> Any:
    """A boto3 client as a user would make one; checksums as the archive's S3 tier
    defaults to (``when_required``: SeaweedFS and some other stores reject the SDK's
    newer default, CRC32 trailers on every request)."""
    client: Any = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        region_name=server.region_name,
        config=Config(
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
            s3={"addressing_style": "path"},
        ),
    )
    return client


def new_bucket(client: Any, label: str) -> str:
    name = f"{label}-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return name


def empty_bucket(client: Any, bucket: str) -> None:
    """Delete every object (and abandoned upload) and the bucket: keeps the store small."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


def tier_config(
    server: S3Server, bucket: str, *, role: Literal["hot", "cold", "partner"] = "cold"
) -> S3TierConfig:
    """The archive's S3 tier on ``bucket``, every tuning knob at its default."""
    return S3TierConfig(
        role=role,
        bucket=bucket,
        endpoint_url=server.endpoint_url,
        region_name=server.region_name,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
    )


def upload_files(
    client: Any, bucket: str, files: list[tuple[Path, str]], *, threads: int = 1
) -> float:
    """``upload_file`` of every (file, key) with the default TransferConfig; seconds taken."""
    config = TransferConfig()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for done in [
            pool.submit(client.upload_file, str(path), bucket, key, Config=config)
            for path, key in files
        ]:
            done.result()
    return time.perf_counter() - started
