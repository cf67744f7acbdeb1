"""Bring a catalog database to the schema this code expects (Alembic, ``migrations/``).

The catalog outlives any one release of Permafrost, so its schema only ever changes
through numbered Alembic revisions shipped inside the package (``migrations/versions``).
Everything here builds its Alembic configuration in code, so an installed wheel
migrates without an ``alembic.ini`` in the working directory.

Every upgrade or downgrade runs in ONE transaction that first takes the migration
lock, so two processes starting at once (two web workers, a worker and the CLI)
never both create the same tables:

* PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key; DDL is transactional, so the
  second process waits, then finds the schema at head and does nothing.
* SQLite: ``make_engine`` begins with ``BEGIN IMMEDIATE``, which takes the write lock
  at once; the second process waits (busy timeout) the same way. Foreign keys are
  switched off around the transaction, as the SQLite manual requires for table
  rebuilds (https://sqlite.org/lang_altertable.html#otheralter, which Alembic's
  batch mode performs), and ``PRAGMA foreign_key_check`` must pass before commit.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from archive.catalog.db import make_engine, normalize_url
from archive.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic is imported where it is used: a catalog already at head (every start but the
# first after an upgrade) is recognised without it, which saves a CLI command 0.2-0.4 s.
_REVISION = re.compile(r'^revision(?::[^=\n]+)?\s*=\s*"([^"]+)"\s*$', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision(?::[^=\n]+)?\s*=\s*(None|"[^"]+")\s*$', re.MULTILINE)

MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"permafrost.catalog.migrate").digest()[:8], "big", signed=True
)
"""The ``pg_advisory_xact_lock`` key; fixed so every Permafrost process agrees on it."""

_ALEMBIC_COMMAND_LOCK = threading.Lock()
"""Alembic binds ``alembic.context`` and ``alembic.op`` as module globals for the length
of one command, so two commands in one process (two threads) must not overlap; the
database lock above only serialises processes."""


def _script_location() -> Path:
    """The ``migrations`` package folder, wherever the package is installed."""
    location = Path(str(importlib.resources.files("migrations")))
    if not (location / "env.py").is_file():
        raise ConfigError(
            f"Alembic environment not found in {location}: "
            "install Permafrost from a folder or wheel, not a zip"
        )
    return location


def alembic_config(url: str, *, connection: sa.Connection | None = None) -> Config:
    """An Alembic ``Config`` for the catalog at ``url``, built without an ini file.

    Args:
        url: A SQLAlchemy URL; ``postgresql://`` is taken to mean psycopg 3.
        connection: Run the migrations on this connection instead of opening one.
            The caller then owns the transaction and the migration lock.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    # ConfigParser interpolates "%": URL-escaped passwords and options must be doubled.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextmanager
def migration_connection(url: str) -> Iterator[sa.Connection]:
    """A connection inside one transaction that holds the migration lock.

    The transaction commits when the block ends without error and rolls back
    otherwise, so a failed upgrade leaves the previous schema in place.

    Raises:
        ConfigError: On SQLite, the migrated data breaks a foreign key.
    """
    engine = make_engine(url, poolclass=NullPool)
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as connection:
            if sqlite:
                _set_sqlite_foreign_keys(connection, enabled=False)
            try:
                with connection.begin():
                    if engine.dialect.name == "postgresql":
                        connection.execute(
                            sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY))
                        )
                    yield connection
                    if sqlite:
                        _check_sqlite_foreign_keys(connection)
            finally:
                if sqlite:
                    _set_sqlite_foreign_keys(connection, enabled=True)
    finally:
        engine.dispose()


def _set_sqlite_foreign_keys(connection: sa.Connection, *, enabled: bool) -> None:
    """Switch enforcement at the driver level: the pragma is a no-op inside a transaction."""
    assert not connection.in_transaction()
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    finally:
        cursor.close()


def _check_sqlite_foreign_keys(connection: sa.Connection) -> None:
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        shown = ", ".join(f"{row[0]} rowid {row[1]} -> {row[2]}" for row in violations[:5])
        raise ConfigError(f"migration broke {len(violations)} foreign key(s): {shown}")


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the catalog at ``url`` forward to ``revision`` (under the migration lock)."""
    from alembic import command

    with _ALEMBIC_COMMAND_LOCK:
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate back to ``revision`` (``"base"`` drops every table); for tests and rollbacks."""
    from alembic import command

    with _ALEMBIC_COMMAND_LOCK:
        command.downgrade(alembic_config(url), revision)


def _script_directory() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(_script_location()))


def head_revision() -> str:
    """The newest revision this code ships (exactly one: branches must be merged)."""
    head = _script_directory().get_current_head()
    if head is None:
        raise ConfigError("no Alembic revisions found in the migrations package")
    return head


def current_revision(url: str) -> str | None:
    """The revision the catalog at ``url`` is at; ``None`` for an empty database."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def shipped_head() -> str | None:
    """The head revision, read off the revision files with two patterns, without Alembic.

    ``None`` when a file does not follow the plain ``revision = "..."`` /
    ``down_revision = ...`` form or the revisions do not end in one head: the caller
    then asks Alembic (:func:`head_revision`), which knows every form.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (_script_location() / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(1) != "None":
            parents.add(down.group(1).strip('"'))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _stamped_revision(url: str) -> str | None:
    """``alembic_version.version_num`` by plain SQL; ``None`` if absent or unreadable."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except sa.exc.DBAPIError:
        return None
    finally:
        engine.dispose()
    return str(rows[0][0]) if len(rows) == 1 else None


def is_up_to_date(url: str) -> bool:
    """Whether the catalog at ``url`` is at :func:`head_revision`.

    Raises:
        ConfigError: The database is at a revision this code does not know, i.e. a
            newer Permafrost migrated it; running old code against it could corrupt it.
    """
    current = current_revision(url)
    head = head_revision()
    known = {revision.revision for revision in _script_directory().walk_revisions()}
    if current is not None and current not in known:
        shown = sa.make_url(normalize_url(url)).render_as_string(hide_password=True)
        raise ConfigError(
            f"the catalog at {shown} is at schema revision {current!r}, which this "
            f"Permafrost does not know (newest known: {head!r}); run a newer release"
        )
    return current == head


def ensure_schema(url: str) -> None:
    """Upgrade the catalog to head if it is behind; the embedded default calls this on start.

    Safe to call from several processes or threads at once: the check is repeated
    inside the locked transaction (Alembic reads ``alembic_version`` after taking the
    lock), so the loser of the race finds the schema already at head.
    """
    head = shipped_head()
    if head is not None and _stamped_revision(url) == head:
        return
    if not is_up_to_date(url):
        upgrade(url)
