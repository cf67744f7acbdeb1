"""The permafrost command as a user runs it: real processes, exit codes, JSON, bytes back."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import blake3
import httpx
import pytest

from tests.archive.conftest import Cli
from tests.support.server import permafrost_serve

MiB = 1024 * 1024


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "sub/b.csv": b"x,y\n" * 50_000,
        "sub/deeper/c.bin": os.urandom(2 * MiB),
        "zero": b"",
    }
    for rel, content in files.items():
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_bytes(content)
    return files


def test_init_ingest_ls_show_get_verify(cli: Cli, tree: dict[str, bytes], tmp_path: Path) -> None:
    cli("init")
    assert (cli.cwd / "permafrost-data" / "catalog.db").is_file()
    report = cli.json("ingest", str(tmp_path / "src"), "--collection", "lab", "--dataset", "d1")
    assert report["version"] == 1 and report["files"] == 4 and report["created"] is True

    listing = cli.json("ls")
    assert [row["id"] for row in listing] == ["lab/d1"]
    assert listing[0]["files"] == 4

    shown = cli.json("show", "lab/d1")
    by_path = {f["path"]: f for f in shown["files"]}
    for rel, content in tree.items():
        assert by_path[rel]["blake3"] == blake3.blake3(content).hexdigest()
        assert by_path[rel]["sha256"] == hashlib.sha256(content).hexdigest()
        assert by_path[rel]["size"] == len(content)
        copies = {(r["tier"], r["state"]) for r in by_path[rel]["replicas"]}
        assert copies == {("hot", "present"), ("cold", "pending")}
    assert shown["pid"].startswith("urn:uuid:")
    # The default policy asks for a cold copy too: one worker pass makes it.
    status = cli.json("status")
    assert status["datasets"]["items"][0]["summary"] == "hot 1/1, cold 0/1: copying"
    assert cli.json("worker", "--once")["replicate"] == 4
    status = cli.json("status")
    assert status["datasets"]["preserved"] == 1
    assert status["queue"]["depth"] == 0
    shown = cli.json("show", "lab/d1")
    for f in shown["files"]:
        assert {(r["tier"], r["state"]) for r in f["replicas"]} == {
            ("hot", "present"),
            ("cold", "present"),
        }

    out = tmp_path / "restored"
    cli("get", "lab/d1", "-o", str(out))
    for rel, content in tree.items():
        assert (out / rel).read_bytes() == content
    one = cli("get", "lab/d1@v1", "sub/b.csv", "-o", "-").stdout
    assert one.encode() == tree["sub/b.csv"]
    cli("get", "lab/d1", "sub/deeper/c.bin", "-o", str(tmp_path / "c.bin"))
    assert (tmp_path / "c.bin").read_bytes() == tree["sub/deeper/c.bin"]
    cli("get", "lab/d1", "sub", "-o", str(tmp_path / "only-sub"))
    assert (tmp_path / "only-sub" / "b.csv").read_bytes() == tree["sub/b.csv"]
    # Refuses to overwrite without being asked to.
    cli("get", "lab/d1", "a.txt", "-o", str(tmp_path / "c.bin"), code=2)

    verified = cli.json("verify", "lab/d1")
    assert verified["ok"] is True and verified["copies"] == 8  # hot and cold


def test_second_version_and_version_selection(
    cli: Cli, tree: dict[str, bytes], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    cli("ingest", str(src), "-C", "lab", "-D", "d1", "-m", "first")
    (src / "a.txt").write_bytes(b"alpha v2\n")
    second = cli.json("ingest", str(src), "-C", "lab", "-D", "d1", "-m", "second")
    assert second["version"] == 2 and second["new_blobs"] == 1
    again = cli.json("ingest", str(src), "-C", "lab", "-D", "d1")
    assert again["version"] == 2 and again["created"] is False
    assert cli("get", "lab/d1@v1", "a.txt", "-o", "-").stdout == "alpha\n"
    assert cli("get", "lab/d1", "a.txt", "-o", "-").stdout == "alpha v2\n"
    shown = cli.json("show", "lab/d1@v1")
    assert shown["version"] == 1
    assert [v["message"] for v in shown["versions"]] == ["first", "second"]


def test_verify_exits_1_on_damage(cli: Cli, tree: dict[str, bytes], tmp_path: Path) -> None:
    cli("ingest", str(tmp_path / "src"), "-C", "lab", "-D", "d1")
    digest = blake3.blake3(tree["sub/deeper/c.bin"]).hexdigest()
    blob = cli.cwd / "permafrost-data/tiers/hot/blobs/b3" / digest[:2] / digest[2:4] / digest
    damaged = bytearray(blob.read_bytes())
    damaged[-1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))
    result = cli.json("verify", "lab/d1", code=1)
    assert result["ok"] is False and result["lost"] == [digest]
    # get refuses to hand out damaged bytes: exit 1 and no file left behind.
    target = tmp_path / "c.bin"
    cli("get", "lab/d1", "sub/deeper/c.bin", "-o", str(target), code=1)
    assert not target.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "no-slash"], "invalid dataset reference"),
        (["show", "lab/missing"], "no dataset lab/missing"),
        (["show", "lab/d1@v7"], "no version 7"),
        (["get", "lab/d1", "nope.txt", "-o", "x"], "no file or folder"),
        (["ingest", "/nonexistent", "-C", "lab", "-D", "d2"], "No such file"),
        (["ingest", ".", "-C", "../x", "-D", "d2"], "invalid collection name"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(
    cli: Cli, tree: dict[str, bytes], tmp_path: Path, args: list[str], message: str
) -> None:
    cli("ingest", str(tmp_path / "src"), "-C", "lab", "-D", "d1")
    result = cli(*args, code=2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_tree_exits_2_and_stores_nothing(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    (src / "ok.txt").write_text("fine")
    os.mkfifo(src / "pipe")
    result = cli("ingest", str(src), "-C", "lab", "-D", "bad", code=2)
    assert "pipe" in result.stderr and "FIFO" in result.stderr
    assert cli.json("ls") == []
    hot = cli.cwd / "permafrost-data/tiers/hot"
    assert [p for p in hot.rglob("*") if p.is_file()] == []


def test_config_file_and_environment(cli: Cli, tree: dict[str, bytes], tmp_path: Path) -> None:
    (cli.cwd / "permafrost.toml").write_text(
        'data_dir = "elsewhere"\nzstd_level = 9\n'
        '[tiers.hot]\nkind = "local"\npath = "elsewhere/hot-tier"\n'
    )
    cli("ingest", str(tmp_path / "src"), "-C", "lab", "-D", "d1")
    assert (cli.cwd / "elsewhere/catalog.db").is_file()
    assert any((cli.cwd / "elsewhere/hot-tier/manifests").rglob("v1.json"))
    (cli.cwd / "permafrost.toml").write_text("zstd_levle = 9\n")
    assert "zstd_levle" in cli("ls", code=2).stderr  # typos are refused, not ignored
    cli.env["PERMAFROST_ZSTD_LEVEL"] = "99"
    (cli.cwd / "permafrost.toml").unlink()
    assert "zstd_level" in cli("ls", code=2).stderr


def test_serve_answers_over_http(cli: Cli, tree: dict[str, bytes], tmp_path: Path) -> None:
    """`permafrost serve` on the embedded default: first run makes an admin who can sign
    in; a token from `permafrost token create` reads what the CLI ingested."""
    cli("ingest", str(tmp_path / "src"), "-C", "lab", "-D", "d1")
    log = tmp_path / "serve.log"
    with permafrost_serve(cli.cwd, cli.env, log=log) as base:
        said = re.search(r"sign in at (\S+)/login as admin with password (\S+) ", log.read_text())
        assert said is not None, log.read_text()
        assert said[1] == base
        with httpx.Client(base_url=base) as browser:
            form = browser.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert csrf is not None
            signed_in = browser.post(
                "/login",
                data={"username": "admin", "password": said[2], "csrf_token": csrf[1]},
            )
            assert signed_in.status_code == 303
            assert "permafrost_session" in browser.cookies
        assert httpx.get(f"{base}/api/v1/collections").status_code == 401
        token = json.loads(cli("token", "create", "--user", "admin", "--json").stdout)["token"]
        got = httpx.get(
            f"{base}/api/v1/datasets/lab/d1/versions/latest/files/sub/b.csv",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert got.status_code == 200
        assert got.content == tree["sub/b.csv"]
        assert got.headers["etag"] == f'"{blake3.blake3(tree["sub/b.csv"]).hexdigest()}"'
