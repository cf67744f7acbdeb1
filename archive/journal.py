"""The resume journal of a network ingest: what this machine knows it sent where.

An SQLite file in the user's cache folder
(``platformdirs.user_cache_dir("permafrost")/journal``), one per server URL and
absolute folder. It holds, per file, size, mtime, inode, BLAKE3, SHA-256 and when
its content was uploaded, and is committed as work progresses (at least every
:data:`JOURNAL_COMMIT_SECONDS`), so a run stopped by a network failure or a sleeping
laptop continues where it stopped. The server stays the authority on what it holds:
the journal only spares reading and hashing unchanged files again.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from archive.scan import SourceFile

JOURNAL_COMMIT_SECONDS = 2.0


@dataclass(frozen=True)
class Digests:
    b3: str
    sha256: str


def journal_path(server: str, root: Path, folder: Path | None = None) -> Path:
    """The journal file for this server and folder (a hash of both names it)."""
    base = folder or Path(platformdirs.user_cache_dir("permafrost")) / "journal"
    key = hashlib.sha256(f"{server.rstrip('/')}\n{root.resolve()}".encode()).hexdigest()[:32]
    return base / f"{key}.sqlite"


class Journal:
    """What this machine knows about a folder it sent to a server, by entry path."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60)  # another run on the same folder waits
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL,"
            " mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, b3 TEXT NOT NULL,"
            " sha256 TEXT NOT NULL, uploaded_at REAL)"
        )
        # uploaded() finds files by content: without it, each call scans the table.
        self.db.execute("CREATE INDEX IF NOT EXISTS files_b3 ON files (b3)")
        self.db.commit()
        self._committed = time.monotonic()

    def known(self, f: SourceFile) -> Digests | None:
        """The digests of ``f`` if it is unchanged since they were computed."""
        row = self.db.execute(
            "SELECT b3, sha256 FROM files WHERE path = ? AND size = ? AND mtime_ns = ?"
            " AND inode = ?",
            (f.path, f.size, f.mtime_ns, f.inode),
        ).fetchone()
        return Digests(row[0], row[1]) if row else None

    def hashed(self, f: SourceFile, digests: Digests) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (f.path, f.size, f.mtime_ns, f.inode, digests.b3, digests.sha256),
        )
        self._maybe_commit()

    def uploaded(self, *b3s: str) -> None:
        now = time.time()
        self.db.executemany(
            "UPDATE files SET uploaded_at = ? WHERE b3 = ?", [(now, b3) for b3 in b3s]
        )
        self._maybe_commit()

    def forget(self, path: str) -> None:
        self.db.execute("DELETE FROM files WHERE path = ?", (path,))
        self.db.commit()

    def prune(self, paths: set[str]) -> None:
        """Drop files no longer in the folder."""
        gone = [(p,) for (p,) in self.db.execute("SELECT path FROM files") if p not in paths]
        self.db.executemany("DELETE FROM files WHERE path = ?", gone)

    def _maybe_commit(self) -> None:
        if time.monotonic() - self._committed > JOURNAL_COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        self.db.commit()
        self._committed = time.monotonic()

    def close(self) -> None:
        self.db.commit()
        self.db.close()
