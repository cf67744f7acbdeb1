"""Bulk inserts that tolerate rows another process inserted first.

Blob rows are shared by every dataset: two ingests of the same content may race
to record it. ``INSERT ... ON CONFLICT DO NOTHING`` makes recording idempotent on
both SQLite and PostgreSQL.

Rows go to the driver's ``executemany`` as tuples, each value bound by its column
type's own processor (the one SQLAlchemy applies), so they are stored exactly as a
Core insert stores them. A Core ``executemany`` also compiles the parameters of
every row, which cost 10 us a row: half of recording a small file (five rows),
and all of it holding the GIL that the ingest's other threads need.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel


def dialect_insert(session: Session, model: type[SQLModel]) -> Any:
    """The INSERT of the session's database, which knows ``ON CONFLICT``."""
    table: sa.Table = model.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    # Imported here: the PostgreSQL dialect pulls in asyncio (0.1 s) for SQLite users too.
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    raise NotImplementedError(dialect)  # pragma: no cover - only the two supported databases


class _Binder:
    """A column's bind processor that remembers its last value: the rows of one batch
    often share one (a single ``now``), and processors are pure."""

    __slots__ = ("_last", "_last_bound", "_process")

    def __init__(self, process: Callable[[Any], Any]) -> None:
        self._process = process
        self._last: Any = _Binder
        self._last_bound: Any = None

    def __call__(self, value: Any) -> Any:
        if value is not self._last:
            self._last, self._last_bound = value, self._process(value)
        return self._last_bound


def insert_ignore(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys), skipping those whose key is taken."""
    _insert_many(session, model, rows, ignore=True)


def insert_all(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys); a taken key is an ``IntegrityError``."""
    _insert_many(session, model, rows, ignore=False)


def _insert_many(
    session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]], *, ignore: bool
) -> None:
    if not rows:
        return
    table: sa.Table = model.__table__  # type: ignore[attr-defined]
    conn = session.connection()
    dialect = conn.dialect
    names = list(rows[0])
    constants: dict[str, Any] = {}
    for column in table.columns:
        if column.name in names or column.default is None:
            continue
        if not isinstance(column.default, sa.ColumnDefault) or not column.default.is_scalar:
            # A default computed per row (a time, a new dict): SQLAlchemy computes it.
            insert = dialect_insert(session, model)
            session.execute(insert.on_conflict_do_nothing() if ignore else insert, list(rows))
            return
        constants[column.name] = column.default.arg
    columns = [table.c[name] for name in [*names, *constants]]
    binders = [column.type.dialect_impl(dialect).bind_processor(dialect) for column in columns]
    fixed = [
        value if binder is None else binder(value)
        for value, binder in zip(constants.values(), binders[len(names) :], strict=True)
    ]
    # Column by column: a comprehension per column costs a third of a loop per row
    # that indexes each row's values and applies each column's processor.
    values: list[Any] = [[row[name] for row in rows] for name in names]
    for i, binder in enumerate(binders[: len(names)]):
        if binder is not None:
            values[i] = list(map(_Binder(binder), values[i]))
    values.extend(itertools.repeat(value, len(rows)) for value in fixed)
    params = list(zip(*values, strict=True))
    # Names are the model's, quoted by the dialect; every value is a bound parameter.
    quote = dialect.identifier_preparer
    into = f"{quote.format_table(table)} ({', '.join(quote.format_column(c) for c in columns)})"
    marks = ", ".join(["?" if dialect.paramstyle == "qmark" else "%s"] * len(columns))
    conflict = " ON CONFLICT DO NOTHING" if ignore else ""
    conn.exec_driver_sql(f"INSERT INTO {into} VALUES ({marks}){conflict}", params)  # noqa: S608


def upsert(
    session: Session,
    model: type[SQLModel],
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Sequence[str],
    update: Sequence[str],
) -> None:
    """Insert rows; where one conflicts on ``conflict``, overwrite the ``update`` columns."""
    if not rows:
        return
    stmt = dialect_insert(session, model)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(conflict), set_={c: stmt.excluded[c] for c in update}
    )
    session.execute(stmt, list(rows))
