"""Catalog database fixtures: an empty database on SQLite and on PostgreSQL.

PostgreSQL tests need a server: set ``PERMAFROST_TEST_POSTGRES_URL`` (``.ci/run``
does when one answers). Each test gets its own schema in that database, created
empty and dropped afterwards, and URLs whose connections put it first on the
``search_path``; tests therefore run side by side, even from several checkouts
sharing one server, and the database itself is never changed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from archive.catalog.db import make_engine, normalize_url
from archive.catalog.migrate import upgrade

POSTGRES_URL_VARIABLE = "PERMAFROST_TEST_POSTGRES_URL"
POSTGRES_SKIP_REASON = (
    "PostgreSQL tests need PERMAFROST_TEST_POSTGRES_URL "
    "(e.g. postgresql://postgres@127.0.0.1:5432/test); .ci/run sets it when a server answers"
)


def url_with_search_path(url: str, schema: str) -> str:
    """``url`` with ``options=-csearch_path=<schema>``, which libpq sends at connect."""
    return (
        sa.make_url(url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server's URL from the environment; skips the test when unset."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(POSTGRES_SKIP_REASON)
    return url


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A URL for a fresh, empty schema, dropped with everything in it after the test."""
    schema = f"permafrost_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(postgres_url), poolclass=NullPool)
    try:
        with admin.begin() as connection:
            connection.execute(sa.schema.CreateSchema(schema))
        yield url_with_search_path(postgres_url, schema)
        with admin.begin() as connection:
            # A session the test left inside a transaction would make the drop wait forever.
            connection.exec_driver_sql("SET LOCAL lock_timeout = '30s'")
            connection.execute(sa.schema.DropSchema(schema, cascade=True))
    finally:
        admin.dispose()


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def catalog_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty catalog database: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'catalog.db'}"
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


@pytest.fixture
def catalog_engine(catalog_url: str) -> Iterator[sa.Engine]:
    """An engine on ``catalog_url`` after migrating it to head, as the archive would."""
    upgrade(catalog_url)
    engine = make_engine(catalog_url)
    yield engine
    engine.dispose()
