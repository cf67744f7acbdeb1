"""Alembic environment of the catalog (DESIGN section 4).

Run through :mod:`archive.catalog.migrate` (which builds the configuration in code),
or from the command line with ``alembic -c migrations/alembic.ini -x url=...`` (see
README.md here). Revisions never import ``archive.catalog.models``: a revision is a
frozen snapshot of the schema, and ``_render_type`` writes our own column types as
the plain SQLAlchemy types they store.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.operations.ops import MigrationScript
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from archive.catalog import models
from archive.catalog.db import normalize_url
from archive.catalog.migrate import migration_connection

config = context.config
if config.config_file_name is not None:  # the command line: log what runs
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = SQLModel.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=sqlite:///path/to/catalog.db")
    return normalize_url(url)


def _render_type(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write our column types as the SQLAlchemy types the database sees."""
    if type_ != "type":
        return False
    if isinstance(obj, models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def _number_revision(
    migration_context: MigrationContext, revision: Any, directives: list[MigrationScript]
) -> None:
    """Number revisions 0001, 0002, ... and write no file when autogenerate finds nothing.

    Sequential ids make the order obvious in ``versions/``, and two branches that each
    add a revision collide on the file name as well as on Alembic's heads check.
    """
    script = directives[0]
    if getattr(config.cmd_opts, "autogenerate", False) and script.upgrade_ops_list[0].is_empty():
        directives[:] = []
        return
    if getattr(config.cmd_opts, "rev_id", None):
        return
    heads = migration_context.script.get_heads() if migration_context.script else []
    if not heads:
        script.rev_id = "0001"
    elif len(heads) == 1 and heads[0].isdigit():
        script.rev_id = f"{int(heads[0]) + 1:04d}"


def _configure(**options: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_type,
        process_revision_directives=_number_revision,
        **options,
    )


def run_migrations_offline() -> None:
    """``alembic ... upgrade head --sql``: print the SQL for a DBA to review and run."""
    url = _url()
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    # SQLite's DDL is transactional even though Alembic assumes otherwise; saying so
    # keeps a whole upgrade in one transaction when the caller passed a bare connection.
    _configure(connection=connection, render_as_batch=sqlite, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    with migration_connection(_url()) as connection:
        _run_on(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
