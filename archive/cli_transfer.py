"""Commands that move datasets in and out: ``import-bag``, ``export``, ``ingest --server``.

``register(app, settings)`` adds the commands to the main Typer app; it is called
by :mod:`archive.cli`, which hands over its own ``app`` and the settings it built
from ``--config``, so this module never imports the CLI module (no cycle, and one
app however the program was started). Exit codes are those of :mod:`archive.errors`:
0 ok, 1 integrity failure or server unreachable, 2 bad input or refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from archive.refs import DatasetRef, parse_ref
from archive.safe_extract import ExtractLimits

if TYPE_CHECKING:
    from archive.config import Settings

# The services are imported by the commands that call them (archive.cli_app says why).

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:>7}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[files]} files"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


class RichTransferProgress:
    """One progress bar per phase (files, bytes, rate, ETA), on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, tuple[TaskID, list[int]]] = {}

    def phase(self, name: str, files: int, nbytes: int) -> None:
        task = self.progress.add_task(name, total=nbytes, files=f"0/{files}")
        self.tasks[name] = (task, [0, files])

    def advanced(self, name: str, files: int, nbytes: int) -> None:
        task, counts = self.tasks[name]
        counts[0] += files
        self.progress.update(task, advance=nbytes, files=f"{counts[0]}/{counts[1]}")


class _IngestAdapter:
    """The bars as an :class:`archive.ingest.IngestProgress` (bag import)."""

    def __init__(self, rich: RichTransferProgress) -> None:
        self.rich = rich

    def started(self, files: int, total_bytes: int) -> None:
        self.rich.phase("ingest", files, total_bytes)

    def advanced(self, files: int, nbytes: int) -> None:
        self.rich.advanced("ingest", files, nbytes)


def _emit(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        console.print("[yellow]warning:[/]", end=" ")
        console.print(warning, markup=False, highlight=False)


def network_ingest_command(
    path: Path,
    ref: DatasetRef,
    *,
    server: str,
    token: str | None,
    jobs: int,
    dry_run: bool,
    message: str,
    title: str | None,
    as_json: bool,
) -> None:
    """``permafrost ingest PATH --server URL``: see :mod:`archive.netingest`."""
    from archive.client import ArchiveClient  # httpx: only for commands that talk to a server
    from archive.journal import Journal, journal_path
    from archive.netingest import network_ingest

    with (
        ArchiveClient(server, token, connections=max(4, jobs * 2)) as client,
        _progress() as progress,
    ):
        journal = Journal(journal_path(client.server, path))
        try:
            report = network_ingest(
                client,
                path,
                ref,
                journal=journal,
                jobs=jobs,
                dry_run=dry_run,
                message=message,
                title=title,
                progress=RichTransferProgress(progress),
            )
        finally:
            journal.close()
    _warn(report.warnings)
    if as_json:
        _emit(report.as_dict())
        return
    hashed = f"hashed {report.hashed} file(s), the journal knew {report.files - report.hashed}"
    if dry_run:
        out.print(
            f"dry run: would upload {report.missing_files} file(s), "
            f"{_size(report.missing_bytes)}, of {report.files} ({_size(report.bytes)}); "
            f"{report.skipped} already on {report.server}; {hashed}"
        )
        return
    verb = "committed" if report.created else "unchanged, still"
    out.print(
        f"{report.dataset}@v{report.version} {verb} on {report.server}: {report.files} files, "
        f"{_size(report.bytes)}; uploaded {report.uploaded_files} "
        f"({_size(report.uploaded_bytes)}), {report.skipped} already there; {hashed}; "
        f"{report.retries} retries; {report.seconds:.1f} s"
    )


def register(app: typer.Typer, settings: Callable[[], Settings]) -> None:
    """Add ``import-bag`` and ``export`` to ``app``; ``settings()`` gives the configuration."""

    @app.command("import-bag")
    def import_bag_command(
        bag: Annotated[Path, typer.Argument(help="A bag: folder, .zip, .tar, .tar.gz.")],
        collection: Annotated[str, typer.Option("--collection", "-C", help="Collection name.")],
        dataset: Annotated[
            str | None,
            typer.Option("--dataset", "-D", help="Dataset name (default: from the bag's name)."),
        ] = None,
        message: Annotated[str, typer.Option("--message", "-m", help="Version message.")] = "",
        max_bytes: Annotated[
            int, typer.Option(help="Refuse a zip/tar that expands to more bytes.")
        ] = ExtractLimits.max_bytes,
        max_files: Annotated[
            int, typer.Option(help="Refuse a zip/tar with more members.")
        ] = ExtractLimits.max_files,
        as_json: JsonOpt = False,
    ) -> None:
        """Validate a BagIt bag (RFC 8493) strictly and ingest its payload as a new version."""
        from archive.bag_import import import_bag  # bagit: only for bag commands
        from archive.node import ArchiveNode

        node = ArchiveNode.open(settings())
        try:
            with _progress() as progress:
                report = import_bag(
                    node,
                    bag,
                    collection,
                    dataset,
                    limits=ExtractLimits(max_bytes, max_files),
                    message=message,
                    progress=_IngestAdapter(RichTransferProgress(progress)),
                )
        finally:
            node.close()
        _warn(report.warnings)
        if as_json:
            _emit(report.as_dict())
            return
        verb = "committed" if report.created else "unchanged, still"
        out.print(
            f"{report.dataset}@v{report.version} {verb}: BagIt {report.bag_version} bag "
            f"{report.bag} valid ({', '.join(report.algorithms)}), {report.files} files, "
            f"{_size(report.bytes)}; {report.sha256_checked} SHA-256 cross-checked; "
            f"{report.seconds:.1f} s"
        )

    @app.command("export")
    def export_command(
        ref: Annotated[str, typer.Argument(help="COLLECTION/DATASET[@vN]")],
        bag: Annotated[Path | None, typer.Option("--bag", help="Where to write the bag.")] = None,
        premis: Annotated[
            Path | None,
            typer.Option("--premis", help="Write the dataset's PREMIS 3 XML here."),
        ] = None,
        as_zip: Annotated[bool, typer.Option("--zip", help="Write one zip file.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Export a version as a BagIt 1.0 bag (RFC 8493) with SHA-256 and SHA-512 manifests,
        and/or the dataset's preservation metadata as a PREMIS 3 XML document."""
        from archive.bag_export import export_bag
        from archive.node import ArchiveNode
        from archive.premis import write_premis

        target = parse_ref(ref)
        if bag is None and premis is None:
            raise typer.BadParameter("give --bag, --premis, or both")
        node = ArchiveNode.open(settings())
        try:
            if premis is not None:
                with node.session() as session:
                    count = write_premis(target, premis, session=session)
                if bag is None:
                    if as_json:
                        _emit({"premis": str(premis), "events": count})
                    else:
                        out.print(f"{target} PREMIS 3 metadata written to {premis}: {count} events")
                    return
            assert bag is not None
            with _progress() as progress:
                task = progress.add_task("export", total=None, files="")
                report = export_bag(
                    node,
                    target,
                    bag,
                    as_zip=as_zip,
                    on_file=lambda n: progress.update(task, advance=n),
                )
        finally:
            node.close()
        if as_json:
            _emit(report.as_dict())
            return
        out.print(
            f"{report.dataset}@v{report.version} exported to {report.path}"
            f"{' (zip)' if report.zip else ''}: BagIt 1.0, {report.files} files, "
            f"{_size(report.bytes)}, every file verified; {report.seconds:.1f} s"
        )
