"""placeholder"""

from __future__ import annotations

from collections.abc import Callable

import typer

from archive.config import Settings


def register(app: typer.Typer, settings: Callable[[], Settings]) -> None:
    return None
