"""`permafrost user ...` and `permafrost token ...` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from archive.accounts import authenticate, memberships_of
from archive.catalog.models import Permission
from archive.config import Settings
from archive.credentials import user_of_token
from archive.node import ArchiveNode


def run(cwd: Path, *args: str, stdin: str = "", code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    result = subprocess.run(
        [sys.executable, "-m", "archive.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_users_memberships_and_tokens_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    run(tmp_path, "ingest", "src", "-C", "lab", "-D", "d")
    run(tmp_path, "user", "add", "ada", "--password-stdin", stdin="a good long password\n")
    run(tmp_path, "user", "add", "ada", "--no-password", code=2)  # taken
    run(tmp_path, "user", "add", "bot", "--role", "curator", "--no-password")
    run(tmp_path, "user", "grant", "ada", "lab", "write")
    assert (
        "permission must be" in run(tmp_path, "user", "grant", "ada", "lab", "owner", code=2).stderr
    )
    run(tmp_path, "user", "grant", "ada", "nosuch", "read", code=2)
    made = json.loads(
        run(tmp_path, "token", "create", "--user", "ada", "--days", "30", "--json").stdout
    )
    listed = json.loads(run(tmp_path, "user", "list", "--json").stdout)
    assert [(u["username"], u["role"]) for u in listed] == [
        ("ada", "researcher"),
        ("bot", "curator"),
    ]
    tokens = json.loads(run(tmp_path, "token", "list", "--json").stdout)
    assert made["token"] not in json.dumps(tokens)
    assert [t["prefix"] for t in tokens] == [made["token"][:10]]

    node = ArchiveNode.open(Settings(data_dir=tmp_path / "permafrost-data"))
    try:
        with node.session() as session:
            ada = authenticate("ada", "a good long password", session=session)
            assert ada is not None and ada.id is not None
            assert memberships_of(ada.id, session=session) == {"lab": Permission.WRITE}
            owner = user_of_token(made["token"], session=session)
            assert owner is not None and owner.username == "ada"
    finally:
        node.close()
    run(tmp_path, "token", "revoke", str(made["id"]))
    node = ArchiveNode.open(Settings(data_dir=tmp_path / "permafrost-data"))
    try:
        with node.session() as session:
            assert user_of_token(made["token"], session=session) is None
    finally:
        node.close()
