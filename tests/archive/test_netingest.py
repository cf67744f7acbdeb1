"""Network ingest against a live server: uploads, resume, retries, dry run, refusals."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from archive.client import ArchiveClient, RetryPolicy, ServerUnreachable, Unauthorized
from archive.config import Settings
from archive.datasets import parse_ref
from archive.errors import UnsupportedFile
from archive.journal import Journal, journal_path
from archive.netingest import NetIngestReport, network_ingest
from tests.archive.conftest import Cli
from tests.support.server import serve
from web.app import create_app

TOKEN = "s3cret-token"
MiB = 1024 * 1024
Start = Callable[[Any], str]
FAST = RetryPolicy(attempts=4, base_seconds=0.01, max_seconds=0.05)


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "README.md": b"# Run\n",
        "copy-of-readme.md": b"# Run\n",  # same content: uploaded once
        "empty": b"",
        "data/big.bin": os.urandom(3 * MiB + 5),
        "data/table.csv": b"".join(b"%d,%d\n" % (i, i % 13) for i in range(50_000)),
    }
    for i in range(30):
        files[f"data/small/{i:02}.txt"] = f"file {i}\n".encode()
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return files


class FailPuts:
    """A real ASGI app in front of the real API that answers 500 to some blob uploads
    (``PUT /blobs/{b3}`` and ``POST /blobs/batch``, both counted in ``puts``).

    ``fail_first``: the first N uploads fail; ``succeed_first``: after N good uploads,
    every upload fails (the network is down). Each failed body is read whole first,
    as a proxy that gave up after receiving it would.
    """

    def __init__(self, app: Any, *, fail_first: int = 0, succeed_first: int | None = None) -> None:
        self.app = app
        self.fail_first = fail_first
        self.succeed_first = succeed_first
        self.puts = 0
        self.failed = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        batch = scope.get("path", "").endswith("/blobs/batch") and scope["method"] == "POST"
        if scope["type"] == "http" and (scope["method"] == "PUT" or batch):
            self.puts += 1
            down = self.succeed_first is not None and self.puts > self.succeed_first
            if self.puts <= self.fail_first or down:
                self.failed += 1
                while (await receive()).get("more_body"):
                    pass
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b'{"error":"Injected"}'})
                return
        await self.app(scope, receive, send)


@pytest.fixture
def start_server() -> Iterator[Start]:
    """``start_server(app)`` runs an ASGI app on a loopback port until the test ends."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serve(app))


@pytest.fixture
def server_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "server", api_token=TOKEN)


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


def run(
    url: str, root: Path, journal_dir: Path, *, token: str = TOKEN, **kwargs: Any
) -> NetIngestReport:
    with ArchiveClient(url, token, retry=kwargs.pop("retry", FAST)) as client:
        journal = Journal(journal_path(client.server, root, journal_dir))
        try:
            return network_ingest(client, root, parse_ref("lab/run"), journal=journal, **kwargs)
        finally:
            journal.close()


def fetch(url: str, path: str, version: int = 1) -> bytes:
    response = httpx.get(
        f"{url}/api/v1/datasets/lab/run/versions/{version}/files/{path}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200, response.text
    return response.content


def test_first_run_uploads_everything_second_nothing_then_only_the_change(
    start_server: Start, server_settings: Settings, tmp_path: Path, journal_dir: Path
) -> None:
    url = start_server(create_app(server_settings))
    root = tmp_path / "tree"
    files = make_tree(root)
    unique = {content for content in files.values()}

    first = run(url, root, journal_dir, message="first", title="A run")
    assert (first.version, first.created, first.files) == (1, True, len(files))
    assert first.hashed == len(files) and first.hashed_bytes == sum(map(len, files.values()))
    assert first.uploaded_files == len(unique)
    assert first.uploaded_bytes == sum(map(len, unique))
    assert first.skipped == 1  # the second copy of the README travelled with the first
    for rel, content in files.items():
        assert fetch(url, rel) == content

    second = run(url, root, journal_dir)
    assert (second.version, second.created) == (1, False)
    assert second.hashed == 0  # size, mtime and inode unchanged: nothing re-read
    assert (second.uploaded_files, second.uploaded_bytes) == (0, 0)
    assert second.skipped == len(files)

    changed = root / "data" / "small" / "07.txt"
    changed.write_bytes(b"changed contents\n")
    third = run(url, root, journal_dir, message="one file changed")
    assert (third.version, third.created) == (2, True)
    assert third.hashed == 1
    assert (third.uploaded_files, third.uploaded_bytes) == (1, len(b"changed contents\n"))
    assert fetch(url, "data/small/07.txt", 2) == b"changed contents\n"
    assert fetch(url, "data/small/07.txt", 1) == files["data/small/07.txt"]


def test_dry_run_says_what_it_would_upload_and_uploads_nothing(
    start_server: Start, server_settings: Settings, tmp_path: Path, journal_dir: Path
) -> None:
    url = start_server(create_app(server_settings))
    root = tmp_path / "tree"
    files = make_tree(root)
    unique = {content for content in files.values()}
    report = run(url, root, journal_dir, dry_run=True)
    assert report.dry_run and report.version is None
    assert (report.missing_files, report.missing_bytes) == (len(unique), sum(map(len, unique)))
    assert (report.uploaded_files, report.uploaded_bytes) == (0, 0)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{url}/api/v1/datasets/lab/run", headers=headers).status_code == 404
    hot = server_settings.data_dir / "tiers" / "hot"
    assert [p for p in hot.rglob("*") if p.is_file()] == []
    # The hashes it computed are kept: the real run reads nothing again.
    assert run(url, root, journal_dir).hashed == 0


def test_server_errors_are_retried_with_backoff(
    start_server: Start, server_settings: Settings, tmp_path: Path, journal_dir: Path
) -> None:
    flaky = FailPuts(create_app(server_settings), fail_first=2)
    url = start_server(flaky)
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "one.bin").write_bytes(os.urandom(200_000))
    report = run(url, root, journal_dir, jobs=1)
    assert flaky.failed == 2 and flaky.puts == 3
    assert report.retries == 2 and report.uploaded_files == 1 and report.version == 1
    assert fetch(url, "sub/one.bin") == (root / "sub" / "one.bin").read_bytes()


