"""Many small blobs in one upload, each proven, stored together as one pack.

One ``PUT /blobs/{b3}`` per small file costs the server an HTTP request, a thread
hop, an object and a catalog record per file: for a tree of thousands of small
files that, not the bytes, is the cost (bench/README.md). A batch carries many
small blobs in one request and stores the new ones as one pack on the hot tier,
as local ingest does (DESIGN section 3: a hot tier may pack).

The body is a POSIX tar stream (ustar or pax, as ``tar`` or Python's ``tarfile``
write it), read with :mod:`tarfile` in streaming mode (``r|``)::

    index.json       {"format": "permafrost-batch/1",
                      "blobs": [{"blake3": HEX, "sha256": HEX, "size": N}, ...]}
    <blake3 hex>     the original bytes of the first blob of the index
    <blake3 hex>     ... one regular member per index entry, in the same order

Every member is proven as the single-blob upload proves its body: its length is
the size claimed, its bytes hash to the BLAKE3 it is named by and to the SHA-256
claimed. If any member is wrong, or the stream is not exactly that, the whole
batch is refused (:class:`BatchMemberRefused`, :class:`BatchDigestMismatch`,
naming the blob) and nothing is kept: the pack is staged and only promoted once
the last member is proven. Blobs already held are checked and skipped; the new
ones go into one pack (one object and its sidecar index), recorded in one catalog
transaction, before the caller is answered.

Memory stays bounded: members are smaller than ``pack_below`` (read one at a
time), the index is at most ``max_json_body_bytes``, and the headers tarfile
reads between two members (pax or GNU long names) may not exceed those limits.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import blake3
from sqlmodel import col, select

from archive.access import Principal, grant_upload, needs_grant
from archive.batch_format import BATCH_FORMAT, BLOCK, INDEX_NAME, BatchClaim
from archive.blobstore import present_blobs, record_pack
from archive.catalog import models
from archive.encoding import BlobDigest, Encoder
from archive.errors import InvalidInput
from archive.node import ArchiveNode
from archive.packs import PackWriter
from archive.upload import HEX, UploadDigestMismatch, check_b3

#: tarfile's reads from the body, in bytes (its default, 10 KiB, costs more calls).
READ_SIZE = 64 * 1024
#: Header bytes (pax records, GNU long names) allowed between two members.
HEADER_ALLOWANCE = 64 * 1024


class BatchMemberRefused(InvalidInput):
    """One member of a batch is not what its index claims; nothing of the batch is kept."""

    def __init__(self, blob: str, reason: str) -> None:
        super().__init__(f"batch member {blob}: {reason}; nothing of this batch was stored")
        self.blob = blob
        self.reason = reason


class BatchDigestMismatch(UploadDigestMismatch):
    """A member's bytes hash to something else than it claims; nothing of the batch is kept."""

    def __init__(self, blob: str, expected: str, found: str, algorithm: str = "blake3") -> None:
        super().__init__(expected, found, algorithm)
        self.args = (
            f"batch member {blob}: {algorithm} expected {expected}, found {found}; "
            "nothing of this batch was stored",
        )
        self.blob = blob


@dataclass
class BatchResult:
    created: list[BlobDigest] = field(default_factory=list)
    """Blobs stored by this batch (all in ``pack_id``)."""
    held: list[str] = field(default_factory=list)
    """Blobs the archive already held (their bytes were still checked)."""
    pack_id: str | None = None


@dataclass(frozen=True)
class BatchLimits:
    """What one batch may carry on this server (``GET /blobs/batch`` tells clients)."""

    member_below: int
    """Each member is smaller than this (the server's ``pack_below``; 0: no batches)."""
    max_members: int
    max_bytes: int
    """Largest request body."""


def batch_limits(node: ArchiveNode) -> BatchLimits:
    s = node.settings
    return BatchLimits(s.pack_below, s.batch_max_members, s.max_batch_bytes)


