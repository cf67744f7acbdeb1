"""What ``permafrost`` imports at start-up (issue 7): the commands that never open the
catalog (``--help``, ``ingest --server``) must not pay for SQLAlchemy, SQLModel and the
catalog models, about 0.4 s of the 0.6 s a start-up took."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archive.cli_catalog import DEFAULT_GRACE_HOURS
from archive.config import Settings
from archive.gc import DEFAULT_GRACE
from tests.support.imports import CATALOG_MODULES
from tests.support.server import serve
from web.app import create_app

TOKEN = "s3cret-token"

# As the console script does (``from archive.cli import main``: the import registers the
# plugins of the ``permafrost.cli`` entry points), then which catalog modules got loaded.
RUN_AND_LIST_IMPORTS = f"""
import json, sys
sys.argv = ["permafrost", *json.loads(sys.argv[1])]
from archive.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code or 0
sys.stdout.flush()
print(json.dumps({{"exit": code, "loaded": [m for m in {CATALOG_MODULES!r} if m in sys.modules]}}))
"""


def run_and_list_imports(args: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_IMPORTS, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.stdout, result.stderr
    outcome: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    outcome["output"] = result.stdout + result.stderr
    return outcome


@pytest.mark.parametrize("args", [["--help"], ["ingest", "--help"]])
def test_help_imports_no_catalog(args: list[str]) -> None:
    outcome = run_and_list_imports(args)
    assert outcome["exit"] == 0, outcome["output"]
    assert "Usage: permafrost" in str(outcome["output"])
    assert outcome["loaded"] == []


def test_ingest_to_a_server_imports_no_catalog(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_bytes(b"# Run\n")
    (root / "data" / "table.csv").write_bytes(b"1,2\n3,4\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # the resume journal goes there
    with serve(create_app(Settings(data_dir=tmp_path / "server", api_token=TOKEN))) as url:
        args = ["ingest", str(root), "-C", "lab", "-D", "run", "--server", url, "--json"]
        first = run_and_list_imports([*args, "--token", TOKEN], env)
        second = run_and_list_imports([*args, "--token", TOKEN], env)
    for outcome in (first, second):
        assert outcome["exit"] == 0, outcome["output"]
        assert outcome["loaded"] == []
    assert '"created": false' in str(second["output"])


def test_gc_default_grace_is_the_service_default() -> None:
    """``gc --grace-hours`` is declared without importing archive.gc: the two must agree."""
    assert DEFAULT_GRACE.total_seconds() / 3600 == DEFAULT_GRACE_HOURS