def test_an_interrupted_run_resumes_where_it_stopped(
    start_server: Start, server_settings: Settings, tmp_path: Path, journal_dir: Path
) -> None:
    app = create_app(server_settings)
    failing = FailPuts(app, succeed_first=10)
    down_url = start_server(failing)
    root = tmp_path / "tree"
    files = make_tree(root)
    unique = {content for content in files.values()}
    with pytest.raises(ServerUnreachable) as stopped:
        run(down_url, root, journal_dir, jobs=1, batch_bytes=0)  # one PUT per file
    assert stopped.value.exit_code == 1 and "run the same command again" in str(stopped.value)

    failing.succeed_first = None  # the network is back
    again = run(down_url, root, journal_dir, jobs=1, batch_bytes=0)
    assert again.hashed == 0  # every hash was kept in the journal
    assert again.uploaded_files == len(unique) - 10  # only what did not arrive
    assert again.version == 1


def test_client_errors_are_not_retried(
    start_server: Start, server_settings: Settings, tmp_path: Path, journal_dir: Path
) -> None:
    url = start_server(create_app(server_settings))
    root = tmp_path / "tree"
    make_tree(root)
    with ArchiveClient(url, "wrong", retry=FAST) as client:
        journal = Journal(journal_path(url, root, journal_dir))
        with pytest.raises(Unauthorized) as refused:
            network_ingest(client, root, parse_ref("lab/run"), journal=journal)
        assert client.retries == 0
        # Refused before any work: not one file was read.
        assert journal.db.execute("SELECT count(*) FROM files").fetchone() == (0,)
        journal.close()
    assert refused.value.exit_code == 2 and refused.value.status == 401


def test_unreachable_server(tmp_path: Path, journal_dir: Path) -> None:
    root = tmp_path / "tree"
    make_tree(root)
    with pytest.raises(ServerUnreachable) as failed:
        run("http://127.0.0.1:9", root, journal_dir)  # the discard port: nobody listens
    assert failed.value.attempts == FAST.attempts and "ConnectError" in failed.value.last_error


def netingest_cli(tmp_path: Path) -> Cli:
    """The CLI with no PERMAFROST_* settings and its resume journal under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # the journal goes there
    return Cli(tmp_path, env)


def test_cli_ingest_to_a_server_as_a_user_runs_it(
    start_server: Start, server_settings: Settings, tmp_path: Path
) -> None:
    url = start_server(create_app(server_settings))
    root = tmp_path / "tree"
    files = make_tree(root)
    cli = netingest_cli(tmp_path)
    args = ["ingest", str(root), "-C", "lab", "-D", "run", "--server", url]

    dry = cli(*args, "--dry-run", "--token", TOKEN)
    assert "dry run: would upload" in dry.stdout

    cli.env["PERMAFROST_TOKEN"] = TOKEN
    first = json.loads(cli(*args, "--json", "--jobs", "3").stdout)
    assert first["version"] == 1 and first["hashed"] == 0 and first["files"] == len(files)
    assert (Path(cli.env["XDG_CACHE_HOME"]) / "permafrost" / "journal").is_dir()
    second = json.loads(cli(*args, "--json").stdout)
    assert (second["uploaded_bytes"], second["hashed"], second["created"]) == (0, 0, False)

    cli.env["PERMAFROST_TOKEN"] = "wrong"
    refused = cli(*args, code=2)
    assert "refused the token (401)" in refused.stderr and "Traceback" not in refused.stderr
    local = cli("ingest", str(root), "-C", "lab", "-D", "run", "--dry-run", code=2)
    assert "--dry-run needs --server" in local.stderr


@pytest.mark.slow
def test_cli_exits_1_when_the_server_cannot_be_reached(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    make_tree(root)
    failed = netingest_cli(tmp_path)(
        "ingest", str(root), "-C", "lab", "-D", "run", "--server", "http://127.0.0.1:9", code=1
    )
    assert "did not answer after 6 attempt(s)" in failed.stderr
    assert "run the same command again" in failed.stderr


def test_a_file_changed_between_hashing_and_upload_is_refused(
    start_server: Start, server_settings: Settings, tmp_path: Path, journal_dir: Path
) -> None:
    url = start_server(create_app(server_settings))
    root = tmp_path / "tree"
    root.mkdir()
    victim = root / "moving.bin"
    victim.write_bytes(b"a" * 5000)

    class RewriteBeforeUpload:
        """Progress callbacks: when uploads start, another process rewrites the file."""

        def phase(self, name: str, files: int, nbytes: int) -> None:
            if name == "upload":
                victim.write_bytes(b"b" * 5000)  # same size: only the digest tells

        def advanced(self, name: str, files: int, nbytes: int) -> None:
            pass

    with pytest.raises(UnsupportedFile, match="changed since it was hashed") as refused:
        run(url, root, journal_dir, progress=RewriteBeforeUpload())
    assert refused.value.path == "moving.bin" and refused.value.exit_code == 2
    report = run(url, root, journal_dir)  # the journal forgot it: hashed again, sent right
    assert report.hashed == 1 and report.version == 1
    assert fetch(url, "moving.bin") == b"b" * 5000
