"""A cold tier in a local folder: LocalTier's layout, with Glacier's read contract.

It emulates S3 Glacier (``RestoreObject``, the ``x-amz-restore`` header) on a disk,
so the archive's restore path runs for real on a laptop and in tests: writes,
``stat``, ``exists``, ``list`` and ``delete`` work at once; ``open`` refuses an
object until a restore was asked for and ``restore_delay_seconds`` have passed, and
again once the restore expired ``days`` later.

Restore state lives beside the objects, one small JSON file per restored object at
``<path>/.restore/<key>`` (``.restore`` is a reserved first key segment, so no key
can collide with it): when it was requested, when it is ready, when it expires,
and the size and modification time of the object it belongs to, so a state left
behind by a deleted object never applies to a new object under the same key. Files
are written to ``.staging/`` and moved into place atomically, hence the state
survives restarts and is shared by every process using the folder. Of two
processes asking for the first restore of an object at once, one creates the
state (``os.link`` does not replace) and the other adopts it.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import stat as stat_mode
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tiers.base import (
    RESTORE_SEGMENT,
    ObjectInfo,
    RestoreState,
    RetrievalOption,
    TierCapabilities,
    check_key,
)
from tiers.errors import NeedsRestore, ObjectNotFound, TierConfigError
from tiers.local import LocalTier, _fsync_folder

__all__ = ["LocalColdTier"]

logger = logging.getLogger("tiers.local_cold")

#: The one retrieval speed of a local cold folder.
SPEED = "standard"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LocalColdTier(LocalTier):
    """Objects as files under ``path`` that must be restored before they are read.

    Args:
        name: the tier's name, carried by every error it raises.
        path: the root folder; created if missing.
        restore_delay_seconds: how long a restore takes (0: ready at once).
        restore_days: how long a restore lasts when the caller has no reason to choose.
        fsync: as for :class:`~tiers.local.LocalTier`; also covers the restore state.
        price_per_gib: what :meth:`retrieval_options` reports a restore costs.
        clock: the current UTC time; tests pass a controllable one.

    Raises:
        TierConfigError: the folder cannot be used, or a negative delay or price,
            or ``restore_days`` below 1.
    """

    capabilities = TierCapabilities(atomic_promote=True, native_digests=False, needs_restore=True)

    def __init__(
        self,
        name: str,
        path: str | os.PathLike[str],
        restore_delay_seconds: float = 0.0,
        restore_days: int = 7,
        fsync: bool = True,
        price_per_gib: float = 0.0,
        *,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        if restore_delay_seconds < 0 or price_per_gib < 0 or restore_days < 1:
            raise TierConfigError(
                f"tier {name!r}: restore_delay_seconds and price_per_gib must be at least 0 "
                "and restore_days at least 1",
                tier=name,
            )
        super().__init__(name, path, fsync=fsync)
        self.restore_delay = dt.timedelta(seconds=restore_delay_seconds)
        self.restore_days = restore_days
        self.price_per_gib = price_per_gib
        self.restore_root = self.root / RESTORE_SEGMENT
        self._clock = clock

    def __repr__(self) -> str:
        return (
            f"LocalColdTier({self.name!r}, {str(self.root)!r}, "
            f"restore_delay_seconds={self.restore_delay.total_seconds()})"
        )

    def open(self, key: str, *, offset: int = 0, length: int | None = None) -> io.BufferedReader:
        """Open ``key`` as :meth:`LocalTier.open` does, once it is restored.

        Raises:
            ObjectNotFound: no such key.
            NeedsRestore: not restored, still being restored, or the restore expired.
        """
        state = self.restore_status(key)
        if not state.readable:
            raise _needs_restore(self.name, key, state)
        return super().open(key, offset=offset, length=length)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """As :meth:`LocalTier.list`, without the restore state files."""
        for info in super().list(prefix):
            if info.key.split("/", 1)[0] != RESTORE_SEGMENT:
                yield info

    def delete(self, key: str) -> None:
        """Remove ``key`` and its restore state (a new object there starts unrestored)."""
        super().delete(key)
        self._object_changed(key)

    def _object_changed(self, key: str) -> None:
        """A replaced or deleted object's restore state goes with it."""
        with self._os_errors(key), contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self._state_path(key).unlink()

    def restore(self, key: str, *, days: int, speed: str = SPEED) -> RestoreState:
        """Ask for ``key`` to become readable ``restore_delay_seconds`` from now, for ``days``.

        Mirrors S3 ``RestoreObject``: while a restore is in progress a new request
        changes nothing (S3 answers ``RestoreAlreadyInProgress``); once ready, a new
        request extends the expiry to ``days`` from now if that is later; after
        expiry the object needs a new restore, which starts over.

        Raises:
            ObjectNotFound: no such key.
            ValueError: ``speed`` is not ``"standard"`` or ``days`` is below 1.
        """
        if speed != SPEED:
            raise ValueError(f"tier {self.name!r} offers only the speed {SPEED!r}, not {speed!r}")
        if days < 1:
            raise ValueError(f"a restore lasts at least 1 day, not {days}")
        object_stat = self._object_stat(key)
        now = self._clock()
        recorded, state_file_exists = self._read_state(key, object_stat)
        state = _state_at(recorded, now)
        if state.status == "in-progress":
            return state
        wanted_expiry = now + dt.timedelta(days=days)
        if state.status == "ready" and recorded is not None:
            assert state.expires_at is not None
            if wanted_expiry > state.expires_at:
                self._write_state(key, {**recorded, "expires_at": wanted_expiry.isoformat()})
            return dataclasses.replace(state, expires_at=max(wanted_expiry, state.expires_at))
        ready_at = now + self.restore_delay
        record = {
            "key": key,
            "requested_at": now.isoformat(),
            "ready_at": ready_at.isoformat(),
            "expires_at": (ready_at + dt.timedelta(days=days)).isoformat(),
            "days": days,
            "speed": speed,
            "object_size": object_stat.st_size,
            "object_mtime_ns": object_stat.st_mtime_ns,
        }
        if not self._write_state(key, record, replace=state_file_exists):
            return self.restore_status(key)  # another process made the first request
        return _state_at(record, now)

    def restore_status(self, key: str) -> RestoreState:
        """Where ``key`` stands now, from its restore state file.

        Raises:
            ObjectNotFound: no such key.
        """
        recorded, _ = self._read_state(key, self._object_stat(key))
        return _state_at(recorded, self._clock())

    def retrieval_options(self) -> builtins.list[RetrievalOption]:
        """The one speed of this tier: the configured delay and price."""
        return [RetrievalOption(SPEED, self.restore_delay, self.price_per_gib)]

    def _object_stat(self, key: str) -> os.stat_result:
        check_key(key)
        with self._os_errors(key):
            st = os.stat(self._path(key))
        if not stat_mode.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{key}: not an object", tier=self.name, key=key)
        return st

    def _state_path(self, key: str) -> Path:
        return self.restore_root.joinpath(*check_key(key).split("/"))

    def _read_state(
        self, key: str, object_stat: os.stat_result
    ) -> tuple[dict[str, Any] | None, bool]:
        """The recorded state of the object as it is now, or None (never restored, a
        damaged file, or a state left by an earlier object under this key); and
        whether a state file exists at all."""
        path = self._state_path(key)
        with self._os_errors(key):
            try:
                text = path.read_text(encoding="utf-8")
            except (FileNotFoundError, NotADirectoryError):
                return None, False
        try:
            record: dict[str, Any] = json.loads(text)
            _state_at(record, self._clock())  # parses the times
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("%s: ignoring unreadable restore state %s: %s", self, path, exc)
            return None, True
        identity = (record.get("object_size"), record.get("object_mtime_ns"))
        if identity != (object_stat.st_size, object_stat.st_mtime_ns):
            return None, True
        return record, True

    def _write_state(self, key: str, record: dict[str, Any], *, replace: bool = True) -> bool:
        """Write ``record`` as the state of ``key`` atomically (staging file, then
        ``os.replace``, or ``os.link`` when ``replace`` is false so an existing state
        wins). Return False when it lost to an existing state."""
        final = self._state_path(key)
        staged = self.staging / f"restore-{uuid.uuid4().hex}"
        with self._os_errors(key):
            try:
                with open(staged, "x", encoding="utf-8") as file:
                    json.dump(record, file, sort_keys=True)
                    file.flush()
                    if self.fsync:
                        os.fsync(file.fileno())
                created = self._make_folders(final.parent, key)
                if replace:
                    os.replace(staged, final)
                else:
                    try:
                        os.link(staged, final)
                    except FileExistsError:
                        return False
                if self.fsync:
                    for folder in {final.parent, *(path.parent for path in created)}:
                        _fsync_folder(folder)
            finally:
                staged.unlink(missing_ok=True)
        return True


def _state_at(record: dict[str, Any] | None, now: dt.datetime) -> RestoreState:
    """The state a record describes at ``now`` (see :class:`~tiers.base.RestoreState`)."""
    if record is None:
        return RestoreState("not-started")
    ready_at = dt.datetime.fromisoformat(record["ready_at"])
    expires_at = dt.datetime.fromisoformat(record["expires_at"])
    if now < ready_at:
        return RestoreState("in-progress", ready_at=ready_at)
    if now < expires_at:
        return RestoreState("ready", ready_at=ready_at, expires_at=expires_at)
    return RestoreState("not-started")


def _needs_restore(tier: str, key: str, state: RestoreState) -> NeedsRestore:
    if state.status == "in-progress" and state.ready_at is not None:
        when = state.ready_at.strftime("%Y-%m-%d %H:%M:%S %Z")
        message = f"{key}: restore in progress in cold tier {tier!r}, ready at about {when}"
    else:
        message = (
            f"{key}: stored in cold tier {tier!r} and not restored (or the restore "
            "expired); request a restore and read it once ready"
        )
    return NeedsRestore(message, tier=tier, key=key, status=state.status, ready_at=state.ready_at)
