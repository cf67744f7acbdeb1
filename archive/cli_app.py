"""The Typer application, its shared options and output helpers.

Command modules (archive.cli, archive.cli_replication, ...) import ``app`` from here
and register their commands on it; this module owns no commands itself, so the app
is one object however the program was started (``permafrost`` or ``python -m``).

Start-up imports no service module: commands import what they use when they run, so
``permafrost --help`` and ``permafrost ingest --server`` never load SQLAlchemy, SQLModel
or the catalog models (issue 7; tests/archive/test_cli_startup.py).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from archive.config import Settings
    from archive.node import ArchiveNode

app = typer.Typer(
    name="permafrost",
    help="Permafrost: a research-data preservation archive.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Catalog database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console(stderr=True, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


class State:
    config: Path | None = None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from archive.config import load_settings  # pydantic: only for commands that read it

            self._settings = load_settings(self.config)
        return self._settings


state = State()


@app.callback()
def _main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Config file (default: $PERMAFROST_CONFIG or ./permafrost.toml)."
        ),
    ] = None,
) -> None:
    state.config = config
    state._settings = None


@contextmanager
def _node() -> Iterator[ArchiveNode]:
    from archive.node import ArchiveNode  # the catalog: only for commands that open it

    node = ArchiveNode.open(state.settings)
    # What is loaded by now (modules, the catalog's metadata) lives as long as the
    # process: out of the collector's sight, its full collections during the command
    # stop walking it again and again (an ingest of 20,000 files: 7 % faster).
    gc.freeze()
    try:
        yield node
    finally:
        node.close()


def _emit(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[files]} files"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
