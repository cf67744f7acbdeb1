"""The Library of Congress BagIt conformance suite, every bag through ``import_bag``.

Each folder under ``v*/{valid,invalid,warning,linux-only,windows-only}/`` is one bag
(see ../shared/suites/README.md): valid bags must be imported; invalid and
linux-only bags refused with a reason; warning bags imported with a warning shown;
windows-only bags are skipped on Linux. None may crash: only the refusal the
importer documents (``InvalidBag``) is an acceptable failure.

Three v0.97 warning bags cannot be complete on a case-sensitive file system checked
out by git (``special-system-files``: its ``.DS_Store`` is not in the repository;
``duplicate-file-with-different-case``: ``HELLO.txt`` and ``hello.txt`` are one
file only on a case-insensitive disk; ``same-filename-listed-twice-with-different-
normalization``: two normalisations of one name, one file on disk). Refusing them
as incomplete is right; accepting them would be too.

The table of outcomes is written at the end of the module's run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from archive.bag_import import import_bag
from archive.bags import InvalidBag
from archive.config import Settings
from archive.datasets import get_dataset, get_version
from archive.node import ArchiveNode
from tests.support.archive_state import snapshot

SUITE = Path(__file__).resolve().parents[2].parent / "shared" / "suites" / "bagit-conformance-suite"
MAY_BE_INCOMPLETE = {
    "v0.97/warning/special-system-files",
    "v0.97/warning/duplicate-file-with-different-case",
    "v0.97/warning/same-filename-listed-twice-with-different-normalization",
}
BAGS = sorted(p for p in SUITE.glob("v*/*/*") if p.is_dir())
TABLE: list[tuple[str, str, str, str]] = []


def test_the_suite_is_there() -> None:
    assert len(BAGS) >= 60, f"expected the BagIt conformance suite at {SUITE}"


@pytest.fixture(scope="module")
def suite_node(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ArchiveNode]:
    node = ArchiveNode.open(Settings(data_dir=tmp_path_factory.mktemp("conformance") / "data"))
    yield node
    node.close()
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if reporter is None or capture is None or not TABLE:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(
            "BagIt conformance suite: bag | expected | outcome | reason or warnings"
        )
        for row in TABLE:
            reporter.write_line(" | ".join(row))


@pytest.mark.parametrize("bag", BAGS, ids=[str(b.relative_to(SUITE)) for b in BAGS])
def test_conformance_bag(suite_node: ArchiveNode, bag: Path) -> None:
    name = str(bag.relative_to(SUITE))
    expected = bag.parent.name
    if expected == "windows-only":
        TABLE.append((name, expected, "skipped", "Windows paths mean nothing on Linux"))
        pytest.skip("windows-only bag: its paths only mean something on Windows")
    dataset = f"bag{BAGS.index(bag):02d}"
    before = snapshot(suite_node)
    try:
        report = import_bag(suite_node, bag, "suite", dataset)
    except InvalidBag as refused:
        reason = refused.reasons[0] if refused.reasons else ""
        TABLE.append((name, expected, "refused", reason[:160]))
        assert snapshot(suite_node) == before, "a refused bag must leave nothing behind"
        assert refused.reasons, "a refusal must say why"
        assert expected in ("invalid", "linux-only") or name in MAY_BE_INCOMPLETE, reason
        return
    TABLE.append((name, expected, "accepted", "; ".join(report.warnings)[:160]))
    assert expected in ("valid", "warning"), f"{name} must be refused"
    if expected == "warning":
        assert report.warnings, "a warning bag must be accepted with a warning shown"
    with suite_node.session() as session:
        version = get_version(get_dataset("suite", dataset, session=session), None, session=session)
        assert version.file_count == report.files > 0
