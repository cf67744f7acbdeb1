"""S3Tier against real S3 servers (SeaweedFS, Ceph RGW): the conformance suite, plus
S3's own edges. ``s3_server`` runs each in turn (tests/tiers/conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from archive.config import S3TierConfig
from tests.support.s3server import S3Server
from tiers import open_tier
from tiers.base import Tier
from tiers.errors import (
    NeedsRestore,
    ObjectExists,
    ObjectNotFound,
    TierConfigError,
    TierError,
    TierUnavailable,
)
from tiers.s3 import S3Tier, translate_error
from tiers.testing import TierConformance, read

pytestmark = pytest.mark.s3
MiB = 1024 * 1024


def staged_in(tier: S3Tier) -> list[str]:
    """In-progress multipart uploads and staging objects, seen behind the tier's back."""
    uploads = tier.client.list_multipart_uploads(Bucket=tier.bucket).get("Uploads", [])
    objects = tier.client.list_objects_v2(Bucket=tier.bucket, Prefix=tier.staging_prefix)
    return [f"upload {u.get('Key')}" for u in uploads] + [
        str(o.get("Key")) for o in objects.get("Contents", [])
    ]


class TestS3Tier(TierConformance):
    @pytest.fixture
    def tier(self, s3_server: S3Server, s3_tier_settings: dict[str, Any]) -> Iterator[S3Tier]:
        # SeaweedFS walks folders; AWS S3 and Ceph RGW list in byte order
        self.lists_in_byte_order = s3_server.name != "seaweedfs"
        tier = S3Tier("s3-test", **s3_tier_settings)
        yield tier
        tier.close()

    def staged_leftovers(self, tier: Tier) -> list[str]:
        assert isinstance(tier, S3Tier)
        return staged_in(tier)


@pytest.fixture
def tier(s3_tier_settings: dict[str, Any]) -> Iterator[S3Tier]:
    tier = S3Tier("s3-test", **s3_tier_settings)
    yield tier
    tier.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_refused_connection_is_unavailable_and_retryable() -> None:
    tier = S3Tier(
        "down",
        "bucket",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        region_name="us-east-1",
        access_key_id="key",
        secret_access_key="secret",
    )
    started = time.monotonic()
    with pytest.raises(TierUnavailable) as caught:
        tier.stat("k")
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, EndpointConnectionError)
    assert time.monotonic() - started < 15  # bounded retries, no endless wait
    with pytest.raises(TierUnavailable):
        tier.stat("k")  # the bucket check is retried, not cached as failed


def test_missing_bucket_is_a_config_error(s3_server: S3Server) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    tier = S3Tier("t", **s3_server.tier_settings(bucket))
    for attempt in (lambda: tier.stat("k"), lambda: tier.put("k", io.BytesIO(b"x"))):
        with pytest.raises(TierConfigError, match="does not exist"):
            attempt()
    client = s3_server.client()
    with pytest.raises(ClientError):
        client.head_bucket(Bucket=bucket)  # and no write created it on the side


def test_create_bucket_creates_a_missing_bucket(s3_server: S3Server) -> None:
    bucket = f"created-{uuid.uuid4().hex[:12]}"
    tier = S3Tier("t", **s3_server.tier_settings(bucket), create_bucket=True)
    tier.put("k", io.BytesIO(b"x"))
    assert read(tier, "k") == b"x"
    again = S3Tier("t", **s3_server.tier_settings(bucket), create_bucket=True)
    assert [info.key for info in again.list()] == ["k"]  # an existing bucket is fine


@pytest.mark.parametrize("field", ["access_key_id", "secret_access_key"])
def test_wrong_credentials_are_a_config_error(s3_tier_settings: dict[str, Any], field: str) -> None:
    tier = S3Tier("t", **{**s3_tier_settings, field: "wrong-" + uuid.uuid4().hex})
    with pytest.raises(TierConfigError) as caught:
        tier.put("k", io.BytesIO(b"x"))
    assert not caught.value.retryable


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(TierConfigError, match="no-such-profile"):
        S3Tier("t", "bucket", profile=f"no-such-profile-{uuid.uuid4().hex}")


