"""File downloads: exact bytes, ETag and 304, ranges (RFC 9110), names (RFC 6266), digests."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from fastapi.testclient import TestClient

from archive.config import Settings
from archive.datasets import get_dataset, get_entry, get_version, parse_ref
from archive.ingest import ingest_tree
from archive.node import ArchiveNode
from archive.packs import blob_key
from tests.web.conftest import ADMIN_TOKEN, AUTH, Archived, content
from web.app import create_app

FILES = "/api/v1/datasets/c/d/versions/1/files"
ZSTD_FILE = "data/table.csv"
RAW_FILE = "data/noise.bin"
PACKED_RAW_FILE = "data/tiny-noise.bin"
PACKED_ZSTD_FILE = "notes.txt"


def url(path: str) -> str:
    return f"{FILES}/{quote(path)}"


def codec_of(node: ArchiveNode, path: str) -> str:
    with node.session() as session:
        version = get_version(get_dataset("c", "d", session=session), 1, session=session)
        assert version.id is not None
        return get_entry(version.id, path, session=session).codec


def test_every_file_downloads_exactly(archived: Archived) -> None:
    for path, data in archived.files.items():
        response = archived.client.get(url(path))
        assert response.status_code == 200, path
        assert response.content == data, path
        expected = content(data)
        assert response.headers["content-length"] == str(len(data))
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["etag"] == f'"{expected.b3}"'
        assert response.headers["accept-ranges"] == "bytes"
        sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
        assert response.headers["repr-digest"] == f"sha-256=:{sha}:"
        assert response.headers["digest"] == f"sha-256={sha}"


def test_sample_covers_both_codecs(archived: Archived) -> None:
    assert codec_of(archived.node, ZSTD_FILE) == "zstd"
    assert codec_of(archived.node, PACKED_ZSTD_FILE) == "zstd"
    assert codec_of(archived.node, RAW_FILE) == "raw"
    assert codec_of(archived.node, PACKED_RAW_FILE) == "raw"


def test_latest_and_nfd_spelling_reach_the_same_file(archived: Archived) -> None:
    name = "odd/résumé \u2013 数据.txt"
    nfd = "odd/re\u0301sume\u0301 \u2013 数据.txt"
    latest = archived.client.get(f"/api/v1/datasets/c/d/versions/latest/files/{quote(nfd)}")
    assert latest.status_code == 200
    assert latest.content == archived.files[name]
    assert latest.headers["cache-control"] == "private, no-cache"
    assert "immutable" in archived.client.get(url(name)).headers["cache-control"]


def test_etag_and_if_none_match(archived: Archived) -> None:
    etag = archived.client.get(url(ZSTD_FILE)).headers["etag"]
    for header in [etag, f"W/{etag}", f'"other", {etag}', "*"]:
        response = archived.client.get(url(ZSTD_FILE), headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
    changed = archived.client.get(url(ZSTD_FILE), headers={"If-None-Match": '"0000"'})
    assert changed.status_code == 200
    assert changed.content == archived.files[ZSTD_FILE]


@pytest.mark.parametrize("path", [ZSTD_FILE, RAW_FILE, PACKED_RAW_FILE, PACKED_ZSTD_FILE])
@pytest.mark.parametrize(
    ("spec", "window"),
    [
        ("bytes=0-0", slice(0, 1)),
        ("bytes=10-1009", slice(10, 1010)),
        ("bytes=1500-", slice(1500, None)),
        ("bytes=-700", slice(-700, None)),
        ("bytes=100-99999999999", slice(100, None)),
        ("BYTES=5-9", slice(5, 10)),
    ],
)
def test_single_ranges(archived: Archived, path: str, spec: str, window: slice) -> None:
    data = archived.files[path]
    expected = data[window]
    start = window.start if window.start >= 0 else len(data) + window.start
    response = archived.client.get(url(path), headers={"Range": spec})
    assert response.status_code == 206, spec
    assert response.content == expected
    assert response.headers["content-length"] == str(len(expected))
    assert (
        response.headers["content-range"]
        == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
    )
    assert response.headers["etag"] == f'"{content(data).b3}"'


def test_range_deep_inside_a_large_zstd_file(archived: Archived) -> None:
    data = archived.files[ZSTD_FILE]
    start = len(data) - 5 * 1024 * 1024 // 3
    response = archived.client.get(
        url(ZSTD_FILE), headers={"Range": f"bytes={start}-{start + 99_999}"}
    )
    assert response.status_code == 206
    assert response.content == data[start : start + 100_000]


def test_suffix_longer_than_the_file_is_the_whole_file(archived: Archived) -> None:
    data = archived.files[PACKED_ZSTD_FILE]
    response = archived.client.get(
        url(PACKED_ZSTD_FILE), headers={"Range": f"bytes=-{len(data) + 50}"}
    )
    assert response.status_code == 206
    assert response.content == data
    assert response.headers["content-range"] == f"bytes 0-{len(data) - 1}/{len(data)}"


@pytest.mark.parametrize("spec", ["bytes=999999999-", "bytes=-0"])
@pytest.mark.parametrize("path", [ZSTD_FILE, RAW_FILE])
def test_unsatisfiable_range_is_416(archived: Archived, path: str, spec: str) -> None:
    response = archived.client.get(url(path), headers={"Range": spec})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(archived.files[path])}"
    assert response.json()["error"] == "RangeNotSatisfiable"


@pytest.mark.parametrize(
    "spec", ["bytes=5-1", "bytes=0-1,4-5", "items=0-5", "bytes=abc", "bytes=", "bytes=--5"]
)
def test_ranges_we_ignore_send_the_whole_file(archived: Archived, spec: str) -> None:
    response = archived.client.get(url(RAW_FILE), headers={"Range": spec})
    assert response.status_code == 200, spec
    assert response.content == archived.files[RAW_FILE]


def test_if_range_sends_the_part_only_while_the_etag_matches(archived: Archived) -> None:
    etag = archived.client.head(url(RAW_FILE)).headers["etag"]
    part = archived.client.get(url(RAW_FILE), headers={"Range": "bytes=0-9", "If-Range": etag})
    assert part.status_code == 206
    assert part.content == archived.files[RAW_FILE][:10]
    for stale in ['"other"', f"W/{etag}", "Wed, 21 Oct 2015 07:28:00 GMT"]:
        whole = archived.client.get(
            url(RAW_FILE), headers={"Range": "bytes=0-9", "If-Range": stale}
        )
        assert whole.status_code == 200, stale
        assert whole.content == archived.files[RAW_FILE]


def test_head_gives_the_headers_without_the_body(archived: Archived) -> None:
    response = archived.client.head(url(ZSTD_FILE))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(archived.files[ZSTD_FILE]))
    assert response.headers["etag"] == f'"{content(archived.files[ZSTD_FILE]).b3}"'
    assert archived.client.head(url("missing.txt")).status_code == 404


def _disposition_names(header: str) -> tuple[str, str]:
    """(the ASCII fallback, the decoded filename*) of a Content-Disposition value."""
    assert header.startswith("attachment; ")
    assert "\n" not in header
    assert "\r" not in header
    fallback = header.split('filename="', 1)[1].split('"', 1)[0]
    star = header.split("filename*=UTF-8''", 1)[1]
    assert all(c.isascii() and c.isprintable() and c not in ' ";\\' for c in star)
    return fallback, unquote(star, encoding="utf-8", errors="strict")


@pytest.mark.parametrize(
    ("path", "fallback"),
    [
        ('odd/say "hi"; 100% done.txt', "say _hi__ 100_ done.txt"),
        ("odd/résumé \u2013 数据.txt", "resume _ __.txt"),
        ("notes.txt", "notes.txt"),
    ],
)
def test_content_disposition_is_safe_for_any_name(
    archived: Archived, path: str, fallback: str
) -> None:
    header = archived.client.get(url(path)).headers["content-disposition"]
    ascii_name, exact = _disposition_names(header)
    assert exact == path.rsplit("/", 1)[-1]
    assert ascii_name == fallback


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        # Both are proven before any byte leaves, and no other copy exists: 503.
        (os.urandom(1024 * 1024), 503, "Unavailable"),  # raw: the digest differs
        (bytes(range(256)) * 4096, 503, "Unavailable"),  # zstd: the frame fails to decode
    ],
)
def test_damaged_copy_is_never_served(tmp_path: Path, data: bytes, status: int, error: str) -> None:
    """A loose blob whose stored bytes were altered: an error, never the wrong bytes."""
    settings = Settings(data_dir=tmp_path / "data", pack_below=0, api_token=ADMIN_TOKEN)
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.bin").write_bytes(data)
    with TestClient(create_app(settings), raise_server_exceptions=False, headers=AUTH) as client:
        node: ArchiveNode = client.app.state.node  # type: ignore[attr-defined]
        ingest_tree(node, source, parse_ref("c/d"))
        stored = settings.data_dir / "tiers" / "hot" / blob_key(content(data).b3)
        damaged = bytearray(stored.read_bytes())
        damaged[-1] ^= 0xFF
        stored.chmod(0o644)
        stored.write_bytes(bytes(damaged))
        response = client.get(f"{FILES}/f.bin")
        assert response.status_code == status
        assert response.json()["error"] == error
