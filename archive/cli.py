"""The ``permafrost`` command.

In local mode every command calls the same service functions the HTTP API calls.
Exit codes: 0 ok, 1 verification or integrity failure, 2 bad usage or bad input.
Every read command takes ``--json`` for scripts.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    Progress,
    TaskID,
)
from rich.table import Table

from archive.cli_app import (
    JsonOpt,
    _emit,
    _node,
    _progress,
    app,
    console,
    db_app,
    out,
    state,
)
from archive.cli_replication import eta
from archive.errors import PermafrostError, RestoreRequired
from archive.refs import DatasetRef, check_name, parse_ref

if TYPE_CHECKING:
    from archive.node import ArchiveNode
    from archive.worker import Worker

# Commands import the services they call when they run, not here: ``--help`` and
# ``ingest --server`` never load the catalog (archive.cli_app says why).


class _RichIngestProgress:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.files = 0
        self.total_files = 0

    def started(self, files: int, total_bytes: int) -> None:
        self.total_files = files
        self.task = self.progress.add_task("ingest", total=total_bytes, files=f"0/{files}")

    def advanced(self, files: int, nbytes: int) -> None:
        assert self.task is not None
        self.files += files
        self.progress.update(self.task, advance=nbytes, files=f"{self.files}/{self.total_files}")


@app.command()
def init() -> None:
    """Create the catalog and tier folders of the configured archive (the embedded default)."""
    from archive.identity import ensure_node_key, public_key_text

    with _node() as node:
        s = node.settings
        console.print(f"[green]Archive ready.[/] Catalog: {s.catalog_url}")
        for name, tier in s.tiers.items():
            where = getattr(tier, "path", None) or getattr(tier, "bucket", "")
            console.print(f"  tier [bold]{name}[/] ({tier.kind}, {tier.role}): {where}")
        key, made = ensure_node_key(s.node_key_path)
        console.print(
            f"  node key {s.node_key_path} ({'new' if made else 'kept'}), "
            f"public key {public_key_text(key)}"
        )
        _first_admin(node, f"http://{s.host}:{s.port}")


def _first_admin(node: ArchiveNode, base_url: str) -> None:
    """On a catalog without users, create the administrator and say how to sign in (once)."""
    from archive.accounts import INITIAL_ADMIN, ensure_initial_admin

    with node.session() as session:
        password = ensure_initial_admin(session=session)
    if password is not None:
        console.print(
            f"[bold]First run:[/] sign in at {base_url}/login as [bold]{INITIAL_ADMIN}[/] "
            f"with password [bold]{escape(password)}[/] (shown once; change it with "
            f"`permafrost user passwd {INITIAL_ADMIN}`)."
        )


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="Folder (or file) to ingest.")],
    collection: Annotated[str, typer.Option("--collection", "-C", help="Collection name.")],
    dataset: Annotated[str, typer.Option("--dataset", "-D", help="Dataset name.")],
    message: Annotated[str, typer.Option("--message", "-m", help="What changed.")] = "",
    title: Annotated[str | None, typer.Option(help="Dataset title.")] = None,
    as_json: JsonOpt = False,
    server: Annotated[
        str | None, typer.Option(help="Send to this Permafrost server (http[s]://HOST:PORT).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="PERMAFROST_TOKEN", help="Bearer token for --server.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --server: say what would be uploaded.")
    ] = False,
    jobs: Annotated[int, typer.Option(min=1, max=64, help="With --server: uploads at once.")] = 4,
) -> None:
    """Ingest a folder as the next version of COLLECTION/DATASET, here or on --server."""
    ref = DatasetRef(check_name("collection", collection), check_name("dataset", dataset))
    if server is not None:
        cli_transfer.network_ingest_command(
            path,
            ref,
            server=server,
            token=token,
            jobs=jobs,
            dry_run=dry_run,
            message=message,
            title=title,
            as_json=as_json,
        )
        return
    if dry_run:
        raise typer.BadParameter("--dry-run needs --server", param_hint="--dry-run")
    from archive.ingest_start import begin_ingest

    # The tree is scanned and its small files go to the encoding workers first: they
    # encode while this process loads and opens the catalog (0.5 s of imports).
    with begin_ingest(path, state.settings) as begun:
        from archive.ingest import ingest_tree

        with _node() as node, _progress() as progress:
            report = ingest_tree(
                node,
                path,
                ref,
                message=message,
                title=title,
                progress=_RichIngestProgress(progress),
                begun=begun,
            )
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if as_json:
        _emit(report.as_dict())
        return
    verb = "committed" if report.created else "unchanged, still"
    out.print(
        f"{report.dataset}@v{report.version} {verb}: {report.files} files, "
        f"{_size(report.bytes)}; stored {report.new_blobs} new blobs "
        f"({_size(report.new_bytes)} -> {_size(report.stored_bytes)}), "
        f"{report.deduplicated} already archived; {report.seconds:.1f} s"
    )


@app.command("ls")
def ls_(
    collection: Annotated[str | None, typer.Argument(help="Only this collection.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List datasets (and their latest version)."""
    from archive.datasets import list_datasets, list_versions

    with _node() as node, node.session() as session:
        rows: list[dict[str, Any]] = []
        for coll, ds in list_datasets(collection, session=session):
            assert ds.id is not None
            versions = list_versions(ds.id, session=session)
            latest = versions[-1] if versions else None
            rows.append(
                {
                    "id": f"{coll}/{ds.name}",
                    "pid": ds.pid,
                    "title": ds.title,
                    "versions": len(versions),
                    "latest": latest.number if latest else None,
                    "files": latest.file_count if latest else 0,
                    "bytes": latest.total_size if latest else 0,
                    "updated": latest.created_at.isoformat() if latest else None,
                }
            )
    if as_json:
        _emit(rows)
        return
    table = Table("dataset", "versions", "files", "size", "updated", "title")
    for r in rows:
        table.add_row(
            r["id"],
            str(r["versions"]),
            str(r["files"]),
            _size(r["bytes"]),
            (r["updated"] or "")[:19],
            r["title"],
        )
    out.print(table)


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="COLLECTION/DATASET[@vN]")],
    as_json: JsonOpt = False,
) -> None:
    """Show a dataset: versions, files with size, BLAKE3, SHA-256, and replicas."""
    from archive.datasets import iter_entries, list_versions, resolve_version
    from archive.replicas import replicas_of_version

    r = parse_ref(ref)
    with _node() as node, node.session() as session:
        ds, version = resolve_version(r, session=session)
        assert ds.id is not None
        assert version.id is not None
        replicas = replicas_of_version(version.id, session=session)
        data: dict[str, Any] = {
            "id": f"{r.collection}/{r.dataset}",
            "pid": ds.pid,
            "title": ds.title,
            "metadata": ds.metadata_,
            "versions": [
                {
                    "number": v.number,
                    "created": v.created_at.isoformat(),
                    "message": v.message,
                    "files": v.file_count,
                    "bytes": v.total_size,
                    "manifest_b3": v.manifest_b3,
                }
                for v in list_versions(ds.id, session=session)
            ],
            "version": version.number,
            "files": [
                {
                    "path": e.path,
                    "size": e.size,
                    "blake3": e.b3,
                    "sha256": e.sha256,
                    "stored_size": e.stored_size,
                    "codec": e.codec,
                    "replicas": replicas.get(e.b3, []),
                }
                for e in iter_entries(version.id, session=session)
            ],
        }
    if as_json:
        _emit(data)
        return
    out.print(f"[bold]{data['id']}[/]  {data['pid']}  {escape(data['title'])}")
    for v in data["versions"]:
        mark = "*" if v["number"] == data["version"] else " "
        out.print(
            f" {mark} v{v['number']}  {v['created'][:19]}  {v['files']} files  "
            f"{_size(v['bytes'])}  {escape(v['message'])}"
        )
    for f in data["files"]:
        copies = ", ".join(f"{c['tier']}:{c['state']}" for c in f["replicas"]) or "no copy!"
        out.print(f"[bold]{escape(f['path'])}[/]  {_size(f['size'])}  {escape(copies)}")
        out.print(f"    blake3 {f['blake3']}\n    sha256 {f['sha256']}", markup=False)


