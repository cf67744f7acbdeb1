"""Version manifests: canonical JSON, hash-chained (DESIGN section 3).

A manifest is the self-describing record of one dataset version, stored in the
tier beside the blobs so the catalog can be rebuilt from storage alone. Its bytes
are canonical (keys sorted, no insignificant whitespace, UTF-8, integers only: the
subset of RFC 8785 JSON Canonicalization our documents use), so its BLAKE3 is
stable, and it names the BLAKE3 of the previous version's manifest: history is a
hash chain, and altering any past version breaks every later link.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

FORMAT = "permafrost-manifest/1"


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    b3: str
    sha256: str
    size: int


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def manifest_key(collection: str, dataset: str, number: int) -> str:
    return f"manifests/{collection}/{dataset}/v{number}.json"


def render(
    *,
    dataset: dict[str, Any],
    number: int,
    created: dt.datetime,
    message: str,
    previous_b3: str | None,
    entries: Sequence[ManifestEntry],
) -> Iterator[bytes]:
    """Yield the canonical bytes of a manifest in pieces (a million entries stay cheap).

    ``entries`` must be sorted by path; keys appear in sorted order so the result
    equals ``json.dumps(doc, sort_keys=True, separators=(",", ":"))``.
    """
    head = {
        "created": created.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "dataset": dataset,
    }
    # Sorted top-level keys: created, dataset, entries, format, message, previous, version.
    yield _canonical(head)[:-1].encode() + b',"entries":['
    batch: list[str] = []
    for i, e in enumerate(entries):
        if i and not batch:
            yield b","
        batch.append(_canonical({"b3": e.b3, "path": e.path, "sha256": e.sha256, "size": e.size}))
        if len(batch) == 4096:
            yield ",".join(batch).encode()
            batch = []
    if batch:
        yield ",".join(batch).encode()
    tail = {"format": FORMAT, "message": message, "previous": previous_b3, "version": number}
    yield b"]," + _canonical(tail)[1:].encode()


def parse(data: bytes) -> dict[str, Any]:
    """Parse a manifest and check its format marker.

    Raises:
        ValueError: not a Permafrost manifest.
    """
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a permafrost manifest")
    return doc
