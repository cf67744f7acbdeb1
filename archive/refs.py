"""Dataset references and names: ``collection/dataset[@vN]``, checked without the catalog.

The network ingest and the command line parse references before (or without) opening
the catalog, so this module imports nothing heavier than :mod:`archive.errors`;
:mod:`archive.datasets` re-exports every name for the code that also queries the catalog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from archive.errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REF_RE = re.compile(r"^(?P<collection>[^/@]+)/(?P<dataset>[^/@]+)(?:@v?(?P<version>\d+))?$")


@dataclass(frozen=True)
class DatasetRef:
    collection: str
    dataset: str
    version: int | None = None

    def __str__(self) -> str:
        suffix = f"@v{self.version}" if self.version is not None else ""
        return f"{self.collection}/{self.dataset}{suffix}"


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"invalid {kind} name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_ref(text: str) -> DatasetRef:
    """Parse ``collection/dataset[@vN]``.

    Raises:
        InvalidInput: the reference is malformed.
    """
    m = REF_RE.match(text)
    if not m:
        raise InvalidInput(f"invalid dataset reference {text!r}: expected COLLECTION/DATASET[@vN]")
    version = int(m["version"]) if m["version"] else None
    return DatasetRef(
        check_name("collection", m["collection"]), check_name("dataset", m["dataset"]), version
    )