@app.command()
def get(
    ref: Annotated[str, typer.Argument(help="COLLECTION/DATASET[@vN]")],
    path: Annotated[str | None, typer.Argument(help="A file or folder in the version.")] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write ('-': stdout).")
    ] = Path("."),
    overwrite: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Get exact bytes back: one file, a folder, or the whole version, every digest verified."""
    from archive.datasets import resolve_version
    from archive.restore import latest_ready_at, plan_restore, request_restore

    r = parse_ref(ref)
    with _node() as node, node.session() as session:
        _, version = resolve_version(r, session=session)
        assert version.id is not None
        try:
            files, nbytes, problems = _get(node, version, path, output, overwrite, session)
        except RestoreRequired:
            # Only cold copies: ask for them now (standard speed), say when, exit 3.
            plan = plan_restore(node, version, path, session=session)
            requests = request_restore(
                node,
                plan,
                session=session,
                dataset=str(r),
                path=path or "",
                requested_by="permafrost/cli get",
            )
            session.commit()
            options = [o for o in plan.options(node) if o["speed"] == "standard"]
            cost = sum(o["cost"] for o in options)
            console.print(
                f"restore requested for {len(requests)} cold object(s) "
                f"({plan.bytes} bytes, cost about {cost:.4f}), "
                f"ready {eta(latest_ready_at(requests))}; run the same command again then"
            )
            raise typer.Exit(3) from None
    for p in problems:
        console.print(f"[yellow]warning:[/] a copy failed and another was used: {p}")
    if as_json:
        _emit({"files": files, "bytes": nbytes, "problems": problems})
    elif str(output) != "-":
        out.print(f"wrote {files} file(s), {_size(nbytes)}, all digests verified")


def _get(
    node: ArchiveNode,
    version: Any,
    path: str | None,
    output: Path,
    overwrite: bool,
    session: Any,
) -> tuple[int, int, list[str]]:
    """Write a file, a folder or the whole version; bytes verified on the way out."""
    from archive.checkout import checkout, stream_blob, write_file
    from archive.datasets import get_entry

    problems: list[str] = []
    if path is not None and str(output) == "-":
        entry = get_entry(version.id, path, session=session)
        sink = sys.stdout.buffer
        for chunk in stream_blob(entry.b3, session=session, tiers=node.tiers, problems=problems):
            sink.write(chunk)
        sink.flush()
        files, nbytes = 1, entry.size
    elif path is not None and _is_entry(version.id, path, session):
        entry = get_entry(version.id, path, session=session)
        dest = output / Path(path).name if output.is_dir() else output
        write_file(
            entry,
            dest,
            session=session,
            tiers=node.tiers,
            problems=problems,
            overwrite=overwrite,
        )
        files, nbytes = 1, entry.size
    else:
        with _progress() as progress:
            task = progress.add_task("get", total=version.total_size, files="")
            report = checkout(
                version,
                output,
                session=session,
                tiers=node.tiers,
                prefix=path or "",
                overwrite=overwrite,
                on_file=lambda n: progress.update(task, advance=n),
            )
        files, nbytes, problems = report.files, report.bytes, report.problems
    return files, nbytes, problems


def _is_entry(version_id: int, path: str, session: Any) -> bool:
    from archive.datasets import get_entry

    try:
        get_entry(version_id, path, session=session)
    except PermafrostError:
        return False
    return True


@app.command()
def verify(
    ref: Annotated[str, typer.Argument(help="COLLECTION/DATASET[@vN]")],
    as_json: JsonOpt = False,
) -> None:
    """Re-read every stored copy of every blob of a version now and report. Exit 1 on damage."""
    from archive.datasets import resolve_version
    from archive.verify import verify_version

    r = parse_ref(ref)
    with _node() as node, node.session() as session:
        _, version = resolve_version(r, session=session)
        with _progress() as progress:
            task = progress.add_task("verify", total=version.total_size, files="")
            report = verify_version(
                version,
                session=session,
                tiers=node.tiers,
                on_blob=lambda n: progress.update(task, advance=n),
            )
    failures = report.failures
    if as_json:
        _emit(
            {
                "dataset": f"{r.collection}/{r.dataset}",
                "version": version.number,
                "blobs": report.blobs,
                "copies": report.copies,
                "bytes": report.bytes,
                "ok": not failures,
                "failures": [c.__dict__ for c in failures],
                "not_checked": [c.__dict__ for c in report.skipped],
                "lost": report.blobs_without_good_copy,
            }
        )
    else:
        out.print(
            f"{r.collection}/{r.dataset}@v{version.number}: {report.blobs} blobs, "
            f"{report.copies - len(report.skipped)} copies checked, {len(failures)} failed"
            + (
                f", {len(report.skipped)} cold copies not readable without a restore"
                if report.skipped
                else ""
            )
        )
        for c in failures:
            out.print(f"[red]FAILED[/] {c.b3} on {c.tier} ({escape(c.key)}): {escape(c.detail)}")
        if report.blobs_without_good_copy:
            out.print(
                f"[red bold]{len(report.blobs_without_good_copy)} blob(s) have no good copy[/]"
            )
    if failures:
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default from config).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from config).")] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Serve only; run `permafrost worker` elsewhere.")
    ] = False,
) -> None:
    """Run the HTTP API (OpenAPI at /docs) and, unless --no-worker, an embedded worker."""
    from archive.node import ArchiveNode
    from archive.worker import Worker

    settings = state.settings
    bind_host, bind_port = host or settings.host, port or settings.port
    with _node() as node:  # migrate the catalog and create tiers before accepting requests
        _first_admin(node, f"http://{bind_host}:{bind_port}")
    if state.config is not None:
        os.environ["PERMAFROST_CONFIG"] = str(state.config.resolve())
    embedded: Worker | None = None
    if not no_worker:
        worker_node = ArchiveNode.open(settings, upgrade=False)
        embedded = Worker(worker_node)
        threading.Thread(target=embedded.run, name="permafrost-worker", daemon=True).start()
    console.print(
        f"Permafrost serving on http://{bind_host}:{bind_port} (API docs at /docs)"
        + ("" if no_worker else ", with an embedded worker")
    )
    try:
        import uvicorn  # 0.1 s of imports every other command does without

        # Forwarding headers are the app's business (web.proxies, ``trusted_proxies``),
        # not uvicorn's default trust of 127.0.0.1 and FORWARDED_ALLOW_IPS.
        uvicorn.run(
            "web.app:create_app",
            factory=True,
            host=bind_host,
            port=bind_port,
            proxy_headers=False,
        )
    finally:
        if embedded is not None:
            embedded.stop.set()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the catalog database to the latest schema."""
    from archive.catalog.migrate import current_revision, upgrade

    url = state.settings.catalog_url
    upgrade(url, revision)
    out.print(f"catalog at revision {current_revision(url)}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# Command modules that register themselves on ``app``: user, token; catalog rebuild, gc;
# import-bag, export and ingest --server.
from archive import cli_accounts, cli_catalog, cli_transfer  # noqa: E402, F401

cli_transfer.register(app, lambda: state.settings)
assert cli_accounts.user_app is not None  # registered on import


def _register_plugins() -> None:
    """Commands of higher layers (``fixity``: ``audit``, ``events``), registered through
    the ``permafrost.cli`` entry point group: each names ``register(app, settings)``.
    Loaded by name so this module never imports them (dependencies point down)."""
    for point in entry_points(group="permafrost.cli"):
        point.load()(app, lambda: state.settings)


_register_plugins()


def main() -> None:
    try:
        app()
    except PermafrostError as exc:
        console.print("[red]error:[/]", end=" ")
        console.print(str(exc), markup=False, highlight=False)
        sys.exit(exc.exit_code)
    finally:
        # The process ends here: what is alive is freed with it. Frozen, the objects
        # escape the collections of the interpreter's shutdown, which walked every one
        # of them (SQLAlchemy, pydantic, the catalog's models): 0.25 s of every command
        # that opened the catalog. Finalizers and atexit handlers still run.
        gc.freeze()


if __name__ == "__main__":
    main()
