"""Changing a dataset's title and descriptive metadata after the fact.

A version's manifest carries the dataset's metadata (DESIGN section 3), so the
catalog can be rebuilt from any tier: an edit of a dataset that has versions is
therefore a new version with the same files and the new metadata, and the
history keeps every earlier description. A dataset with no version yet has no
manifest, and its row is simply changed.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from archive.catalog import models
from archive.datasets import (
    DatasetRef,
    NewEntry,
    commit_version,
    get_dataset,
    iter_entries,
    latest_version,
)
from tiers import Tier


def edit_dataset(
    ref: DatasetRef,
    *,
    session: Session,
    tier: Tier,
    title: str,
    metadata: dict[str, Any],
    agent: str,
) -> models.Version | None:
    """Set title and metadata; returns the new version, or None if none was needed.

    Raises:
        NotFound: no such dataset.
    """
    dataset = get_dataset(ref.collection, ref.dataset, session=session, lock=True)
    assert dataset.id is not None
    latest = latest_version(dataset.id, session=session)
    if latest is None:
        dataset.title, dataset.metadata_ = title, metadata
        session.add(dataset)
        return None
    assert latest.id is not None
    entries = [NewEntry(e.path, e.b3) for e in iter_entries(latest.id, session=session)]
    result = commit_version(
        ref,
        entries,
        session=session,
        tier=tier,
        message="metadata edited",
        title=title,
        metadata=metadata,
        agent=agent,
    )
    return result.version if result.created else None
