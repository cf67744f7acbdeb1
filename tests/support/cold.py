"""An archive whose files can only be read from cold storage, as after losing the hot tier."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlmodel import select

from archive.catalog import models
from archive.catalog.models import ReplicaState
from archive.config import LocalColdTierConfig, LocalTierConfig, Settings
from archive.node import ArchiveNode


def cold_settings(data_dir: Path, *, restore_delay_seconds: float = 3600) -> Settings:
    return Settings(
        data_dir=data_dir,
        tiers={
            "hot": LocalTierConfig(path=data_dir / "hot"),
            "cold": LocalColdTierConfig(
                path=data_dir / "cold", restore_delay_seconds=restore_delay_seconds
            ),
        },
    )


def lose_hot_copies(node: ArchiveNode) -> None:
    """The hot objects are gone and an audit has said so: only cold copies remain."""
    root = Path(node.settings.tiers["hot"].path)  # type: ignore[union-attr]
    shutil.rmtree(root / "blobs", ignore_errors=True)
    shutil.rmtree(root / "packs", ignore_errors=True)
    with node.session() as session:
        hot = node.tier_ids(session=session)["hot"]
        for replica in session.exec(select(models.Replica).where(models.Replica.tier_id == hot)):
            replica.state = ReplicaState.MISSING
            session.add(replica)
