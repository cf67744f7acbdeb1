"""The ``federation`` tier kind through the conformance suite, against a real partner node."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from archive.config import LocalTierConfig, Settings
from archive.identity import ensure_node_key, public_key_text
from archive.node import ArchiveNode
from federation.partners import add_partner
from federation.tier import SPOOL_IN_MEMORY, FederationTier
from tests.support.server import permafrost_serve
from tiers.errors import DigestMismatch, InvalidKey, TierError
from tiers.testing import MiB, TierConformance, keys, put_bytes, read

FREE_NAMES = (
    "a partner names what it holds by the BLAKE3 of the bytes (DESIGN section 7): "
    "callers cannot choose free names, and keys outside its grammar are InvalidKey"
)
ONE_CONTENT = "a key names one content, so it never holds other bytes"


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ArchiveNode]]:
    """One partner node for the module, ``permafrost serve`` in a process of its own (so
    what it reads and maps while proving is not counted as the tier's memory), and its
    catalog opened here to register each test's home node as a new partner."""
    work = tmp_path_factory.mktemp("partner")
    (work / "permafrost.toml").write_text(
        f'data_dir = "{work / "data"}"\n[tiers.hot]\nkind = "local"\n'
        f'path = "{work / "data" / "hot"}"\nfsync = false\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    settings = Settings(
        data_dir=work / "data",
        tiers={"hot": LocalTierConfig(path=work / "data" / "hot", fsync=False)},
    )
    ensure_node_key(settings.node_key_path)
    with permafrost_serve(work, env, "--no-worker", log=work / "serve.log") as url:
        node = ArchiveNode.open(settings)
        try:
            yield url, node
        finally:
            node.close()


class TestFederationTier(TierConformance):
    @pytest.fixture
    def tier(self, partner: tuple[str, ArchiveNode], tmp_path: Path) -> Iterator[FederationTier]:
        url, node = partner
        key_file = tmp_path / "home.key"
        key, _ = ensure_node_key(key_file)
        with node.session() as session:
            add_partner(
                f"home-{uuid.uuid4().hex[:12]}",
                "http://home.invalid",
                public_key_text(key),
                1 << 40,
                session=session,
            )
        tier = FederationTier(name="partner", url=url, node_key_file=key_file)
        yield tier
        tier.close()

    content_addressed = True
    stream_memory_limit = SPOOL_IN_MEMORY + 40 * MiB
    """A copy in flight is spooled in memory up to 64 MiB (``SPOOL_IN_MEMORY``), because
    the signed request must carry the body's digest before the body; beyond that the
    spool is a temporary file. So the bound is the spool plus the suite's usual 40 MiB,"""
    stream_object_size = 160 * MiB
    """and the object streamed is larger than that bound: holding it whole would fail."""
    differences: ClassVar[dict[str, tuple[str, type[BaseException]]]] = {
        "test_unusual_but_valid_keys": (FREE_NAMES, InvalidKey),
        "test_list_in_key_order_and_by_prefix": (
            FREE_NAMES + "; listing in key order: test_lists_what_it_holds_in_key_order",
            InvalidKey,
        ),
        "test_write_once": (
            ONE_CONTENT + "; the same bytes again are held once: test_same_bytes_again_are_held",
            InvalidKey,
        ),
        "test_replace_swaps_in_proven_bytes": (
            ONE_CONTENT + "; repair deletes the partner's copy and sends it again "
            "(tests/federation/test_two_nodes.py)",
            InvalidKey,
        ),
        "test_concurrent_promotes_of_one_key": (
            ONE_CONTENT + ": two contents never race for one key",
            InvalidKey,
        ),
    }

    def test_lists_what_it_holds_in_key_order(self, tier: FederationTier) -> None:
        contents = [random.randbytes(100) for _ in range(6)]
        for data in contents:
            put_bytes(tier, self.key_for("", data), data)
        put_bytes(tier, "manifests/c/ds/v1.json", b"{}")
        expected = sorted(self.key_for("", data) for data in contents)
        assert keys(tier) == [*expected, "manifests/c/ds/v1.json"]
        assert keys(tier, "blobs/") == expected
        first = expected[0]
        assert keys(tier, first[:11]) == [k for k in expected if k.startswith(first[:11])]
        assert keys(tier, "manifests/") == ["manifests/c/ds/v1.json"]
        assert [i.size for i in tier.list("blobs/")] == [100] * 6

    def test_same_bytes_again_are_held(self, tier: FederationTier) -> None:
        data = random.randbytes(3000)
        key = self.key_for("", data)
        assert put_bytes(tier, key, data).key == key
        assert put_bytes(tier, key, data).key == key  # acknowledged, kept once
        assert keys(tier) == [key] and read(tier, key) == data
        with tier.begin_put() as upload:  # other bytes under that key: refused, nothing kept
            upload.write(b"other bytes")
            with pytest.raises(DigestMismatch):
                upload.promote(key, expect_b3=key.rsplit("/", 1)[-1])
        assert read(tier, key) == data

    def test_a_manifest_is_kept_whatever_the_caller_asks(self, tier: FederationTier) -> None:
        put_bytes(tier, "manifests/c/ds/v1.json", b"{}")
        with pytest.raises(TierError, match="kept"):
            tier.delete("manifests/c/ds/v1.json")
        assert read(tier, "manifests/c/ds/v1.json") == b"{}"
