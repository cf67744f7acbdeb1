"""``permafrost init`` makes the node key; ``node info``, ``partner add|list|key``; ``status``."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from archive.identity import load_node_key, public_key_text
from tests.archive.conftest import Cli
from tests.federation.conftest import PairFactory
from tests.federation.test_two_nodes import audit, replicated_pair


def test_init_makes_a_private_node_key_and_node_info_prints_it(cli: Cli) -> None:
    first = cli("init")
    key_file = cli.cwd / "permafrost-data" / "node.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = public_key_text(load_node_key(key_file))
    assert public in first.stdout + first.stderr
    assert cli.json("node", "info") == {"url": "http://127.0.0.1:8000", "public_key": public}
    cli("init")  # again: the key is kept, never replaced
    assert public_key_text(load_node_key(key_file)) == public


def test_partners_are_added_listed_and_refused_when_wrong(cli: Cli) -> None:
    cli("init")
    other = Cli(cli.cwd.parent / "other", cli.env)
    other.cwd.mkdir()
    other("init")
    key = json.loads(other("node", "info", "--json").stdout)["public_key"]
    cli("partner", "add", "uni-b", "https://b.example.org", "--public-key", key, "--quota", "2G")
    assert cli.json("partner", "list") == [
        {
            "name": "uni-b",
            "url": "https://b.example.org",
            "public_key": key,
            "quota_bytes": 2 * 1024**3,
            "used_bytes": 0,
            "objects": 0,
        }
    ]
    bad = cli("partner", "add", "uni-c", "https://c.example.org", "--public-key", "x" * 43, code=2)
    assert "not a raw Ed25519 key" in bad.stdout + bad.stderr
    taken = cli("partner", "add", "uni-d", "https://d.example", "--public-key", key, code=2)
    assert "already has this public key" in taken.stdout + taken.stderr
    bad_name = cli("partner", "add", "Uni B", "https://b.example", "--public-key", key, code=2)
    assert "partner name" in bad_name.stdout + bad_name.stderr
    assert len(cli.json("partner", "list")) == 1  # nothing else was added


def test_partner_key_makes_a_private_collection_key(cli: Cli) -> None:
    cli("partner", "key", "keys/collection.key")
    path = cli.cwd / "keys" / "collection.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    before = path.read_bytes()
    cli("partner", "key", "keys/collection.key")
    assert path.read_bytes() == before  # never replaced: that would orphan sealed copies


def test_status_shows_since_when_a_partner_is_unreachable(
    make_pair: PairFactory, tmp_path: Path, cli: Cli
) -> None:
    pair = replicated_pair(make_pair(), tmp_path / "src")
    pair.partner.stop()
    assert audit(pair).unreachable > 0
    config = cli.cwd / "permafrost.toml"
    settings = pair.home.settings
    config.write_text(
        f'data_dir = "{settings.data_dir}"\n'
        + (f'database_url = "{settings.database_url}"\n')
        + f'[tiers.hot]\nkind = "local"\npath = "{pair.home.hot_path}"\n'
        + f'[tiers.partner]\nkind = "federation"\nurl = "{pair.partner.url}"\n'
    )
    shown = cli("status").stdout
    assert "partner: unreachable since 20" in shown
    data = cli.json("status")
    assert isinstance(data, dict) and set(data["unreachable"]) == {"partner"}
