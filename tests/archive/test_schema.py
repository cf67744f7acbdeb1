"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL.

If a test here fails after a change to ``archive/catalog/models.py``, add a revision
(``migrations/README.md`` gives the command) instead of editing these tests.
"""

from __future__ import annotations

import ast
import importlib.resources
import io
import subprocess
import sys
import threading
import time
from pathlib import Path
from pprint import pformat
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

from archive.catalog import migrate
from archive.catalog.db import make_engine
from archive.errors import ConfigError

VERSION_TABLE = "alembic_version"
REVISIONS = Path(str(importlib.resources.files("migrations"))) / "versions"


def _snapshot(url: str) -> dict[str, Any]:
    """Tables, columns with nullability, unique constraints, indexes, foreign keys, checks."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            snapshot: dict[str, Any] = {}
            for table in sorted(set(inspector.get_table_names()) - {VERSION_TABLE}):
                snapshot[table] = {
                    "columns": {c["name"]: c["nullable"] for c in inspector.get_columns(table)},
                    "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                    "unique": {
                        tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
                    },
                    "indexes": {
                        i["name"]: (tuple(i["column_names"]), bool(i["unique"]))
                        for i in inspector.get_indexes(table)
                        if not i.get("duplicates_constraint")
                    },
                    "foreign_keys": {
                        (
                            tuple(f["constrained_columns"]),
                            f["referred_table"],
                            tuple(f["referred_columns"]),
                        )
                        for f in inspector.get_foreign_keys(table)
                    },
                    "checks": {c["name"] for c in inspector.get_check_constraints(table)},
                }
            return snapshot
    finally:
        engine.dispose()


def _model_snapshot() -> dict[str, Any]:
    snapshot: dict[str, Any] = {}
    for name, table in sorted(SQLModel.metadata.tables.items()):
        constraints = table.constraints
        snapshot[name] = {
            "columns": {c.name: c.nullable for c in table.columns},
            "primary_key": [c.name for c in table.primary_key.columns],
            "unique": {
                tuple(c.name for c in u.columns)
                for u in constraints
                if isinstance(u, sa.UniqueConstraint)
            },
            "indexes": {
                i.name: (tuple(c.name for c in i.columns), bool(i.unique)) for i in table.indexes
            },
            "foreign_keys": {
                (
                    tuple(c.name for c in f.columns),
                    f.referred_table.name,
                    tuple(e.column.name for e in f.elements),
                )
                for f in table.foreign_key_constraints
            },
            "checks": {c.name for c in constraints if isinstance(c, sa.CheckConstraint)},
        }
    return snapshot


