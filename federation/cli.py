"""``permafrost node info`` and ``permafrost partner add|list|key``, attached to the main app.

``register(app, settings)`` is named by the ``permafrost.cli`` entry point group, so
the archive layer never imports this one. Pairing two institutions: each runs
``permafrost node info`` and sends the other its URL and public key; each registers
the other with ``permafrost partner add`` (with the quota it grants), and declares a
tier of kind ``federation`` pointing at the other's URL (README, "Federation").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from archive.errors import InvalidInput

if TYPE_CHECKING:
    from archive.config import Settings

# Registered at every start-up, so the services are imported by the commands that call
# them: ``permafrost --help`` and ``ingest --server`` never load the catalog (issue 7).

out = Console(highlight=False, soft_wrap=True)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_size(text: str) -> int:
    """``500G``, ``1.5TiB``, ``1000000`` -> bytes (binary units)."""
    match = re.match(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?)(?:i?B)?\s*$", text, re.IGNORECASE)
    if match is None:
        raise InvalidInput(f"not a size: {text!r} (e.g. 500G, 2TiB)")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def register(app: typer.Typer, settings: Callable[[], Settings]) -> None:
    node_app = typer.Typer(help="This node's identity for partners.", no_args_is_help=True)
    partner_app = typer.Typer(help="Partner institutions (federation).", no_args_is_help=True)
    app.add_typer(node_app, name="node")
    app.add_typer(partner_app, name="partner")

    @node_app.command("info")
    def node_info(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """Print this node's public key and URL, to give to partners."""
        from archive.identity import load_node_key, public_key_text

        s = settings()
        key = public_key_text(load_node_key(s.node_key_path))
        if as_json:
            out.print(json.dumps({"url": s.public_url, "public_key": key}))
            return
        out.print(f"url:        {s.public_url}")
        out.print(f"public key: {key}")

    @partner_app.command("add")
    def partner_add(
        name: str,
        url: str,
        public_key: Annotated[str, typer.Option(help="What the partner's `node info` prints.")],
        quota: Annotated[str, typer.Option(help="Bytes we hold for them, e.g. 500G.")] = "0",
    ) -> None:
        """Register (or update) a partner: its requests are accepted from now on."""
        from archive.node import ArchiveNode
        from federation.partners import add_partner

        node = ArchiveNode.open(settings())
        try:
            with node.session() as session:
                partner = add_partner(name, url, public_key, parse_size(quota), session=session)
                out.print(
                    f"partner {partner.name} at {partner.url}, quota {partner.quota_bytes:,} B"
                )
        finally:
            node.close()

    @partner_app.command("list")
    def partner_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
        """Partners and what we hold for each."""
        from archive.node import ArchiveNode
        from federation.partners import list_partners

        node = ArchiveNode.open(settings())
        try:
            with node.session() as session:
                rows = [
                    {
                        "name": p.name,
                        "url": p.url,
                        "public_key": p.public_key,
                        "quota_bytes": p.quota_bytes,
                        "used_bytes": used,
                        "objects": count,
                    }
                    for p, used, count in list_partners(session=session)
                ]
        finally:
            node.close()
        if as_json:
            out.print(json.dumps(rows))
            return
        for row in rows:
            out.print(
                f"{row['name']}  {row['url']}  {row['used_bytes']:,}/{row['quota_bytes']:,} B "
                f"in {row['objects']} objects"
            )

    @partner_app.command("key")
    def partner_key(path: Path) -> None:
        """Make a collection key file (32 random bytes, mode 0600) for encrypted partner
        tiers; name it as the tier's collection_key_file and back it up."""
        from federation.sealing import make_collection_key

        made = make_collection_key(path)
        out.print(f"{'made' if made else 'kept the existing'} collection key {path}")
