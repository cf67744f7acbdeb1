"""Two real Permafrost nodes on loopback: a *home* institution and its *partner*.

Each has its own catalog (SQLite, or a PostgreSQL schema each) and data folder and
runs the real app under uvicorn on a free port. The home node declares a tier of
kind ``federation`` pointing at the partner, and the partner registers the home
node's public key with a quota. Tests drive the home node's replication, audit and
repair engines on an :class:`ArchiveNode` sharing the home server's catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlmodel import select

from archive.catalog import models
from archive.config import FederationTierConfig, LocalTierConfig, Settings
from archive.identity import ensure_node_key, load_node_key, public_key_text
from archive.node import ArchiveNode
from federation.client import FederationClient
from federation.partners import add_partner
from federation.sealing import make_collection_key
from tests.archive.conftest import cli  # noqa: F401  (fixture)
from tests.support.server import serve
from web.app import create_app

MiB = 1024 * 1024


@dataclass
class Running:
    """One node: its settings, its server's URL, and the app (``app.state.node``)."""

    name: str
    settings: Settings
    url: str
    app: FastAPI
    stop: Callable[[], None]
    """Stop the server now (it is stopped at teardown anyway)."""

    @property
    def node(self) -> ArchiveNode:
        node: ArchiveNode = self.app.state.node
        return node

    @property
    def public_key(self) -> str:
        return public_key_text(ensure_node_key(self.settings.node_key_path)[0])

    @property
    def hot_path(self) -> Path:
        hot = self.settings.tiers["hot"]
        assert isinstance(hot, LocalTierConfig)
        return hot.path


@dataclass
class Pair:
    home: Running
    partner: Running
    engine: ArchiveNode
    """The home archive, opened like a worker process next to the home server."""


def _settings(data: Path, database_url: str | None, **extra: Any) -> Settings:
    tiers: dict[str, Any] = {"hot": LocalTierConfig(path=data / "tiers" / "hot", fsync=False)}
    tiers.update(extra.pop("tiers", {}))
    return Settings(data_dir=data, database_url=database_url, tiers=tiers, **extra)


PairFactory = Callable[..., Pair]
Wrapper = Callable[[Any], Any]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def home_database(request: pytest.FixtureRequest) -> str | None:
    """The home catalog: SQLite (None: the default file), or a fresh PostgreSQL schema.
    The partner's catalog is always its own SQLite file."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_schema_url")
        return url
    return None


@pytest.fixture
def make_pair(tmp_path: Path, home_database: str | None) -> Iterator[PairFactory]:
    """``make_pair(quota=..., encrypt=...)`` starts the partner, then home, paired."""
    with ExitStack() as stack:

        def start(name: str, settings: Settings, wrap: Wrapper | None = None) -> Running:
            ensure_node_key(settings.node_key_path)
            app = create_app(settings)
            server = stack.enter_context(ExitStack())
            url = server.enter_context(serve(wrap(app) if wrap else app))  # type: ignore[arg-type]
            return Running(name, settings, url, app, server.close)

        def factory(
            *,
            quota: int = 1024 * MiB,
            encrypt: bool = False,
            partner_wrap: Wrapper | None = None,
            partner_extra: dict[str, Any] | None = None,
            **home_extra: Any,
        ) -> Pair:
            """``partner_wrap`` puts ASGI middleware in front of the partner (a cheat);
            ``partner_extra`` are settings of the partner's."""
            partner = start(
                "partner",
                _settings(tmp_path / "partner", None, **(partner_extra or {})),
                partner_wrap,
            )
            key_file = None
            if encrypt:
                key_file = tmp_path / "home" / "keys" / "collection.key"
                make_collection_key(key_file)
            remote = FederationTierConfig(
                url=partner.url, encrypt=encrypt, collection_key_file=key_file
            )
            home_settings = _settings(
                tmp_path / "home",
                home_database,
                tiers={"partner": remote},
                public_url="http://home.invalid",
                **home_extra,
            )
            home = start("home", home_settings)
            with partner.node.session() as session:
                add_partner("home", home.url, home.public_key, quota, session=session)
            engine = ArchiveNode.open(home.settings)
            stack.callback(engine.close)
            return Pair(home, partner, engine)

        yield factory


Connect = Callable[..., FederationClient]


@pytest.fixture
def client_of() -> Iterator[Connect]:
    """``client_of(pair, key=None)``: a client of the partner signing as home (or ``key``)."""
    clients: list[FederationClient] = []

    def connect(pair: Pair, key: Ed25519PrivateKey | None = None) -> FederationClient:
        signing = key or load_node_key(pair.home.settings.node_key_path)
        clients.append(FederationClient(pair.partner.url, signing, name="partner"))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


def held(pair: Pair) -> tuple[list[tuple[str, str]], list[str]]:
    """What the partner holds for anyone: catalog rows and files under partners/."""
    with pair.partner.node.session() as session:
        rows = [(h.kind, h.name) for h in session.exec(select(models.HeldObject)).all()]
    root = pair.partner.hot_path / "partners"
    files = sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    return rows, files
