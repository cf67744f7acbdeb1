"""`permafrost export` and `permafrost import-bag` as a user runs them: processes, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.archive.test_bags import _spaced_declaration, write_tree


class Cli:
    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}

    def __call__(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "archive.cli", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == code, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
        return result


def test_cli_export_and_import_bag_as_a_user_runs_them(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    cli = Cli(work)
    src = write_tree(tmp_path / "src", {"a.txt": b"alpha\n", "deep/b.bin": os.urandom(5000)})
    cli("ingest", str(src), "-C", "lab", "-D", "d1", "--title", "First")
    zipped = tmp_path / "b.zip"
    exported = json.loads(
        cli("export", "lab/d1@v1", "--bag", str(zipped), "--zip", "--json").stdout
    )
    assert exported["files"] == 2 and exported["zip"] is True
    report = json.loads(cli("import-bag", str(zipped), "-C", "lab", "--json").stdout)
    assert report["dataset"] == "lab/b" and report["files"] == 2 and report["sha256_checked"] == 2
    shown = json.loads(cli("show", "lab/b", "--json").stdout)
    assert shown["title"] == "First"

    shutil.unpack_archive(zipped, tmp_path / "unzipped")
    bad = (tmp_path / "unzipped" / "b").rename(tmp_path / "bad")
    _spaced_declaration(bad)
    refused = cli("import-bag", str(bad), "-C", "lab", "-D", "bad", code=2)
    assert "invalid bag bad" in refused.stderr and "RFC 8493 §2.1.1" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "exists" in cli("export", "lab/d1", "--bag", str(zipped), code=2).stderr
