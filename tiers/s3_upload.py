"""The write path of :class:`tiers.s3.S3Tier`: buffering, multipart upload, promotion.

Split from :mod:`tiers.s3` to keep each module one noun; see that module's docstring
for the whole design. ``PutObject``, ``CreateMultipartUpload``, ``UploadPart``,
``CompleteMultipartUpload``, ``CopyObject`` and ``UploadPartCopy`` are all here, so
every rule about what may become visible under a key lives in one place.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self

import blake3
from botocore.exceptions import ClientError

from tiers.base import ObjectInfo, check_key
from tiers.errors import DigestMismatch, ObjectExists, TierConfigError, TierError

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from tiers.s3 import S3Tier

__all__ = ["S3Upload"]

logger = logging.getLogger("tiers.s3")

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_PART_SIZE = 5 * MiB
"""S3 refuses smaller parts, except the last one."""
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_COPY_SIZE = 5 * GiB
"""Largest object a single ``CopyObject`` may copy; beyond it ``UploadPartCopy``."""
COPY_PART_SIZE = 1 * GiB


class S3Upload:
    """Bytes on their way into an :class:`S3Tier` (see the module docstring)."""

    def __init__(self, tier: S3Tier) -> None:
        self._tier = tier
        self._hasher = blake3.blake3()
        self._buffer = bytearray()
        self._size = 0
        self._staging_key = f"{tier.staging_prefix}{uuid.uuid4().hex}"
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._staged_object = False
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def b3(self) -> str:
        return self._hasher.hexdigest()

    def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            raise ValueError("write to an upload that was promoted or aborted")
        self._hasher.update(data)
        self._buffer += data
        self._size += len(data)
        if self._upload_id is None:
            if len(self._buffer) <= self._tier.multipart_threshold:
                return
            with self._tier._errors(None):
                self._upload_id = self._tier.client.create_multipart_upload(
                    Bucket=self._tier.bucket, Key=self._staging_key, ChecksumAlgorithm="SHA256"
                )["UploadId"]
        while len(self._buffer) >= self._part_size():
            self._send_part(self._part_size())

    def _part_size(self) -> int:
        """The configured chunk size, doubled every 1000 parts so that the 10,000-part
        limit of S3 still allows objects of terabytes."""
        return min(self._tier.multipart_chunksize << (len(self._parts) // 1000), MAX_PART_SIZE)

    def _send_part(self, size: int) -> None:
        assert self._upload_id is not None
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise TierError("object too large for one multipart upload", tier=self._tier.name)
        with memoryview(self._buffer) as view:
            body = bytes(view[:size])
        del self._buffer[:size]
        checksum = _sha256_b64(body)
        with self._tier._errors(None):
            sent = self._tier.client.upload_part(
                Bucket=self._tier.bucket,
                Key=self._staging_key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                ChecksumSHA256=checksum,
            )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": checksum})

    def promote(
        self, key: str, *, expect_b3: str | None = None, replace: bool = False
    ) -> ObjectInfo:
        """Verify BLAKE3, then make the object visible under ``key`` without replacing one
        (unless ``replace``: the requests then carry no ``If-None-Match``, and S3
        swaps the object in one step).

        Promote is final: afterwards the staged bytes (buffer, multipart upload or
        staging object) are gone, whether it returned or raised.

        Raises:
            DigestMismatch: the bytes do not hash to ``expect_b3``; nothing was completed.
            ObjectExists: ``key`` is already stored (HTTP 412); it is left untouched.
        """
        if self._closed:
            raise ValueError("promote of an upload that was promoted or aborted")
        tier = self._tier
        try:
            check_key(key)
            found = self.b3
            if expect_b3 is not None and expect_b3.lower() != found:
                raise DigestMismatch(key, "blake3", expect_b3, found, tier=tier.name)
            if self._upload_id is None:
                return self._put_whole(key, found, replace)
            if self._buffer or not self._parts:
                self._send_part(len(self._buffer))
            with tier._errors(key):
                tier.client.complete_multipart_upload(
                    Bucket=tier.bucket,
                    Key=self._staging_key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            self._upload_id, self._staged_object = None, True
            _copy_into_place(tier, self._staging_key, key, self._size, replace=replace)
            return dataclasses.replace(tier.stat(key), b3=found)
        finally:
            self.abort()

    def _put_whole(self, key: str, found: str, replace: bool) -> ObjectInfo:
        """One ``PutObject``: conditional unless ``replace``, with the SHA-256 the store
        verifies."""
        tier = self._tier
        body, self._buffer = bytes(self._buffer), bytearray()
        extra = _storage_class(tier)
        if not replace:
            extra["IfNoneMatch"] = "*"
        with _class_errors(tier, key):
            sent = tier.client.put_object(
                Bucket=tier.bucket,
                Key=tier.prefix + key,
                Body=body,
                ChecksumSHA256=_sha256_b64(body),
                **extra,
            )
        return ObjectInfo(
            key=key,
            size=len(body),
            etag=sent["ETag"].strip('"'),
            checksum_sha256=sent.get("ChecksumSHA256"),
            storage_class=tier.storage_class or "STANDARD",
            b3=found,
        )

    def abort(self) -> None:
        """Drop the staged bytes (``AbortMultipartUpload``, ``DeleteObject``); idempotent.

        Best effort: a failure is logged, not raised, so it never hides the error that
        led here; the bucket's lifecycle rules collect what is left.
        """
        if self._closed:
            return
        self._closed = True
        self._buffer = bytearray()
        tier = self._tier
        if self._upload_id is not None:
            _abort_quietly(tier, self._staging_key, self._upload_id)
        if self._staged_object:
            _delete_quietly(tier, self._staging_key)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def _copy_into_place(
    tier: S3Tier, source: str, key: str, size: int, *, replace: bool = False
) -> None:
    """Server-side copy of ``source`` to ``key``, refusing to replace an object
    (unless ``replace``).

    ``CopyObject`` with ``If-None-Match: *`` where the store honours it (see
    :func:`_honours_copy_condition`). A store that answers NotImplemented, or ignores
    the header, gets HeadObject then CopyObject instead: two writers racing between
    the two calls could then both succeed, the later one replacing the earlier. For
    content-addressed keys both wrote the same bytes.
    """
    if tier._conditional_copy is None:
        tier._conditional_copy = _honours_copy_condition(tier)
        if not tier._conditional_copy:
            logger.warning("%s: store ignores If-None-Match on copy, using HeadObject first", tier)
    if size > tier._copy_limit:
        _copy_in_parts(tier, source, key, size, replace=replace)
        return
    extra = _storage_class(tier)
    request: dict[str, Any] = dict(
        Bucket=tier.bucket,
        Key=tier.prefix + key,
        CopySource={"Bucket": tier.bucket, "Key": source},
        MetadataDirective="COPY",
        **extra,
    )
    if replace:
        with _class_errors(tier, key):
            tier.client.copy_object(**request)
        return
    if tier._conditional_copy:
        try:
            with _class_errors(tier, key):
                tier.client.copy_object(IfNoneMatch="*", **request)
            return
        except TierError as exc:
            if error_code(exc.__cause__) != "NotImplemented" and http_status(exc.__cause__) != 501:
                raise
            logger.warning("%s: no conditional CopyObject, using HeadObject first", tier)
            tier._conditional_copy = False
    if tier.exists(key):
        raise ObjectExists(f"{key}: already stored", tier=tier.name, key=key)
    with _class_errors(tier, key):
        tier.client.copy_object(**request)


def _honours_copy_condition(tier: S3Tier) -> bool:
    """Whether the store refuses a ``CopyObject`` with ``If-None-Match: *`` onto a key
    that exists, asked once per tier with two empty staging objects.

    Ceph RGW 16 (Pacific) accepts the header on ``CopyObject`` and on
    ``CompleteMultipartUpload`` and replaces the target all the same; the answer
    about ``CopyObject`` stands for both. A store that refuses the header itself
    (NotImplemented) does not honour it either.
    """
    source = f"{tier.staging_prefix}{uuid.uuid4().hex}"
    target = f"{source}-probe"
    try:
        with tier._errors(None):
            for probe in (source, target):
                tier.client.put_object(Bucket=tier.bucket, Key=probe, Body=b"")
        try:
            with tier._errors(None):
                tier.client.copy_object(
                    Bucket=tier.bucket,
                    Key=target,
                    CopySource={"Bucket": tier.bucket, "Key": source},
                    IfNoneMatch="*",
                )
        except ObjectExists:
            return True
        except TierError as exc:
            if error_code(exc.__cause__) != "NotImplemented" and http_status(exc.__cause__) != 501:
                raise
        return False
    finally:
        for probe in (source, target):
            _delete_quietly(tier, probe)


def _copy_in_parts(tier: S3Tier, source: str, key: str, size: int, *, replace: bool) -> None:
    """``UploadPartCopy`` into a new multipart upload, completed with ``If-None-Match``
    (and checked with HeadObject first where the store ignores that header), or
    without either when ``replace``."""
    if not replace and not tier._conditional_copy and tier.exists(key):
        raise ObjectExists(f"{key}: already stored", tier=tier.name, key=key)
    part_size = max(tier._copy_part_size, -(-size // MAX_PARTS))
    extra = _storage_class(tier)
    target = tier.prefix + key
    with _class_errors(tier, key):
        upload_id = tier.client.create_multipart_upload(Bucket=tier.bucket, Key=target, **extra)[
            "UploadId"
        ]
    try:
        parts: list[CompletedPartTypeDef] = []
        for number, start in enumerate(range(0, size, part_size), start=1):
            end = min(start + part_size, size) - 1
            with tier._errors(key):
                copied = tier.client.upload_part_copy(
                    Bucket=tier.bucket,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": tier.bucket, "Key": source},
                    CopySourceRange=f"bytes={start}-{end}",
                )
            parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
        condition: dict[str, Any] = {} if replace else {"IfNoneMatch": "*"}
        with tier._errors(key):
            tier.client.complete_multipart_upload(
                Bucket=tier.bucket,
                Key=target,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
    except BaseException:
        _abort_quietly(tier, target, upload_id)
        raise


def _abort_quietly(tier: S3Tier, target: str, upload_id: str) -> None:
    """``AbortMultipartUpload``, logging instead of raising: it runs on the way out
    of another failure, which must stay the one reported."""
    try:
        with tier._errors(None):
            tier.client.abort_multipart_upload(Bucket=tier.bucket, Key=target, UploadId=upload_id)
    except TierError as exc:
        logger.warning("%s: could not abort multipart upload of %s: %s", tier, target, exc)


def _storage_class(tier: S3Tier) -> dict[str, Any]:
    """The ``StorageClass`` argument of the writes that give an object its key."""
    return {"StorageClass": tier.storage_class} if tier.storage_class else {}


@contextmanager
def _class_errors(tier: S3Tier, key: str) -> Iterator[None]:
    """The tier's error translation, plus: a write in a storage class the store does not
    offer is a configuration error. AWS answers ``InvalidStorageClass``; Ceph RGW
    answers a bare ``InvalidArgument`` for a class no placement target declares."""
    try:
        with tier._errors(key):
            yield
    except TierError as exc:
        code = error_code(exc.__cause__)
        if not tier.storage_class or code not in ("InvalidStorageClass", "InvalidArgument"):
            raise
        raise TierConfigError(
            f"tier {tier.name!r}: the store answered {code} to a write in storage class "
            f"{tier.storage_class!r}; does it offer that class? ({exc})",
            tier=tier.name,
            key=key,
        ) from exc.__cause__


def _delete_quietly(tier: S3Tier, target: str) -> None:
    """``DeleteObject`` of a staging object, logging instead of raising (as above)."""
    try:
        with tier._errors(None):
            tier.client.delete_object(Bucket=tier.bucket, Key=target)
    except TierError as exc:
        logger.warning("%s: could not delete %s: %s", tier, target, exc)


def error_code(exc: BaseException | None) -> str:
    """The S3 error code of a botocore ``ClientError`` (``""`` for anything else)."""
    if not isinstance(exc, ClientError):
        return ""
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: BaseException | None) -> int:
    """The HTTP status of a botocore ``ClientError`` (0 for anything else)."""
    if not isinstance(exc, ClientError):
        return 0
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _sha256_b64(data: bytes) -> str:
    """The form of ``x-amz-checksum-sha256``: base64 of the raw digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
