"""CLI commands for copies: workers, status, policies (issue 3), registered on the main app."""

from __future__ import annotations

import datetime as dt
import json
import signal
from typing import Annotated, Any

import typer

from archive.cli_app import _emit, _node, app, console, out
from archive.refs import parse_ref

# The services are imported by the commands that call them (archive.cli_app says why).

policy_app = typer.Typer(help="Replication policies of collections.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="One pass of each loop, then exit.")] = False,
    loops: Annotated[
        str | None,
        typer.Option(help="Comma-separated loops to run (default: all, built-in and plugged in)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Claim and do the archive's work (copies, restores) until SIGTERM, or once."""
    from archive.worker import Worker

    with _node() as node:
        chosen = [x.strip() for x in loops.split(",") if x.strip()] if loops else None
        w = Worker(node, loops=chosen)
        signal.signal(signal.SIGTERM, lambda *_: w.stop.set())
        signal.signal(signal.SIGINT, lambda *_: w.stop.set())
        if not once:
            console.print(f"worker {w.owner} running {', '.join(w.loops)} (SIGTERM to stop)")
        totals = w.run(once=once)
    if as_json:
        _emit(totals)
    else:
        out.print(", ".join(f"{k}: {v}" for k, v in totals.items()))


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Copies by tier and state, the work queue, which datasets are preserved, and
    which blobs are lost (exit 1 when any is: no good copy of it is left)."""
    from archive.status import archive_status

    with _node() as node, node.session() as session:
        data = archive_status(node, session=session)
    lost = data["integrity"]["lost"]
    if as_json:
        _emit(data)
        if lost:
            raise typer.Exit(1)
        return
    for tier, states in data["replicas"].items():
        out.print(f"{tier:>12}: " + ", ".join(f"{s} {n}" for s, n in sorted(states.items())))
    for tier, since in data["unreachable"].items():
        out.print(
            f"[yellow]{tier:>12}: unreachable since {since[:19]}[/] (its copies keep their state)"
        )
    q = data["queue"]
    out.print(
        f"queue: {q['depth']} copies to make"
        + (f", oldest since {q['oldest_pending'][:19]}" if q["oldest_pending"] else "")
    )
    d = data["datasets"]
    out.print(f"datasets preserved: {d['preserved']}/{d['total']}")
    for item in d["items"]:
        out.print(f"  {item['dataset']}@v{item['version']}: {item['summary']}", markup=False)
    integrity = data["integrity"]
    if integrity["degraded"]:
        out.print(
            f"[yellow]{integrity['degraded']} blob(s) have a damaged copy (repair pending)[/]"
        )
    if integrity["manifests_damaged"]:
        out.print(f"[yellow]{integrity['manifests_damaged']} manifest(s) damaged[/]")
    if lost:
        out.print(f"[red bold]LOST: {len(lost)} blob(s) have no good copy[/]")
        for item in lost:
            out.print(f"  blob {item['b3']}: in {', '.join(item['versions'])}", markup=False)
        out.print("versions at risk: " + ", ".join(integrity["versions_at_risk"]), markup=False)
        raise typer.Exit(1)


@policy_app.command("show")
def policy_show(collection: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The collection's policy and the tiers it names."""
    from archive.datasets import get_collection
    from archive.policy import parse_policy
    from archive.replication import targets_of

    with _node() as node, node.session() as session:
        coll = get_collection(collection, session=session)
        policy = parse_policy(coll.policy, node.settings.policy)
        data: dict[str, Any] = {
            "collection": collection,
            "policy": policy.model_dump(),
            "own": bool(coll.policy),
            "targets": targets_of(node, coll),
        }
    if as_json:
        _emit(data)
    else:
        where = "" if data["own"] else " (the default)"
        out.print(f"{collection}: {policy.describe()}{where} -> {', '.join(data['targets'])}")


@policy_app.command("set")
def policy_set(
    collection: str,
    hot: Annotated[int, typer.Option(min=0)] = 1,
    cold: Annotated[int, typer.Option(min=0)] = 1,
    partner: Annotated[int, typer.Option(min=0)] = 0,
    tier: Annotated[list[str] | None, typer.Option(help="A tier that must hold a copy.")] = None,
    distinct_regions: Annotated[bool, typer.Option("--distinct-regions")] = False,
) -> None:
    """Set the collection's policy; missing copies are planned at once.

    Copies that the new policy no longer asks for are kept and listed: nothing is
    ever dropped silently.
    """
    from archive.datasets import get_collection
    from archive.policy import ReplicationPolicy
    from archive.replication import plan, targets_of

    policy = ReplicationPolicy(
        copies={"hot": hot, "cold": cold, "partner": partner},
        tiers=list(tier or []),
        distinct_regions=distinct_regions,
    )
    with _node() as node, node.session() as session:
        coll = get_collection(collection, session=session)
        before = set(targets_of(node, coll))
        coll.policy = json.loads(policy.model_dump_json())
        after = set(targets_of(node, coll))  # raises ConfigError if unsatisfiable
        session.add(coll)
        session.flush()
        added = plan(node, session=session, collection=collection)
    out.print(
        f"{collection}: {policy.describe()} -> {', '.join(sorted(after))}; {added} copies planned"
    )
    for dropped in sorted(before - after):
        out.print(
            f"[yellow]kept:[/] copies on {dropped} are no longer required by this policy; "
            "they stay until removed explicitly"
        )


def eta(ready_at: dt.datetime | None) -> str:
    from archive.catalog.models import utcnow

    if ready_at is None:
        return "when the tier completes it"
    seconds = max(0.0, (ready_at - utcnow()).total_seconds())
    if seconds < 90:
        return f"in about {seconds:.0f} seconds"
    if seconds < 3 * 3600:
        return f"in about {seconds / 60:.0f} minutes"
    return f"in about {seconds / 3600:.0f} hours"


@app.command()
def restore(
    ref: Annotated[str, typer.Argument(help="COLLECTION/DATASET[@vN]")],
    path: Annotated[str | None, typer.Argument(help="A file or folder (default: all).")] = None,
    speed: Annotated[str, typer.Option(help="Retrieval speed the tier offers.")] = "standard",
    days: Annotated[int | None, typer.Option(min=1, help="Keep restored this many days.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Restore without asking.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show what restoring from cold storage costs and takes, then ask the tier for it."""
    from archive.datasets import resolve_version
    from archive.restore import latest_ready_at, plan_restore, request_restore

    r = parse_ref(ref)
    with _node() as node, node.session() as session:
        _, version = resolve_version(r, session=session)
        plan_ = plan_restore(node, version, path, session=session)
        info = plan_.as_dict(node)
        if not as_json:
            out.print(
                f"{info['files']} file(s): {info['readable_now']} readable now, "
                f"{info['objects']} cold object(s) to restore ({info['bytes']} bytes)"
            )
            for o in info["options"]:
                hours = o["typical_delay_seconds"] / 3600
                out.print(
                    f"  {o['tier']} {o['speed']:>9}: about {hours:g} h, "
                    f"cost {o['cost']:.4f} ({o['price_per_gib']}/GiB)"
                )
        if plan_.objects and not yes and not as_json:
            typer.confirm(f"Restore at speed {speed!r}?", abort=True)
        requests = []
        if plan_.objects and (yes or not as_json):
            requests = request_restore(
                node,
                plan_,
                session=session,
                speed=speed,
                days=days,
                dataset=str(r),
                path=path or "",
                requested_by="permafrost/cli",
            )
        ready = latest_ready_at(requests)
    if as_json:
        _emit(
            {**info, "requested": len(requests), "ready_at": ready.isoformat() if ready else None}
        )
    elif requests:
        out.print(f"restore requested: {len(requests)} object(s), ready {eta(ready)}")


@policy_app.command("prune")
def policy_prune(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List copies that no policy requires any more, and delete them once confirmed."""
    from archive.replication import drop_copies, extra_copies

    with _node() as node, node.session() as session:
        extra = extra_copies(node, session=session)
        if as_json and not yes:
            _emit([c.__dict__ for c in extra])
            return
        if not extra:
            out.print("no extra copies")
            return
        per_tier: dict[str, int] = {}
        for c in extra:
            per_tier[c.tier] = per_tier.get(c.tier, 0) + 1
        out.print(
            "copies no policy requires: "
            + ", ".join(f"{n} on {t}" for t, n in sorted(per_tier.items()))
        )
        if not yes:
            typer.confirm("Delete them for good?", abort=True)
        dropped = drop_copies(node, extra, session=session)
    if as_json:
        _emit({"dropped": dropped})
    else:
        out.print(f"deleted {dropped} copies")