class _BodyReader(io.RawIOBase):
    """A readable stream over chunks, refusing more than ``window_limit`` bytes read
    between two calls of :meth:`new_window` (so tarfile never buffers a huge header)."""

    def __init__(self, chunks: Iterator[bytes], window_limit: int) -> None:
        self._chunks = chunks
        self._chunk = b""
        self._pos = 0
        self.window = 0
        self.window_limit = window_limit

    def readable(self) -> bool:
        return True

    def new_window(self) -> None:
        self.window = 0

    def read(self, size: int = -1) -> bytes:
        while self._pos >= len(self._chunk):
            nxt = next(self._chunks, None)
            if nxt is None:
                return b""
            self._chunk, self._pos = nxt, 0
        end = len(self._chunk) if size < 0 else self._pos + size
        data = self._chunk[self._pos : end]
        self._pos += len(data)
        self.window += len(data)
        if self.window > self.window_limit:
            raise InvalidInput(
                f"a batch member or header is larger than this server takes "
                f"({self.window_limit} bytes); nothing of this batch was stored"
            )
        return data


def parse_index(raw: bytes, *, member_below: int, max_members: int) -> list[BatchClaim]:
    """The claims of a batch's ``index.json``.

    Raises:
        InvalidInput: not the documented shape, too many members, a member not smaller
            than ``member_below``, or a blob listed twice.
    """
    try:
        index = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the batch's {INDEX_NAME} is not JSON: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != BATCH_FORMAT:
        raise InvalidInput(f"the batch's {INDEX_NAME} is not a {BATCH_FORMAT} index")
    entries = index.get("blobs")
    if not isinstance(entries, list):
        raise InvalidInput(f"the batch's {INDEX_NAME} has no list of blobs")
    if len(entries) > max_members:
        raise InvalidInput(
            f"a batch of {len(entries)} blobs: this server takes at most {max_members} at once"
        )
    claims: list[BatchClaim] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise InvalidInput(f"the batch's {INDEX_NAME} lists something that is not a blob")
        b3, sha256, size = entry.get("blake3"), entry.get("sha256"), entry.get("size")
        if not isinstance(b3, str):
            raise InvalidInput("a batch index entry has no blake3")
        check_b3(b3)
        if not isinstance(sha256, str) or len(sha256) != 64 or not HEX.issuperset(sha256.lower()):
            raise BatchMemberRefused(b3, "sha256 is not a SHA-256 hex digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BatchMemberRefused(b3, "size is not a byte count")
        if size >= member_below:
            raise BatchMemberRefused(
                b3,
                f"{size} bytes; a batch carries blobs under {member_below} bytes "
                "(send larger ones with PUT /blobs/{b3})",
            )
        if b3 in seen:
            raise BatchMemberRefused(b3, "listed twice")
        seen.add(b3)
        claims.append(BatchClaim(b3, sha256.lower(), size))
    return claims


def _next_member(tar: tarfile.TarFile, reader: _BodyReader) -> tarfile.TarInfo | None:
    reader.new_window()
    try:
        return tar.next()
    except tarfile.TarError as exc:
        raise InvalidInput(f"the batch is not a valid tar stream: {exc}") from exc


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(info)
    if handle is None:
        raise InvalidInput(f"batch member {info.name!r} is not a regular file")
    try:
        data = handle.read()
    except tarfile.TarError as exc:
        raise InvalidInput(f"the batch is not a valid tar stream: {exc}") from exc
    if len(data) != info.size:
        raise InvalidInput(f"the batch ended inside member {info.name!r}")
    return data


def store_batch(node: ArchiveNode, chunks: Iterable[bytes], *, principal: Principal) -> BatchResult:
    """Prove every blob of a batch and store the new ones as one pack on the hot tier.

    Returns once the pack is durable (promoted with its sidecar index) and recorded;
    the caller is granted every blob it sent, held ones included, as a single upload
    grants its blob.

    Raises:
        BatchDigestMismatch: a member's bytes do not hash to its claims (nothing kept).
        BatchMemberRefused: a member is not what the index says (nothing kept).
        InvalidInput: the body is not a batch as documented above (nothing kept).
    """
    settings = node.settings
    member_below = settings.pack_below
    index_limit = settings.max_json_body_bytes
    # Between two members tarfile reads one member's header, bytes and padding, headers
    # of the next, and up to one READ_SIZE ahead.
    window = max(member_below, index_limit) + HEADER_ALLOWANCE + READ_SIZE + 2 * BLOCK
    reader = _BodyReader(iter(chunks), window)
    try:
        tar = tarfile.open(fileobj=reader, mode="r|", bufsize=READ_SIZE)  # noqa: SIM115
    except tarfile.TarError as exc:
        raise InvalidInput(f"the batch is not a valid tar stream: {exc}") from exc
    info = _next_member(tar, reader)
    if info is None or info.name != INDEX_NAME or not info.isreg():
        raise InvalidInput(f"a batch starts with its {INDEX_NAME} member")
    if info.size > index_limit:
        raise InvalidInput(f"the batch's {INDEX_NAME} is larger than {index_limit} bytes")
    claims = parse_index(
        _read_member(tar, info),
        member_below=member_below,
        max_members=settings.batch_max_members,
    )
    tier = node.hot
    wanted = [c.b3 for c in claims]
    with node.reading() as session:
        tier_id = node.tier_ids(session=session)[tier.name]
        held_sha256: dict[str, str] = {}
        for i in range(0, len(wanted), 900):
            query = select(models.Blob.b3, models.Blob.sha256).where(
                col(models.Blob.b3).in_(wanted[i : i + 900])
            )
            held_sha256.update(session.exec(query).all())
        present = present_blobs(held_sha256, session=session)
    held = {b3: sha for b3, sha in held_sha256.items() if b3 in present}
    result = BatchResult()
    writer = PackWriter(tier)
    encoder = Encoder(settings.zstd_level, threads=0)
    try:
        for claim in claims:
            info = _next_member(tar, reader)
            if info is None:
                raise BatchMemberRefused(claim.b3, "the batch ended before this member")
            if info.name != claim.b3:
                raise BatchMemberRefused(
                    claim.b3, f"expected next, found a member named {info.name[:100]!r}"
                )
            if not info.isreg():
                raise BatchMemberRefused(claim.b3, "not a regular file member")
            if info.size != claim.size:
                raise BatchMemberRefused(
                    claim.b3, f"the member holds {info.size} bytes, the index claims {claim.size}"
                )
            data = _read_member(tar, info)
            if claim.b3 in held:
                found = blake3.blake3(data).hexdigest()
                if found != claim.b3:
                    raise BatchDigestMismatch(claim.b3, claim.b3, found)
                if held[claim.b3] != claim.sha256:
                    raise BatchDigestMismatch(claim.b3, claim.sha256, held[claim.b3], "sha256")
                result.held.append(claim.b3)
                continue
            digest, stored = encoder.encode_bytes(data)
            if digest.b3 != claim.b3:
                raise BatchDigestMismatch(claim.b3, claim.b3, digest.b3)
            if digest.sha256 != claim.sha256:
                raise BatchDigestMismatch(claim.b3, claim.sha256, digest.sha256, "sha256")
            writer.add(digest, stored)
            result.created.append(digest)
        extra = _next_member(tar, reader)
        if extra is not None:
            raise InvalidInput(
                f"the batch holds a member its index does not list: {extra.name[:100]!r}"
            )
        _drain_padding(reader)
        pack = writer.seal()
    except BaseException:
        writer.abort()
        raise
    result.pack_id = pack.id if pack is not None else None
    if pack is None and not needs_grant(principal):
        return result
    with node.session() as session:
        if pack is not None:
            record_pack(pack, tier=tier.name, tier_id=tier_id, session=session)
        for b3 in wanted:
            grant_upload(principal, b3, session=session)
    return result


def _drain_padding(reader: _BodyReader) -> None:
    """Read the body to its end; what follows the end-of-archive blocks may only be zeros
    (tar pads to a record). Bytes tarfile already read ahead are not seen here: a stray
    header there reads to tarfile as the end, and every listed member is proven anyway."""
    reader.new_window()
    while chunk := reader.read(READ_SIZE):
        if chunk.count(0) != len(chunk):
            raise InvalidInput("the batch holds data after the end of its tar stream")
