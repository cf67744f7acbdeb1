"""One timed run of each tool over a data set, in a fresh output folder.

Setup that is not the work being compared (``permafrost init``, ``restic init``,
copying the tree for bagit) happens before the clock starts; every run begins
after a ``sync`` so dirty pages left by the previous tool do not bill this one.
Peak memory comes from ``wait4``'s rusage of the measured child alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.datagen import DataSet

VENV_BIN = Path(sys.executable).parent
PERMAFROST = VENV_BIN / "permafrost"
BAGIT = VENV_BIN / "bagit.py"
GNU_TIME = shutil.which("time", path="/usr/bin:/bin") or ""


@dataclass
class Run:
    tool: str
    dataset: str
    seconds: float
    max_rss_kib: int
    stored_bytes: int | None
    cpu_seconds: float | None = None
    """User + system CPU time of the tool (its threads and children): far less
    sensitive to a noisy neighbour than wall time."""
    detail: dict[str, Any] = field(default_factory=dict)


class ToolFailed(RuntimeError):
    def __init__(self, tool: str, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{tool} failed (exit {returncode}): {' '.join(argv)}\n{stderr[-2000:]}")
        self.tool = tool
        self.returncode = returncode


def _timed(
    tool: str, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, int, str, float | None]:
    """Run ``argv``; return (wall seconds, peak RSS in KiB, stdout, CPU seconds).

    Peak RSS is read by GNU ``time`` (``%M``): a child spawned straight from this
    process inherits our own high-water mark at ``exec`` (Linux keeps the larger of
    the old and new memory maps' peaks), so ``wait4`` would report at least this
    benchmark's size. GNU time's own small fork is the parent that is inherited.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as peak,
    ):
        wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", peak.name, *argv] if GNU_TIME else list(argv)
        started = time.perf_counter()
        proc = subprocess.Popen(
            wrapped, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        fields = peak.read().split()
    if proc.returncode:
        raise ToolFailed(tool, argv, proc.returncode, stderr)
    if GNU_TIME and len(fields) >= 3:
        return seconds, int(fields[-3]), stdout, float(fields[-2]) + float(fields[-1])
    return seconds, usage.ru_maxrss, stdout, usage.ru_utime + usage.ru_stime


def _untimed(
    argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> None:
    proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, check=False)
    if proc.returncode:
        raise ToolFailed(argv[0], argv, proc.returncode, proc.stderr.decode(errors="replace"))


def tree_bytes(root: Path, skip: Callable[[str], bool] = lambda _: False) -> int:
    total = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not skip(d)]
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def settle() -> None:
    """Flush dirty pages from earlier runs before a clock starts (untimed)."""
    os.sync()


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _clean_env(**extra: str) -> dict[str, str]:
    """Our environment without a Permafrost config file or a bytecode-cache ban.

    ``PYTHONDONTWRITEBYTECODE`` (set in some sandboxes) would make every run compile
    the archive's modules again; an installed Permafrost has its bytecode cached.
    """
    drop = {"PERMAFROST_CONFIG", "PYTHONDONTWRITEBYTECODE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def run_permafrost(
    data: DataSet, out: Path, overrides: dict[str, str], code: Path | None = None
) -> Run:
    """``permafrost ingest`` into a fresh embedded archive (SQLite + local hot tier).

    ``permafrost init`` creates the catalog first, untimed. The local tier fsyncs
    every pack and blob (and their folders) before the version is committed. With
    ``code``, that snapshot of the source tree is imported instead of the editable
    install (``PYTHONPATH`` comes before the editable finder).
    """
    run_dir = _fresh(out)
    extra = {"PYTHONPATH": str(code)} if code else {}
    env = _clean_env(PERMAFROST_DATA_DIR=str(run_dir / "data"), **extra, **overrides)
    _untimed([str(PERMAFROST), "init"], env=env, cwd=run_dir)
    argv = [
        str(PERMAFROST),
        "ingest",
        str(data.root),
        "--collection",
        "bench",
        "--dataset",
        data.name,
        "--json",
    ]
    seconds, rss, stdout, cpu = _timed("permafrost", argv, env=env, cwd=run_dir)
    report = json.loads(stdout)
    hot = run_dir / "data" / "tiers" / "hot"
    stored: int | None = tree_bytes(hot, skip=lambda d: d == ".staging") or None
    catalog = sum(p.stat().st_size for p in (run_dir / "data").glob("catalog.db*"))
    detail = {
        "inproc_seconds": report.get("seconds"),
        "report_stored_bytes": report.get("stored_bytes"),
        "new_blobs": report.get("new_blobs"),
        "catalog_bytes": catalog,
        "overrides": overrides,
    }
    return Run("permafrost", data.name, seconds, rss, stored, cpu, detail)


def run_zstd(data: DataSet, out: Path, *, durable: bool) -> Run:
    """``zstd -3 -T0`` over every file (names are unique, so one flat output folder).

    zstd does not fsync; the ``durable`` variant adds an fsync of each output and
    of the folder, inside the clock, to show what durability costs on this disk.
    """
    target = _fresh(out)
    argv = ["zstd", "-3", "-T0", "-q", "-f", "-r", str(data.root), "--output-dir-flat", str(target)]
    started = time.perf_counter()
    seconds, rss, _, cpu = _timed("zstd", argv)
    if durable:
        for entry in os.scandir(target):
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        seconds = time.perf_counter() - started
    tool = "zstd+fsync" if durable else "zstd"
    return Run(tool, data.name, seconds, rss, tree_bytes(target), cpu)


def run_restic(data: DataSet, out: Path) -> Run:
    """``restic backup --compression auto`` into a fresh local repository (v2), no cache."""
    run_dir = _fresh(out)
    env = _clean_env(
        RESTIC_REPOSITORY=str(run_dir / "repo"),
        RESTIC_PASSWORD="bench",  # noqa: S106 - a throwaway repository
        RESTIC_CACHE_DIR=str(run_dir / "cache"),
    )
    _untimed(["restic", "init", "--repository-version", "2", "--quiet"], env=env)
    argv = [
        "restic",
        "backup",
        "--compression",
        "auto",
        "--no-cache",
        "--quiet",
        "--host",
        "bench",
        str(data.root),
    ]
    seconds, rss, _, cpu = _timed("restic", argv, env=env)
    return Run("restic", data.name, seconds, rss, tree_bytes(run_dir / "repo"), cpu)


def run_bagit(data: DataSet, out: Path) -> Run:
    """``bagit.py --sha256 --processes 2`` bagging a fresh copy in place (the copy untimed).

    ``--reflink=never`` makes the copy real bytes, written through the page cache,
    so bagit reads warm data as the other tools do.
    """
    run_dir = _fresh(out)
    bag = run_dir / "bag"
    _untimed(["cp", "-a", "--reflink=never", str(data.root), str(bag)])
    settle()
    argv = [str(BAGIT), "--sha256", "--processes", "2", "--quiet", str(bag)]
    seconds, rss, _, cpu = _timed("bagit", argv)
    return Run("bagit", data.name, seconds, rss, None, cpu)


def run_b3sum(data: DataSet, files: list[Path], out: Path) -> Run:
    """``b3sum`` of every file (multi-threaded, mmap): the hashing-only floor, for reference."""
    listing = _fresh(out) / "files.txt"
    listing.write_bytes(b"\0".join(os.fsencode(p) for p in files))
    argv = ["sh", "-c", f"xargs -0 b3sum < '{listing}' > /dev/null"]
    seconds, rss, _, cpu = _timed("b3sum", argv)
    return Run("b3sum", data.name, seconds, rss, None, cpu)
