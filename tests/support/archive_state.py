"""Snapshots of everything an archive holds, to prove a refused input changed nothing."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import SQLModel

from archive.node import ArchiveNode


@dataclass(frozen=True)
class ArchiveState:
    rows: dict[str, int]
    objects: dict[str, tuple[tuple[str, int], ...]]


def snapshot(node: ArchiveNode, *, ignore_tables: tuple[str, ...] = ()) -> ArchiveState:
    """Row counts of every catalog table and every object (key, size) in every tier."""
    rows: dict[str, int] = {}
    with node.engine.connect() as conn:
        for name, table in SQLModel.metadata.tables.items():
            if name in ignore_tables:
                continue
            rows[name] = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    objects = {
        name: tuple((info.key, info.size) for info in tier.list(""))
        for name, tier in node.tiers.items()
    }
    return ArchiveState(rows, objects)