def test_migrated_schema_has_no_autogenerate_diff(catalog_url: str) -> None:
    migrate.upgrade(catalog_url)
    engine = make_engine(catalog_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()
    assert diff == [], "models and migrations differ; add a revision:\n" + pformat(diff)


def test_migrated_schema_matches_models_table_by_table(catalog_url: str) -> None:
    migrate.upgrade(catalog_url)
    database, models = _snapshot(catalog_url), _model_snapshot()
    assert list(database) == list(models)
    for table in models:
        assert database[table] == models[table], table


def test_constraints_have_deterministic_names(catalog_url: str) -> None:
    """Later revisions drop and alter constraints by name, on SQLite too."""
    migrate.upgrade(catalog_url)
    engine = make_engine(catalog_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            for table in SQLModel.metadata.tables:
                assert inspector.get_pk_constraint(table)["name"] == f"pk_{table}"
                for fk in inspector.get_foreign_keys(table):
                    column = fk["constrained_columns"][0]
                    assert fk["name"] == f"fk_{table}_{column}_{fk['referred_table']}"
                for unique in inspector.get_unique_constraints(table):
                    assert unique["name"] == f"uq_{table}_" + "_".join(unique["column_names"])
    finally:
        engine.dispose()


def test_downgrade_to_base_leaves_no_tables(catalog_url: str) -> None:
    migrate.upgrade(catalog_url)
    migrate.downgrade(catalog_url, "base")

    assert migrate.current_revision(catalog_url) is None
    engine = make_engine(catalog_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            assert set(inspector.get_table_names()) <= {VERSION_TABLE}
            if connection.dialect.name == "postgresql":
                assert inspector.get_sequence_names() == []
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_survives_a_round_trip(catalog_url: str) -> None:
    migrate.upgrade(catalog_url)
    first = _snapshot(catalog_url)
    migrate.upgrade(catalog_url)
    assert _snapshot(catalog_url) == first

    migrate.downgrade(catalog_url, "base")
    migrate.upgrade(catalog_url)
    assert _snapshot(catalog_url) == first
    assert migrate.current_revision(catalog_url) == migrate.head_revision()


def test_ensure_schema_upgrades_an_empty_database_once(catalog_url: str) -> None:
    assert migrate.current_revision(catalog_url) is None
    assert not migrate.is_up_to_date(catalog_url)

    migrate.ensure_schema(catalog_url)
    assert migrate.is_up_to_date(catalog_url)
    migrate.ensure_schema(catalog_url)
    assert migrate.current_revision(catalog_url) == migrate.head_revision()


def test_ensure_schema_from_concurrent_threads(catalog_url: str) -> None:
    """Four threads of one process starting at once: one migrates, the others find head."""
    starters = 4
    barrier = threading.Barrier(starters)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait()
            migrate.ensure_schema(catalog_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert migrate.current_revision(catalog_url) == migrate.head_revision()


_START_AT_AND_ENSURE = """
import sys, time
from archive.catalog.migrate import ensure_schema
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
ensure_schema(sys.argv[1])
"""


@pytest.mark.slow
def test_ensure_schema_from_concurrent_processes(catalog_url: str) -> None:
    """Four processes (say web workers) starting at once: the database lock serialises them."""
    start_at = str(time.time() + 2)  # after every interpreter has imported Alembic
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _START_AT_AND_ENSURE, catalog_url, start_at],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    failures = []
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        if process.returncode != 0:
            failures.append(stderr)

    assert failures == []
    assert migrate.current_revision(catalog_url) == migrate.head_revision()


def test_a_database_from_a_newer_release_is_refused(catalog_url: str) -> None:
    migrate.upgrade(catalog_url)
    engine = make_engine(catalog_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()

    with pytest.raises(ConfigError, match="'9999'"):
        migrate.ensure_schema(catalog_url)


def test_upgrade_on_a_passed_connection_leaves_the_transaction_to_the_caller(
    catalog_url: str,
) -> None:
    engine = make_engine(catalog_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            command.upgrade(migrate.alembic_config(catalog_url, connection=connection), "head")
            assert "replica" in sa.inspect(connection).get_table_names()
            transaction.rollback()
            assert sa.inspect(connection).get_table_names() == []
    finally:
        engine.dispose()


def _sqlite_catalog(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/catalog.db"
    migrate.upgrade(url)
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO collection (name, title, policy, created_at)"
                    " VALUES ('c', '', '{}', '2024-01-01 00:00:00')"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO dataset (pid, collection_id, name, title, metadata, state,"
                    " created_at) VALUES ('p', 1, 'd', '', '{}', 'active', '2024-01-01 00:00:00')"
                )
            )
    finally:
        engine.dispose()
    return url


def test_sqlite_batch_mode_can_rebuild_a_referenced_table(tmp_path: Path) -> None:
    """Rebuilding ``collection`` drops it while ``dataset`` rows point at it: the SQLite
    manual's procedure (foreign keys off, then ``foreign_key_check``) makes that work."""
    url = _sqlite_catalog(tmp_path)
    with migrate.migration_connection(url) as connection:
        operations = Operations(MigrationContext.configure(connection))
        with operations.batch_alter_table("collection", recreate="always") as batch:
            batch.alter_column("title", existing_type=sa.String(500), type_=sa.String(600))

    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM dataset")).scalar() == 1
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_sqlite_migration_that_breaks_a_foreign_key_is_rolled_back(tmp_path: Path) -> None:
    url = _sqlite_catalog(tmp_path)

    def orphan_the_dataset() -> None:
        with migrate.migration_connection(url) as connection:
            connection.execute(sa.text("DELETE FROM collection"))

    with pytest.raises(ConfigError, match="broke 1 foreign key"):
        orphan_the_dataset()
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM collection")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["sqlite:///catalog.db", "postgresql://db.example/catalog"])
def test_offline_mode_prints_the_sql(url: str) -> None:
    """``alembic ... upgrade head --sql`` lets a DBA review and run the DDL by hand."""
    config = migrate.alembic_config(url)
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    assert "CREATE TABLE replica" in sql
    assert "replica_blob_xor_pack" in sql


def test_revisions_do_not_import_project_code() -> None:
    """A revision is a frozen snapshot: importing the models would change it with them."""
    revisions = sorted(REVISIONS.glob("*.py"))
    assert revisions
    for revision in revisions:
        tree = ast.parse(revision.read_text(encoding="utf-8"))
        modules = {
            name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for name in (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
        }
        assert modules <= {"collections", "sqlalchemy", "alembic"}, revision.name


def test_head_is_the_newest_numbered_revision() -> None:
    newest = max(path.name.split("_")[0] for path in REVISIONS.glob("[0-9]*.py"))
    # Revision ids may carry a slug after the number ("0003_fixity"), so that branches
    # developed side by side never pick the same id.
    assert migrate.head_revision().split("_")[0] == newest


def test_head_read_off_the_files_is_alembics_head() -> None:
    assert migrate.shipped_head() == migrate.head_revision()


_ENSURE_AND_REPORT_ALEMBIC = """
import sys
from archive.catalog.migrate import ensure_schema
ensure_schema(sys.argv[1])
print("alembic imported" if "alembic" in sys.modules else "no alembic")
"""


def test_a_catalog_at_head_starts_without_importing_alembic(catalog_url: str) -> None:
    def start() -> str:
        done = subprocess.run(
            [sys.executable, "-c", _ENSURE_AND_REPORT_ALEMBIC, catalog_url],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    assert start() == "alembic imported"  # empty: migrated, with Alembic
    assert migrate.current_revision(catalog_url) == migrate.head_revision()
    assert start() == "no alembic"  # at head: recognised by one SELECT


def test_a_catalog_behind_head_is_still_upgraded(catalog_url: str) -> None:
    first = migrate.shipped_head()
    assert first is not None
    migrate.upgrade(catalog_url, "0001")
    migrate.ensure_schema(catalog_url)
    assert migrate.current_revision(catalog_url) == first
