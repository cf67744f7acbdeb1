"""Damage stored objects behind a tier's back, as bit rot or an operator would.

Local folder tiers are edited on disk; S3 tiers through a plain boto3 client, so
the tier code under test never helps (nor hinders) the damage.
"""

from __future__ import annotations

from pathlib import Path

import blake3
from botocore.exceptions import ClientError

from archive.config import LocalColdTierConfig, LocalTierConfig, S3TierConfig
from archive.node import ArchiveNode
from tests.support.s3server import S3Server


class Raw:
    """Raw bytes of one tier's objects."""

    def __init__(self, node: ArchiveNode, tier: str, s3: S3Server | None) -> None:
        self.cfg = node.settings.tiers[tier]
        self.s3 = s3

    def _path(self, key: str) -> Path:
        assert isinstance(self.cfg, LocalTierConfig | LocalColdTierConfig)
        return Path(self.cfg.path) / key

    def read(self, key: str) -> bytes | None:
        if isinstance(self.cfg, S3TierConfig):
            assert self.s3 is not None
            client = self.s3.client()
            try:
                return client.get_object(Bucket=self.cfg.bucket, Key=key)["Body"].read()
            except ClientError:
                return None
            finally:
                client.close()
        path = self._path(key)
        return path.read_bytes() if path.exists() else None

    def write(self, key: str, data: bytes) -> None:
        if isinstance(self.cfg, S3TierConfig):
            assert self.s3 is not None
            client = self.s3.client()
            try:
                client.put_object(Bucket=self.cfg.bucket, Key=key, Body=data)
            finally:
                client.close()
            return
        path = self._path(key)
        if path.exists():
            path.chmod(0o644)
        path.write_bytes(data)

    def delete(self, key: str) -> None:
        if isinstance(self.cfg, S3TierConfig):
            assert self.s3 is not None
            client = self.s3.client()
            try:
                client.delete_object(Bucket=self.cfg.bucket, Key=key)
            finally:
                client.close()
            return
        self._path(key).unlink()

    def flip_bit(self, key: str, at: int = 1000) -> None:
        data = self.read(key)
        assert data is not None
        damaged = bytearray(data)
        damaged[min(at, len(data) - 1)] ^= 0x10
        self.write(key, bytes(damaged))

    def truncate(self, key: str) -> None:
        data = self.read(key)
        assert data is not None
        self.write(key, data[: len(data) // 2])


def snapshot(node: ArchiveNode) -> dict[tuple[str, str], str]:
    """BLAKE3 of every object of every tier, read through the tiers."""
    out: dict[tuple[str, str], str] = {}
    for name, tier in node.tiers.items():
        for info in tier.list(""):
            with tier.open(info.key) as stream:
                out[(name, info.key)] = blake3.blake3(stream.read()).hexdigest()
    return out
