"""Reading back: bounded decoding, external codec vectors, fallback to a good copy."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import blake3
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import select

from archive.catalog import models
from archive.checkout import stream_blob
from archive.config import LocalTierConfig, Settings
from archive.datasets import get_dataset, get_version, parse_ref
from archive.encoding import Encoder
from archive.errors import Unavailable
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.packs import _header, blob_key
from archive.retrieval import _HashingReader, _Undecodable, decoded_chunks
from archive.verify import verify_version
from archive.worker import Worker

SUITE = Path(__file__).resolve().parents[2].parent / "shared" / "suites" / "zstd-golden" / "tests"


def _decode(data: bytes, limit: int = 1 << 30) -> bytes:
    return b"".join(decoded_chunks(_HashingReader(io.BytesIO(data)), "zstd", limit=limit))


@pytest.mark.parametrize("name", sorted(p.name for p in (SUITE / "golden-decompression").iterdir()))
def test_golden_frames_decode_as_the_reference_does(name: str) -> None:
    data = (SUITE / "golden-decompression" / name).read_bytes()
    reference = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    assert _decode(data) == reference


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (SUITE / "golden-decompression-errors").iterdir())
)
def test_golden_bad_frames_are_refused(name: str) -> None:
    with pytest.raises(_Undecodable):
        _decode((SUITE / "golden-decompression-errors" / name).read_bytes())


@pytest.mark.parametrize("name", sorted(p.name for p in (SUITE / "golden-compression").iterdir()))
def test_golden_inputs_round_trip_through_our_encoder(name: str) -> None:
    original = (SUITE / "golden-compression" / name).read_bytes()
    digest, stored = Encoder(3).encode_bytes(original)
    assert digest.b3 == blake3.blake3(original).hexdigest()
    decoded = _decode(stored) if digest.codec == "zstd" else stored
    assert decoded == original


def test_decoding_stops_at_the_limit() -> None:
    """rle-first-block.zst expands 45 bytes to 1 MiB: a ready decompression bomb."""
    bomb = (SUITE / "golden-decompression" / "rle-first-block.zst").read_bytes()
    assert len(bomb) < 100
    assert len(_decode(bomb, limit=10)) == 11  # one byte past the limit, then stop


@pytest.fixture
def archived(tmp_path: Path) -> tuple[ArchiveNode, bytes]:
    data = tmp_path / "data"
    node = ArchiveNode.open(
        Settings(
            data_dir=data,
            pack_below=0,
            tiers={
                "hot": LocalTierConfig(path=data / "hot", role="hot"),
                "cold": LocalTierConfig(path=data / "cold", role="cold"),
            },
        )
    )
    src = tmp_path / "src"
    src.mkdir()
    data = b"tiny"
    (src / "f.txt").write_bytes(data)
    ingest_tree(node, src, parse_ref("lab/d"))
    return node, data


def _hot_path(node: ArchiveNode, data: bytes) -> Path:
    root = node.settings.tiers["hot"].path  # type: ignore[union-attr]
    path = Path(root) / blob_key(blake3.blake3(data).hexdigest())
    path.chmod(0o644)
    return path


def test_a_bomb_in_place_of_a_blob_is_refused(archived: tuple[ArchiveNode, bytes]) -> None:
    node, data = archived
    bomb = (SUITE / "golden-decompression" / "rle-first-block.zst").read_bytes()
    _hot_path(node, data).write_bytes(bomb)
    with node.session() as session, pytest.raises(Unavailable, match="size"):
        b"".join(stream_blob(blake3.blake3(data).hexdigest(), session=session, tiers=node.tiers))
    node.close()


def test_a_damaged_copy_falls_back_to_a_good_one(archived: tuple[ArchiveNode, bytes]) -> None:
    node, data = archived
    b3 = blake3.blake3(data).hexdigest()
    assert Worker(node).run_once()["replicate"] == 1  # the cold copy, in a pack
    with node.session() as session:
        cold_id = node.tier_ids(session=session)["cold"]
    _hot_path(node, data).write_bytes(os.urandom(len(data)))

    problems: list[str] = []
    with node.session() as session:
        got = b"".join(stream_blob(b3, session=session, tiers=node.tiers, problems=problems))
        assert got == data
        assert len(problems) == 1 and "hot" in problems[0]
        version = get_version(get_dataset("lab", "d", session=session), None, session=session)
        report = verify_version(version, session=session, tiers=node.tiers)
        assert [(c.tier, c.ok) for c in report.checks] == [("hot", False), ("cold", True)]
        assert report.blobs_without_good_copy == []
        replica = session.exec(
            select(models.Replica).where(models.Replica.tier_id == cold_id)
        ).one()
        assert replica.last_verified_at is not None
    node.close()


@given(
    name=st.text(alphabet="abcdef0123456789/", min_size=1, max_size=120),
    size=st.integers(min_value=0, max_value=2**36),
)
def test_pack_member_headers_are_what_tarfile_writes(name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    try:
        expected = info.tobuf(format=tarfile.USTAR_FORMAT)
    except ValueError:  # a name tarfile cannot write as USTAR
        return
    assert _header(name, size) == expected
