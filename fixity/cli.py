"""``permafrost audit run|status`` and ``permafrost events``, attached to the main app.

``register(app, settings)`` is named by the ``permafrost.cli`` entry point group and
called by :mod:`archive.cli` when it builds the app, so the archive layer never
imports this one. Exit codes follow :mod:`archive.errors`: ``audit run`` exits 1
when it found a damaged or missing copy or a lost blob, 0 when every copy it
audited was good.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from archive.refs import parse_ref
from fixity.levels import Level

if TYPE_CHECKING:
    from archive.config import Settings
    from archive.node import ArchiveNode

# Registered at every start-up, so the services are imported by the commands that call
# them: ``permafrost --help`` and ``ingest --server`` never load the catalog (issue 7).

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _emit(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def register(app: typer.Typer, settings: Callable[[], Settings]) -> None:
    """Add ``audit run``, ``audit status`` and ``events`` to ``app``."""
    audit_app = typer.Typer(help="Fixity audits of every stored copy.", no_args_is_help=True)
    app.add_typer(audit_app, name="audit")

    @contextmanager
    def node() -> Iterator[ArchiveNode]:
        from archive.node import ArchiveNode

        opened = ArchiveNode.open(settings())
        try:
            yield opened
        finally:
            opened.close()

    @audit_app.command("run")
    def audit_run(
        tier: Annotated[
            list[str] | None, typer.Option("--tier", "-t", help="Audit this tier (repeatable).")
        ] = None,
        level: Annotated[
            Level | None, typer.Option(help="Force a level (default: each tier's policy).")
        ] = None,
        limit: Annotated[int | None, typer.Option(min=1, help="Audit at most N copies.")] = None,
        due: Annotated[
            bool, typer.Option("--due", help="Only copies whose audit is due (as a worker).")
        ] = False,
        repair: Annotated[
            bool, typer.Option("--repair/--no-repair", help="Repair what was found.")
        ] = True,
        as_json: JsonOpt = False,
    ) -> None:
        """Audit copies now (all of them, or --due), repair what fails, print one report."""
        from fixity.audit import AuditOptions, Auditor
        from fixity.repair import Repairer

        with node() as archive:
            unknown = set(tier or []) - set(archive.tiers)
            if unknown:
                raise typer.BadParameter(f"unknown tier(s): {', '.join(sorted(unknown))}")
            owner = f"{socket.gethostname()}:{os.getpid()}:audit"
            report = Auditor(archive, owner=owner).audit_pass(
                AuditOptions(tiers=tier, level=level, limit=limit, due_only=due)
            )
            if repair:
                for outcome in Repairer(archive, owner=owner).repair_pass():
                    report.repairs.append(outcome.as_dict())
                    report.lost += outcome.lost_blobs
        data = report.as_dict()
        if as_json:
            _emit(data)
        else:
            _print_report(data)
        if not report.clean:
            raise typer.Exit(1)

    @audit_app.command("status")
    def audit_status_command(as_json: JsonOpt = False) -> None:
        """Per tier: copies, verified within the interval, overdue, damaged, oldest check."""
        from fixity.status import audit_status

        with node() as archive, archive.session() as session:
            data = audit_status(archive, session=session)
        if as_json:
            _emit(data)
            return
        for name, t in data["tiers"].items():
            line = (
                f"{name:>10}: {t['copies']} copies, {t['verified_within_interval']} verified "
                f"within {t['interval_days']:g} days, {t['overdue']} overdue, "
                f"{t['damaged']} damaged, oldest check {(t['oldest_verification'] or '-')[:19]}"
            )
            if "sample_coverage" in t:
                line += f", sampled reads cover {t['sample_coverage']:.1%}"
            out.print(line, markup=False)
        m = data["manifests"]
        out.print(f" manifests: {m['count']}, {m['damaged']} damaged, {m['due_now']} due")
        if m["copies_elsewhere"]:
            out.print(
                f"            and {m['copies_elsewhere']} copies on partner tiers, "
                f"{m['copies_elsewhere_damaged']} damaged, {m['copies_elsewhere_due_now']} due"
            )
        h = data["held_for_partners"]
        if h["objects"]:
            out.print(
                f"held for partners (on {h['tier']}): {h['objects']} objects, "
                f"{h['verified_within_interval']} verified within the interval, "
                f"{h['damaged']} damaged or missing, {h['due_now']} due",
                markup=False,
            )
        out.print("every copy proven within its interval" if data["proven"] else "NOT all proven")

    @audit_app.command("report")
    def audit_report(
        day: Annotated[
            str | None, typer.Option(help="A UTC day, YYYY-MM-DD (default: today so far).")
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """One day's summary: copies checked and repairs, per tier and outcome."""
        from fixity.report import daily_summary

        when = dt.date.fromisoformat(day) if day else dt.datetime.now(dt.UTC).date()
        with node() as archive, archive.session() as session:
            data = daily_summary(session, when)
        if as_json:
            _emit(data)
            return
        out.print(f"{data['day']}: {data['lost_reports']} report(s) of blobs with no good copy")
        for name, tally in sorted(data["tiers"].items()):
            out.print(f"  {name}: " + ", ".join(f"{k} {n}" for k, n in sorted(tally.items())))

    @app.command("events")
    def events_command(
        ref: Annotated[str, typer.Argument(help="COLLECTION/DATASET")],
        as_json: JsonOpt = False,
    ) -> None:
        """The dataset's preservation history (PREMIS events), oldest first."""
        from archive.datasets import get_dataset
        from archive.events import dataset_events, event_dict

        target = parse_ref(ref)
        with node() as archive, archive.session() as session:
            dataset = get_dataset(target.collection, target.dataset, session=session)
            rows = [event_dict(e) for e in dataset_events(dataset, session=session)]
        if as_json:
            _emit(rows)
            return
        for e in rows:
            where = f" on {e['tier']}" if e["tier"] else ""
            out.print(
                f"{e['time'][:19]} {e['type']:<26} {e['outcome']:<8} "
                f"{e['object_type']} {e['object_id'][:16]}{where} ({e['agent']})",
                markup=False,
            )


def _print_report(data: dict[str, Any]) -> None:
    out.print(
        f"audited {data['checked']} copies: {data['damaged_or_missing']} damaged or missing, "
        f"{data['unreachable']} unreachable (retried later)"
    )
    for name, t in data["tiers"].items():
        levels = ", ".join(f"{n} {lvl}" for lvl, n in sorted(t["levels"].items()))
        note = f"; {t['note']}" if t.get("note") else ""
        out.print(
            f"  {name}: {t['good']} good, {t['damaged']} damaged, {t['missing']} missing, "
            f"{_size(t['bytes_read'])} read ({levels or 'none'}){escape(note)}"
        )
    for f in data["failures"]:
        out.print(
            f"[red]{f['finding'].upper()}[/] {f['object_type']} {f['object_id']} on "
            f"{f['tier']}: {escape(f['detail'])}"
        )
    for r in data["repairs"]:
        colour = {"repaired": "green", "lost": "red bold"}.get(r["result"], "yellow")
        out.print(
            f"[{colour}]{r['result']}[/] {r['object_type']} {r['object_id']} on {r['tier']}"
            + (f": {escape(r['detail'])}" if r["detail"] else "")
        )
    if data["lost"]:
        out.print(f"[red bold]{len(data['lost'])} blob(s) have no good copy left[/]")
