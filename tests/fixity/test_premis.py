"""The PREMIS 3 export validates against the PREMIS 3.0 schema and tells the history."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import blake3
from lxml import etree

from archive.datasets import parse_ref
from archive.packs import blob_key
from archive.premis import PREMIS_NS, write_premis
from fixity.audit import AuditOptions, Auditor
from fixity.checks import Level
from fixity.repair import Repairer
from tests.archive.conftest import NodeFactory
from tests.fixity.faults import Raw
from tests.fixity.test_faults import build

NS = {"premis": PREMIS_NS}


def premis_schema() -> etree.XMLSchema:
    """The Library of Congress PREMIS 3.0 schema (18 January 2016), as shipped in the
    eulxml package of the test extra (the LoC site is not reachable offline)."""
    spec = importlib.util.find_spec("eulxml")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "schema_data" / "premis.xsd"
    schema_doc = etree.parse(str(path))
    assert "VERSION 3.0" in path.read_text(encoding="utf-8")[:2000]
    assert schema_doc.getroot().get("targetNamespace") == PREMIS_NS
    return etree.XMLSchema(schema_doc)


def test_premis_export_is_valid_premis_3_with_fixity_and_events(
    make_node: NodeFactory, tmp_path: Path
) -> None:
    node, files = build(make_node, tmp_path)
    b3 = blake3.blake3(files["big/a.bin"]).hexdigest()
    if node.settings.tiers["hot"].kind == "local":  # a repair to record as well
        Raw(node, "hot", None).flip_bit(blob_key(b3))
    Auditor(node, owner="t").audit_pass(AuditOptions(due_only=False, level=Level.DEEP))
    Repairer(node, owner="t").repair_pass()

    out = tmp_path / "premis.xml"
    with node.session() as session:
        count = write_premis(parse_ref("lab/fix"), out, session=session)
    document = etree.parse(str(out))
    schema = premis_schema()
    assert schema.validate(document), schema.error_log

    files_ = document.findall(
        "premis:object[@{http://www.w3.org/2001/XMLSchema-instance}type='premis:file']", NS
    )
    assert len(files_) == len(set(files.values()))
    digests = {
        f.findtext("premis:objectIdentifier/premis:objectIdentifierValue", namespaces=NS)
        for f in files_
    }
    assert b3 in digests
    sha = document.findall(".//premis:fixity[premis:messageDigestAlgorithm='SHA-256']", NS)
    assert len(sha) == len(files_)
    types = [e.text for e in document.findall("premis:event/premis:eventType", NS)]
    assert len(types) == count
    assert {"ingestion", "message digest calculation", "replication", "fixity check"} <= set(types)
    agents = {a.text for a in document.findall("premis:agent/premis:agentName", NS)}
    assert {"permafrost/ingest", "permafrost/fixity"} <= agents


def test_export_premis_from_the_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMAFROST_")}
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "a.txt").write_bytes(b"alpha\n" * 1000)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "archive.cli", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    assert cli("ingest", "src", "-C", "lab", "-D", "p").returncode == 0
    done = cli("export", "lab/p", "--premis", "out.xml")
    assert done.returncode == 0, done.stderr
    assert premis_schema().validate(etree.parse(str(work / "out.xml")))
    assert cli("export", "lab/p").returncode == 2  # neither --bag nor --premis
