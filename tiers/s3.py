"""A tier in an S3 bucket: AWS S3 or a compatible store (SeaweedFS, MinIO, Ceph RGW).

Objects live at ``<prefix><key>``. A write never exposes a partial or unverified
object under its key, and never replaces one:

* up to ``multipart_threshold`` bytes are buffered in memory and sent by one
  ``PutObject`` with ``If-None-Match: *`` (a conditional write: 412 when the key is
  taken) and ``x-amz-checksum-sha256``, so the store rejects bytes damaged on the
  way. A single PutObject is atomic, so no staging object is needed;
* beyond it, the bytes go into a multipart upload (``CreateMultipartUpload``,
  ``UploadPart`` with a SHA-256 per part, at most one part in memory) to the staging
  key ``<prefix>.staging/<uuid>``. Only once BLAKE3 of all bytes matches does
  ``CompleteMultipartUpload`` run, then a conditional server-side ``CopyObject``
  (``UploadPartCopy`` above the 5 GiB copy limit) gives the object its key, and the
  staging object is deleted. The staging upload keeps the default storage class so
  a cold class's minimum storage duration is not charged for a scratch object. A
  store that ignores the condition on copies (Ceph RGW 16; the tier asks once) gets
  HeadObject first.

The write path is :mod:`tiers.s3_upload`, Glacier restores (``RestoreObject``,
``x-amz-restore``) are :mod:`tiers.s3_restore`, the translation of botocore errors is
:mod:`tiers.s3_errors`; reads, listing, deletion and the bucket check are here. With
``storage_class`` ``GLACIER`` or ``DEEP_ARCHIVE`` the tier needs restores before reads
(``capabilities.needs_restore``); whatever its class, it answers :class:`~tiers.base.ColdTier`'s
``restore``/``restore_status`` per object, for objects a lifecycle rule moved to Glacier.

Abandoned multipart uploads (a crashed writer) cost storage until aborted: give
the bucket a lifecycle rule ``AbortIncompleteMultipartUpload`` and one expiring
``.staging/``.
"""

from __future__ import annotations

