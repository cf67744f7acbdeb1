"""The running archive: settings, catalog engine and open tiers, built once.

Every entry point (CLI command, API process, worker) builds one ``ArchiveNode``
from the settings and passes it down; nothing deeper reads configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlmodel import Session, select

from archive.catalog import models
from archive.catalog.db import make_engine, read_scope, session_scope
from archive.config import Settings
from archive.errors import ConfigError
from tiers import Tier, TierError, open_tier


@dataclass
class ArchiveNode:
    settings: Settings
    engine: sa.Engine
    tiers: dict[str, Tier] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings, *, upgrade: bool = True) -> ArchiveNode:
        """Connect the catalog (migrating it if ``upgrade``), open every tier, record them.

        Raises:
            ConfigError: a tier cannot be built from its settings.
        """
        if upgrade:
            from archive.catalog.migrate import ensure_schema

            ensure_schema(settings.catalog_url)
        engine = make_engine(settings.catalog_url)
        tiers: dict[str, Tier] = {}
        for name, cfg in settings.tiers.items():
            try:
                tiers[name] = open_tier(name, cfg.kind, **cfg.backend_settings())
            except TierError as exc:
                raise ConfigError(str(exc)) from exc
        node = cls(settings, engine, tiers)
        with node.session() as session:
            node.sync_tiers(session=session)
        return node

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.engine) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only (see :func:`archive.catalog.db.read_scope`)."""
        with read_scope(self.engine) as session:
            yield session

    @property
    def hot(self) -> Tier:
        return self.tiers[self.settings.hot_tier]

    def sync_tiers(self, *, session: Session) -> None:
        """Make the catalog's Tier rows match the configuration (tiers are never dropped)."""
        rows = {t.name: t for t in session.exec(select(models.Tier)).all()}
        for name, cfg in self.settings.tiers.items():
            row = rows.get(name) or models.Tier(name=name, kind=cfg.kind, role=cfg.role)
            row.kind, row.role, row.region = cfg.kind, cfg.role, cfg.region
            row.settings = cfg.public_settings()
            session.add(row)

    def tier_ids(self, *, session: Session) -> dict[str, int]:
        rows = session.exec(select(models.Tier.name, models.Tier.id)).all()
        return {name: tier_id for name, tier_id in rows if tier_id is not None}

    def close(self) -> None:
        for tier in self.tiers.values():
            tier.close()
        self.engine.dispose()
