"""Getting files back out: exact bytes, every digest proven before a file appears.

Each file is streamed from the cheapest readable copy into a temporary file beside
its destination and renamed into place only after BLAKE3, SHA-256 and size were
proven equal to the catalog's; a copy that fails is reported and the next copy is
tried, so one damaged replica never stops a download while a good one exists.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sqlmodel import Session

from archive.catalog import models
from archive.datasets import EntryView, iter_entries
from archive.errors import (
    BlobDigestMismatch,
    InvalidInput,
    NotFound,
    RestoreRequired,
    Unavailable,
)
from archive.retrieval import get_blob, iter_verified, locate
from tiers import NeedsRestore, Tier, TierError


@dataclass
class CheckoutReport:
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


def stream_blob(
    b3: str, *, session: Session, tiers: dict[str, Tier], problems: list[str] | None = None
) -> Iterator[bytes]:
    """Verified bytes of a blob from the cheapest good copy.

    Each chunk is released one step late, so a blob of one chunk (most files) is
    wholly proven before any byte leaves, and a copy that fails before anything
    was released is passed over for the next one. A copy of a larger blob that
    fails after bytes were released raises: the consumer must discard what it got
    (:func:`write_file` does, by writing to a temporary file).

    Raises:
        Unavailable: no copy could be read whole.
        BlobDigestMismatch: the copy being streamed failed after bytes were released.
    """
    blob = get_blob(b3, session=session)
    errors: list[str] = []
    cold: list[tuple[str, str]] = []
    for loc in locate(b3, session=session):
        tier = tiers.get(loc.tier)
        if tier is None:
            errors.append(f"{loc.tier}: tier not configured here")
            continue
        held: bytes | None = None
        released = False
        try:
            for chunk in iter_verified(tier, loc, blob):
                if held is not None:
                    released = True
                    yield held
                held = chunk
        except NeedsRestore:
            cold.append((loc.tier, loc.key))
            continue
        except (TierError, BlobDigestMismatch) as exc:
            if released:
                raise
            errors.append(f"copy on {loc.tier} ({loc.key}): {exc}")
            continue
        if problems is not None:
            problems.extend(errors)
        if held is not None:
            yield held
        return
    if problems is not None:
        problems.extend(errors)
    if cold:
        raise RestoreRequired(b3, cold)
    raise Unavailable(f"no good copy of blob {b3}: " + ("; ".join(errors) or "none present"))


def write_blob(
    blob: models.Blob,
    dest: BinaryIO,
    *,
    session: Session,
    tiers: dict[str, Tier],
    problems: list[str],
) -> None:
    """Write a blob's verified bytes to ``dest``, trying each copy until one is whole."""
    errors: list[str] = []
    cold: list[tuple[str, str]] = []
    for loc in locate(blob.b3, session=session):
        tier = tiers.get(loc.tier)
        if tier is None:
            continue
        dest.seek(0)
        dest.truncate()
        try:
            for chunk in iter_verified(tier, loc, blob):
                dest.write(chunk)
        except NeedsRestore:
            cold.append((loc.tier, loc.key))
            continue
        except (TierError, BlobDigestMismatch) as exc:
            errors.append(f"copy on {loc.tier} ({loc.key}): {exc}")
            continue
        problems.extend(errors)
        return
    problems.extend(errors)
    if cold:
        raise RestoreRequired(blob.b3, cold)
    raise Unavailable(f"no good copy of blob {blob.b3}: " + ("; ".join(errors) or "none present"))


def write_file(
    entry: EntryView,
    dest: Path,
    *,
    session: Session,
    tiers: dict[str, Tier],
    problems: list[str],
    overwrite: bool = False,
) -> None:
    """Write one entry to ``dest`` atomically (temporary file, verify, rename)."""
    if dest.exists() and not overwrite:
        raise InvalidInput(f"{dest} exists; pass --overwrite to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    blob = get_blob(entry.b3, session=session)
    fd, tmp = tempfile.mkstemp(prefix=".permafrost-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            write_blob(blob, out, session=session, tiers=tiers, problems=problems)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkout(
    version: models.Version,
    dest: Path,
    *,
    session: Session,
    tiers: dict[str, Tier],
    prefix: str = "",
    overwrite: bool = False,
    on_file: Callable[[int], None] | None = None,
) -> CheckoutReport:
    """Write every entry of a version (or those under ``prefix``) below ``dest``."""
    assert version.id is not None
    report = CheckoutReport()
    root = dest.resolve()
    folder_prefix = prefix.rstrip("/") + "/" if prefix else ""
    for entry in iter_entries(version.id, session=session, prefix=folder_prefix):
        target = (root / entry.path[len(folder_prefix) :]).resolve()
        if not target.is_relative_to(root):  # entry paths are validated; belt and braces
            raise InvalidInput(f"entry {entry.path!r} would leave {root}")
        write_file(
            entry,
            target,
            session=session,
            tiers=tiers,
            problems=report.problems,
            overwrite=overwrite,
        )
        report.files += 1
        report.bytes += entry.size
        if on_file is not None:
            on_file(entry.size)
    if report.files == 0 and prefix:
        raise NotFound(f"no file or folder {prefix!r} in this version")
    return report
