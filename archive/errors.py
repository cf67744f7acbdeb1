"""Errors of the archive services.

Each error knows how it surfaces: ``exit_code`` for the CLI (0 ok, 1 integrity
failure, 2 bad usage or bad input) and ``http_status`` for the API::

    PermafrostError                     exit 2, HTTP 500
    ├── InvalidInput                    exit 2, HTTP 422: the caller's input is wrong
    │   ├── InvalidPath(path, reason)   a path that may not enter the archive
    │   ├── UnsupportedFile(path, reason)  symlink out of tree, FIFO, device, unreadable
    │   ├── PathCollision(paths)        two paths equal after NFC normalisation
    │   └── TooLarge(limit)             HTTP 413: a body over the configured limit
    ├── NotFound                        exit 2, HTTP 404: no such collection/dataset/version/file
    ├── Conflict                        exit 2, HTTP 409
    │   └── MissingBlobs(digests)       a version names content the archive lacks
    ├── NotAuthenticated                exit 2, HTTP 401: no valid credentials (issue 6)
    ├── Forbidden                       exit 2, HTTP 403: known, but not yours to change
    ├── ConfigError                     exit 2: the configuration is unusable
    ├── IntegrityError                  exit 1, HTTP 500: stored bytes fail their digest
    │   └── BlobDigestMismatch(b3, algorithm, expected, found)
    └── Unavailable                     exit 1, HTTP 503: no readable copy right now
        └── RestoreRequired(b3, locations)  exit 3, HTTP 409: only cold copies; restore first
"""

from __future__ import annotations

from collections.abc import Sequence


class PermafrostError(Exception):
    exit_code: int = 2
    http_status: int = 500


class InvalidInput(PermafrostError):
    http_status = 422


class InvalidPath(InvalidInput):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"invalid path {path!r}: {reason}")
        self.path = path
        self.reason = reason


class UnsupportedFile(InvalidInput):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot ingest {path!r}: {reason}")
        self.path = path
        self.reason = reason


class PathCollision(InvalidInput):
    def __init__(self, paths: Sequence[str]) -> None:
        super().__init__(
            "paths collide after Unicode NFC normalisation: " + ", ".join(map(repr, paths))
        )
        self.paths = list(paths)


class TooLarge(InvalidInput):
    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than this server accepts ({limit:,} bytes)")
        self.limit = limit


class NotFound(PermafrostError):
    http_status = 404


class Conflict(PermafrostError):
    http_status = 409


class MissingBlobs(Conflict):
    def __init__(self, digests: Sequence[str]) -> None:
        shown = ", ".join(digests[:5]) + (" ..." if len(digests) > 5 else "")
        super().__init__(f"{len(digests)} blob(s) not in the archive: {shown}")
        self.digests = list(digests)


class NotAuthenticated(PermafrostError):
    """No credentials, or wrong ones: sign in or send ``Authorization: Bearer``."""

    http_status = 401


class Forbidden(PermafrostError):
    """The caller may see the thing but not do this to it (what they may not see is a 404)."""

    http_status = 403


class ConfigError(PermafrostError):
    pass


class IntegrityError(PermafrostError):
    exit_code = 1


class BlobDigestMismatch(IntegrityError):
    def __init__(self, b3: str, algorithm: str, expected: str, found: str) -> None:
        super().__init__(f"blob {b3}: {algorithm} expected {expected}, found {found}")
        self.b3 = b3
        self.algorithm = algorithm
        self.expected = expected
        self.found = found


class Unavailable(PermafrostError):
    exit_code = 1
    http_status = 503


class InvalidTree(InvalidInput):
    """Everything wrong with a folder offered for ingest, reported at once (nothing stored)."""

    def __init__(self, problems: Sequence[InvalidInput]) -> None:
        lines = [str(p) for p in problems[:20]]
        if len(problems) > 20:
            lines.append(f"... and {len(problems) - 20} more")
        super().__init__(
            f"{len(problems)} problem(s), nothing was stored:\n  " + "\n  ".join(lines)
        )
        self.problems = list(problems)


class RestoreRequired(Unavailable):
    """Every copy that could be read is in a cold tier and must be restored first."""

    exit_code = 3
    http_status = 409

    def __init__(self, b3: str, locations: Sequence[tuple[str, str]]) -> None:
        where = ", ".join(f"{tier}:{key}" for tier, key in locations)
        super().__init__(f"blob {b3} is only in cold storage ({where}): restore it first")
        self.b3 = b3
        self.locations = list(locations)