import builtins
import datetime as dt
import functools
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tiers.base import (
    STAGING_SEGMENT,
    ObjectInfo,
    RestoreState,
    RetrievalOption,
    TierCapabilities,
    check_key,
    check_prefix,
    copy_stream,
    exists_by_stat,
)
from tiers.errors import NeedsRestore, ObjectExists, ObjectNotFound, TierConfigError, TierError
from tiers.s3_errors import translate_error
from tiers.s3_restore import (
    ARCHIVE_STORAGE_CLASSES,
    RetrievalTable,
    needs_restore_error,
    request_restore,
    restore_status,
)
from tiers.s3_upload import (
    COPY_PART_SIZE,
    MAX_COPY_SIZE,
    MIN_PART_SIZE,
    MiB,
    S3Upload,
    error_code,
    http_status,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import HeadObjectOutputTypeDef

__all__ = ["S3Tier", "S3Upload", "translate_error"]


class S3Tier:
    """Objects in ``bucket`` under ``prefix`` (see the module docstring for the write path).

    The keyword arguments are the fields of ``archive.config.S3TierConfig``. Nothing
    touches the network until the first operation, which checks the bucket once
    (``HeadBucket``) and creates it when ``create_bucket`` is set.

    ``restore_days``, ``retrieval_hours`` and ``retrieval_prices`` serve the cold
    classes (see :mod:`tiers.s3_restore`; unset speeds keep the class's defaults).

    Raises:
        TierConfigError: unknown profile, part sizes S3 would refuse, or retrieval
            settings for speeds the storage class does not offer.
    """

    capabilities = TierCapabilities(atomic_promote=True, native_digests=True)

    def __init__(
        self,
        name: str,
        bucket: str,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        profile: str | None = None,
        storage_class: str | None = None,
        prefix: str = "",
        checksum_calculation: Literal["when_supported", "when_required"] = "when_required",
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        create_bucket: bool = False,
        addressing_style: Literal["auto", "path", "virtual"] = "path",
        restore_days: int = 7,
        retrieval_hours: dict[str, float] | None = None,
        retrieval_prices: dict[str, float] | None = None,
    ) -> None:
        self.name = name
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.staging_prefix = f"{self.prefix}{STAGING_SEGMENT}/"
        self.storage_class = storage_class
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.create_bucket = create_bucket
        self.capabilities = TierCapabilities(
            native_digests=True, needs_restore=storage_class in ARCHIVE_STORAGE_CLASSES
        )
        self.restore_days = restore_days
        self.retrieval = RetrievalTable.build(
            name, storage_class, retrieval_hours, retrieval_prices
        )
        if restore_days < 1:
            raise TierConfigError(f"tier {name!r}: restore_days must be at least 1", tier=name)
        if multipart_chunksize < MIN_PART_SIZE or multipart_threshold < 0:
            raise TierConfigError(
                f"tier {name!r}: multipart_chunksize must be at least 5 MiB (the S3 minimum "
                "part size) and multipart_threshold at least 0",
                tier=name,
            )
        check_prefix(self.prefix)
        config = Config(
            request_checksum_calculation=checksum_calculation,
            response_checksum_validation=checksum_calculation,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": addressing_style},
        )
        try:
            with _session_lock:
                session = boto3.session.Session(profile_name=profile) if profile else _session()
                self.client: S3Client = session.client(
                    "s3",
                    endpoint_url=endpoint_url,
                    region_name=region_name,
                    aws_access_key_id=access_key_id,
                    aws_secret_access_key=secret_access_key,
                    config=config,
                )
        except (BotoCoreError, ValueError) as exc:
            raise TierConfigError(f"tier {name!r}: {exc}", tier=name) from exc
        self._bucket_ready = False
        self._conditional_copy: bool | None = None
        """Whether the store honours ``If-None-Match`` on copies (None: not asked yet)."""
        self._copy_limit = MAX_COPY_SIZE
        self._copy_part_size = COPY_PART_SIZE

    def __repr__(self) -> str:
        return f"S3Tier({self.name!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def begin_put(self) -> S3Upload:
        self._ensure_bucket()
        return S3Upload(self)

    def put(self, key: str, source: BinaryIO, *, expect_b3: str | None = None) -> ObjectInfo:
        """Stream ``source`` into ``key``; a present key is refused before reading it."""
        check_key(key)
        if self.exists(key):
            raise ObjectExists(f"{key}: already stored", tier=self.name, key=key)
        with self.begin_put() as upload:
            copy_stream(source, upload)
            return upload.promote(key, expect_b3=expect_b3)

    def open(self, key: str, *, offset: int = 0, length: int | None = None) -> BinaryIO:
        """Stream the ``GetObject`` body, with a ``Range`` header for a partial read.

        A range past the end reads as empty (S3 answers 416 there), as on every tier.
        An archived object not restored raises NeedsRestore (``InvalidObjectState``).
        """
        check_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"negative range: offset={offset}, length={length}")
        if length == 0:  # no GetObject: still ObjectNotFound or NeedsRestore as one would
            if not self.restore_status(key).readable:
                raise needs_restore_error(self, key)
            return io.BytesIO()
        self._ensure_bucket()
        extra: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            extra["Range"] = f"bytes={offset}-{end}"
        try:
            with self._errors(key):
                response = self.client.get_object(
                    Bucket=self.bucket, Key=self.prefix + key, **extra
                )
        except NeedsRestore as exc:
            raise needs_restore_error(self, key) from exc
        except TierError as exc:
            if http_status(exc.__cause__) == 416:
                return io.BytesIO()
            raise
        return io.BufferedReader(_BodyReader(self, key, response["Body"]))

    def stat(self, key: str) -> ObjectInfo:
        """``HeadObject`` with ``ChecksumMode=ENABLED``, so the stored SHA-256 is reported."""
        head = self._head(key)
        return ObjectInfo(
            key=key,
            size=head["ContentLength"],
            modified=head["LastModified"],
            etag=head["ETag"].strip('"'),
            checksum_sha256=head.get("ChecksumSHA256"),
            # S3 omits the header for STANDARD objects.
            storage_class=head.get("StorageClass", "STANDARD"),
        )

    def exists(self, key: str) -> bool:
        return exists_by_stat(self, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """``ListObjectsV2`` pages (in key order), prefix stripped, staging skipped."""
        check_prefix(prefix)
        self._ensure_bucket()
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        with self._errors(None):
            for page in pages:
                for entry in page.get("Contents", []):
                    full = entry["Key"]
                    if full.startswith(self.staging_prefix) or full.endswith("/"):
                        continue
                    yield ObjectInfo(
                        key=full[len(self.prefix) :],
                        size=entry["Size"],
                        modified=entry["LastModified"],
                        etag=entry["ETag"].strip('"'),
                        storage_class=entry.get("StorageClass"),
                    )

    def sweep_staging(self, older_than: dt.datetime) -> int:
        """Delete staging objects and abort multipart uploads begun before ``older_than``."""
        self._ensure_bucket()
        removed = 0
        with self._errors(None):
            objects = self.client.get_paginator("list_objects_v2")
            for page in objects.paginate(Bucket=self.bucket, Prefix=self.staging_prefix):
                for entry in page.get("Contents", []):
                    if entry["LastModified"] < older_than:
                        self.client.delete_object(Bucket=self.bucket, Key=entry["Key"])
                        removed += 1
            uploads = self.client.get_paginator("list_multipart_uploads")
            for listing in uploads.paginate(Bucket=self.bucket, Prefix=self.staging_prefix):
                for upload in listing.get("Uploads", []):
                    if upload["Initiated"] < older_than:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
        return removed

    def delete(self, key: str) -> None:
        """``DeleteObject``, which S3 already treats as idempotent."""
        check_key(key)
        self._ensure_bucket()
        try:
            with self._errors(key):
                self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except ObjectNotFound:
            pass

    def restore(self, key: str, *, days: int, speed: str = "standard") -> RestoreState:
        """``RestoreObject`` (see :func:`tiers.s3_restore.request_restore`)."""
        return request_restore(self, key, days=days, speed=speed)

    def restore_status(self, key: str) -> RestoreState:
        """``HeadObject``'s ``x-amz-restore``; ``not-needed`` outside GLACIER/DEEP_ARCHIVE."""
        return restore_status(self, key)

    def retrieval_options(self) -> builtins.list[RetrievalOption]:
        """Expedited (GLACIER only), Standard, Bulk: typical delay and price per GiB."""
        return self.retrieval.options()

    def close(self) -> None:
        self.client.close()

    def _head(self, key: str) -> HeadObjectOutputTypeDef:
        check_key(key)
        self._ensure_bucket()
        with self._errors(key):
            return self.client.head_object(
                Bucket=self.bucket, Key=self.prefix + key, ChecksumMode="ENABLED"
            )

    def _ensure_bucket(self) -> None:
        """``HeadBucket`` once, so a wrong bucket name fails loudly instead of as 404s."""
        if self._bucket_ready:
            return
        try:
            with self._errors(None):
                self.client.head_bucket(Bucket=self.bucket)
        except TierError as exc:
            if http_status(exc.__cause__) != 404:
                raise
            if not self.create_bucket:
                raise TierConfigError(
                    f"tier {self.name!r}: bucket {self.bucket!r} does not exist", tier=self.name
                ) from exc
            self._create_bucket()
        self._bucket_ready = True

    def _create_bucket(self) -> None:
        region = self.client.meta.region_name
        extra: dict[str, Any] = {}
        if region and region != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            with self._errors(None):
                self.client.create_bucket(Bucket=self.bucket, **extra)
        except TierError as exc:
            if error_code(exc.__cause__) != "BucketAlreadyOwnedByYou":
                raise

    @contextmanager
    def _errors(self, key: str | None) -> Iterator[None]:
        """Translate botocore errors into the tier error tree (this backend's boundary)."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, tier=self.name, key=key) from exc


class _BodyReader(io.RawIOBase):
    """A ``GetObject`` body as a raw stream, with transfer errors translated."""

    def __init__(self, tier: S3Tier, key: str, body: StreamingBody) -> None:
        self._tier = tier
        self._key = key
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        with self._tier._errors(self._key):
            data = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


#: Clients are thread-safe, sessions are not: creating a client holds this lock.
_session_lock = threading.Lock()


@functools.cache
def _session() -> boto3.session.Session:
    """One boto3 session for every tier without a profile: each new session reads the
    service model from disk again (~0.2 s); credentials are passed per client."""
    return boto3.session.Session()