@pytest.mark.parametrize("size", [1000, 6 * MiB], ids=["single-put", "multipart-copy"])
def test_boto_checksums_when_supported(s3_tier_settings: dict[str, Any], size: int) -> None:
    """botocore's own default (CRC on every request, validation of whole-object reads)."""
    tier = S3Tier("t", **s3_tier_settings, checksum_calculation="when_supported")
    data = random.randbytes(size)
    tier.put("k", io.BytesIO(data))
    assert read(tier, "k") == data
    assert read(tier, "k", 10, 20) == data[10:30]


def test_open_tier_builds_it_from_the_config(s3_tier_settings: dict[str, Any]) -> None:
    config = S3TierConfig.model_validate(s3_tier_settings)
    tier = open_tier("cold", "s3", **config.backend_settings())
    assert isinstance(tier, S3Tier)
    tier.put("k", io.BytesIO(b"via config"))
    assert read(tier, "k") == b"via config"


@pytest.mark.s3_feature("checksum-sha256")
def test_sha256_checksum_is_stored_and_reported(tier: S3Tier) -> None:
    data = random.randbytes(4096)
    expected = base64.b64encode(hashlib.sha256(data).digest()).decode()
    info = tier.put("blobs/sha", io.BytesIO(data))
    assert info.checksum_sha256 == expected
    assert tier.stat("blobs/sha").checksum_sha256 == expected
    head = tier.client.head_object(Bucket=tier.bucket, Key="blobs/sha", ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256") == expected


@pytest.mark.s3_feature("checksum-sha256")
def test_multipart_objects_report_the_composite_checksum(tier: S3Tier) -> None:
    data = random.randbytes(12 * MiB)
    info = tier.put("blobs/big", io.BytesIO(data))
    assert info.checksum_sha256 is not None
    assert info.checksum_sha256.endswith("-3")  # SHA-256 of the three part checksums
    assert str(info.etag).endswith("-3")


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["single-put", "multipart-copy"])
def test_storage_class_is_set_and_visible(s3_tier_settings: dict[str, Any], size: int) -> None:
    tier = S3Tier("t", **s3_tier_settings, storage_class="STANDARD_IA")
    tier.put("k", io.BytesIO(random.randbytes(size)))
    assert tier.stat("k").storage_class == "STANDARD_IA"
    assert [info.storage_class for info in tier.list()] == ["STANDARD_IA"]
    assert staged_in(tier) == []


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(1000, id="single-put"),
        pytest.param(
            6 * MiB, id="multipart-copy", marks=pytest.mark.s3_feature("copy-class-check")
        ),
    ],
)
def test_unknown_storage_class_is_a_config_error(
    s3_tier_settings: dict[str, Any], size: int
) -> None:
    tier = S3Tier("t", **s3_tier_settings, storage_class="NO_SUCH_CLASS")
    with pytest.raises(TierConfigError, match="storage class 'NO_SUCH_CLASS'") as caught:
        tier.put("k", io.BytesIO(random.randbytes(size)))
    assert not caught.value.retryable
    assert list(tier.list()) == []
    assert staged_in(tier) == []


@pytest.mark.s3_feature("glacier-restore")
def test_glacier_objects_need_a_restore_before_reads(s3_tier_settings: dict[str, Any]) -> None:
    """What moto stands in for (test_s3_cold.py): neither real server has Glacier."""
    tier = S3Tier("t", **s3_tier_settings, storage_class="GLACIER")
    tier.put("k", io.BytesIO(b"x"))
    with pytest.raises(NeedsRestore):
        read(tier, "k")


def test_default_storage_class_is_standard(tier: S3Tier) -> None:
    tier.put("k", io.BytesIO(b"x"))
    assert tier.stat("k").storage_class == "STANDARD"


