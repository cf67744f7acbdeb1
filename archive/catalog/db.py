"""Engines and sessions for the catalog (SQLite embedded, PostgreSQL at scale).

The caller owns the transaction: services take ``session=`` and never commit.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlmodel import Session

READ_ONLY = "read_only"
"""Execution option of connections that only read (see :func:`make_engine`)."""


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` URLs and use psycopg 3 for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine with the settings the archive relies on.

    SQLite: WAL (readers never block the writer), foreign keys on, a busy timeout so
    a second process waits instead of failing, and ``BEGIN IMMEDIATE`` so a write
    transaction takes the write lock at its start (no lock upgrade deadlocks). A
    connection with the execution option ``read_only`` (:func:`read_scope`) begins
    with a plain ``BEGIN`` instead: it reads a snapshot and never waits for writers.
    """
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 60}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            _enable_wal(cur)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: sa.Connection) -> None:
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def _enable_wal(cursor: sqlite3.Cursor, *, timeout: float = 60.0) -> None:
    """Switch the file to WAL, waiting for other connections doing the same.

    Turning a new file to WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, while another connection converts the
    same file: processes starting together on a fresh data folder would fail. The mode
    is stored in the file, so only the first start can wait here.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def read_scope(engine: sa.Engine) -> Iterator[Session]:
    """A session that only reads: on SQLite it neither takes nor waits for the write
    lock. Writing through it is a bug (SQLite may refuse the upgrade at once)."""
    with Session(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False) as session:
        yield session  # closing ends the transaction and keeps what was loaded (no expiry)


@contextmanager
def session_scope(engine: sa.Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
