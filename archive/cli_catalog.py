"""``permafrost catalog rebuild`` and ``permafrost gc``: recovery and clean-up after disasters."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from archive.cli_app import JsonOpt, _emit, _node, app, console, out, state

# The services are imported by the commands that call them (archive.cli_app says why).
DEFAULT_GRACE_HOURS = 24.0
"""``archive.gc.DEFAULT_GRACE`` in hours, as a literal: the option's default is built at
start-up (tests/archive/test_cli_startup.py checks that both agree)."""

catalog_app = typer.Typer(help="Rebuild the catalog from storage.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("rebuild")
def rebuild(
    source: Annotated[str, typer.Option("--from", help="Tier whose manifests to read.")],
    into: Annotated[
        str | None,
        typer.Option(help="Database URL to rebuild into (default: the configured catalog)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recreate an empty catalog from a tier's manifests and every tier's stored bytes.

    Exits 1 when the history has a break or a blob was found on no tier.
    """
    from archive.node import ArchiveNode
    from archive.rebuild import LIST_SHOWN, iter_problems, rebuild_catalog

    settings = state.settings
    if into is not None:
        settings = settings.model_copy(update={"database_url": into})
    node = ArchiveNode.open(settings)
    try:
        report = rebuild_catalog(node, source)
    finally:
        node.close()
    if as_json:
        _emit(report.as_dict())
    else:
        out.print(
            f"rebuilt from {source}: {report.collections} collections, {report.datasets} "
            f"datasets, {report.versions} versions, {report.entries} entries, "
            f"{report.blobs} blobs, {report.packs} packs; copies "
            + ", ".join(f"{n} on {t}" for t, n in sorted(report.copies.items()))
            + f"; {report.seconds:.1f} s"
        )
        for i, line in enumerate(iter_problems(report)):
            if i == LIST_SHOWN:
                console.print("... (--json lists every problem)")
                break
            console.print(f"[red]{line}[/]" if not line.startswith("not recorded") else line)
        for note in report.notes[:LIST_SHOWN]:
            console.print(f"note: {note}", markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command("gc")
def gc(
    grace_hours: Annotated[
        float,
        typer.Option(min=0, help="Only what was last touched longer ago than this."),
    ] = DEFAULT_GRACE_HOURS,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, delete nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove what crashes left in the tiers: abandoned staging, unrecorded packs and blobs."""
    from archive.gc import collect_garbage
    from archive.rebuild import LIST_SHOWN

    with _node() as node:
        report = collect_garbage(node, grace=dt.timedelta(hours=grace_hours), dry_run=dry_run)
    if as_json:
        _emit(report.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    staged = sum(report.staging.values())
    out.print(
        f"{verb} {len(report.removed)} unrecorded objects ({report.removed_bytes:,} bytes)"
        + ("" if dry_run else f" and {staged} abandoned staged writes")
        + f", older than {grace_hours:g} h"
    )
    for line in report.removed[:LIST_SHOWN]:
        out.print(f"  {line}", markup=False, highlight=False)
    if report.kept_unrecorded:
        console.print(
            f"kept {len(report.kept_unrecorded)} blobs with no copy row that the catalog "
            "still names (a rerun of the ingest records them)"
        )