def test_prefix_keeps_tiers_apart_in_one_bucket(s3_tier_settings: dict[str, Any]) -> None:
    one = S3Tier("one", **{**s3_tier_settings, "prefix": "archive/one"})
    two = S3Tier("two", **{**s3_tier_settings, "prefix": "/archive/two/"})
    one.put("blobs/k", io.BytesIO(b"1"))
    two.put("blobs/k", io.BytesIO(random.randbytes(6 * MiB)))  # staging under its prefix
    assert [info.key for info in one.list()] == ["blobs/k"]
    assert read(one, "blobs/k") == b"1"
    raw = one.client.list_objects_v2(Bucket=one.bucket)
    assert [o.get("Key") for o in raw.get("Contents", [])] == [
        "archive/one/blobs/k",
        "archive/two/blobs/k",
    ]


def test_staging_objects_are_never_listed(tier: S3Tier) -> None:
    tier.client.put_object(Bucket=tier.bucket, Key=".staging/left-by-a-crash", Body=b"x")
    tier.put("k", io.BytesIO(b"1"))
    assert [info.key for info in tier.list()] == ["k"]
    assert [info.key for info in tier.list(".")] == []


def promote_over(tier: S3Tier, key: str, data: bytes, *, replace: bool = False) -> None:
    with tier.begin_put() as upload:
        upload.write(data)
        upload.promote(key, replace=replace)


@pytest.mark.parametrize("conditional_copy", [None, False], ids=["probed", "head-first"])
def test_promote_never_replaces_a_large_object(tier: S3Tier, conditional_copy: bool | None) -> None:
    """The CopyObject path refuses an existing key: with ``If-None-Match`` where the
    store honours it (the tier's probe finds out), else by HeadObject first (forced
    here too, for stores that refuse the header)."""
    tier._conditional_copy = conditional_copy
    data = random.randbytes(6 * MiB)
    tier.put("k", io.BytesIO(data))
    with pytest.raises(ObjectExists):
        promote_over(tier, "k", random.randbytes(6 * MiB))
    assert read(tier, "k") == data
    assert staged_in(tier) == []


@pytest.mark.s3_feature("copy-if-none-match")
def test_store_honours_if_none_match_on_copy(tier: S3Tier) -> None:
    """So promotes of large objects are atomic, with no HeadObject-then-copy window."""
    tier.put("k", io.BytesIO(random.randbytes(6 * MiB)))
    assert tier._conditional_copy is True
    assert staged_in(tier) == []


def test_copy_in_parts_above_the_copy_limit(tier: S3Tier) -> None:
    """The UploadPartCopy path for objects over 5 GiB, with the limit lowered to 5 MiB."""
    tier._copy_limit = tier._copy_part_size = 5 * MiB
    data = random.randbytes(12 * MiB)
    tier.put("packs/huge.tar", io.BytesIO(data))
    assert read(tier, "packs/huge.tar") == data
    with pytest.raises(ObjectExists):
        promote_over(tier, "packs/huge.tar", random.randbytes(12 * MiB))
    assert read(tier, "packs/huge.tar") == data
    rebuilt = random.randbytes(12 * MiB)  # repair's promote replaces, through the same path
    promote_over(tier, "packs/huge.tar", rebuilt, replace=True)
    assert read(tier, "packs/huge.tar") == rebuilt
    assert staged_in(tier) == []


def client_error(code: str, status: int, operation: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


@pytest.mark.parametrize(
    ("code", "status", "expected", "retryable"),
    [
        ("NoSuchKey", 404, ObjectNotFound, False),
        ("404", 404, ObjectNotFound, False),
        ("PreconditionFailed", 412, ObjectExists, False),
        ("InvalidObjectState", 403, NeedsRestore, False),
        ("NoSuchBucket", 404, TierConfigError, False),
        ("AccessDenied", 403, TierConfigError, False),
        ("InvalidAccessKeyId", 403, TierConfigError, False),
        ("SlowDown", 503, TierUnavailable, True),
        ("InternalError", 500, TierUnavailable, True),
        ("BadDigest", 400, TierError, True),
        ("InvalidArgument", 400, TierError, False),
    ],
)
def test_error_mapping(code: str, status: int, expected: type[TierError], retryable: bool) -> None:
    error = translate_error(client_error(code, status), tier="t", key="k")
    assert type(error) is expected
    assert (error.retryable, error.tier, error.key) == (retryable, "t", "k")
