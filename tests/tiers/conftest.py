"""The S3 tier tests run against every real S3 server we start: SeaweedFS and Ceph RGW.

``s3_server`` is parametrised here (outside ``tests/tiers`` it is SeaweedFS alone).
What a server genuinely lacks is listed in :data:`KNOWN_GAPS`; a test that needs such a
feature carries ``@pytest.mark.s3_feature(name)`` and is a strict expected failure on
that server: it must fail there, in the stated way, with the reason in the summary;
a server that gains the feature turns the run red until the gap is removed.

The conformance suites live in ``tiers.testing`` and ``tiers.testing_cold``, outside
the test tree: ask pytest to rewrite their asserts so failures show the compared values.
"""

from __future__ import annotations

import pytest

from tests.support.ceph_rgw import SWITCH, ceph_rgw_enabled
from tests.support.s3server import S3Server
from tiers.errors import TierConfigError

pytest.register_assert_rewrite("tiers.testing", "tiers.testing_cold")

CEPH = "Ceph RGW 16.2 (Pacific, Debian 12)"
NO_RAISE = pytest.fail.Exception
"""What ``pytest.raises`` raises when nothing was raised."""
KNOWN_GAPS: dict[tuple[str, str], tuple[str, type[BaseException]]] = {
    # (server, feature): (why the server lacks it, how the test fails there)
    ("ceph-rgw", "checksum-sha256"): (
        f"{CEPH} ignores x-amz-checksum-sha256: it neither verifies nor stores it, and "
        "HeadObject returns no ChecksumSHA256 (no S3 additional checksums in this release)",
        AssertionError,
    ),
    ("ceph-rgw", "copy-if-none-match"): (
        f"{CEPH} ignores If-None-Match on CopyObject and CompleteMultipartUpload and "
        "replaces the target; the tier finds this out and checks with HeadObject first",
        AssertionError,
    ),
    ("ceph-rgw", "glacier-restore"): (
        f"{CEPH} has no GLACIER class and answers RestoreObject with NotImplemented: "
        "the tier refuses the write as a TierConfigError naming the class",
        TierConfigError,
    ),
    ("seaweedfs", "glacier-restore"): (
        "SeaweedFS keeps GLACIER as a label only: it serves reads at once, with no "
        "InvalidObjectState and no restore",
        NO_RAISE,
    ),
    ("seaweedfs", "copy-class-check"): (
        "SeaweedFS accepts any storage class name on CopyObject (it refuses an unknown "
        "one on PutObject), so a misspelt class is stored as given",
        NO_RAISE,
    ),
}

SERVERS = [
    pytest.param("seaweedfs", id="seaweedfs"),
    pytest.param(
        "ceph-rgw",
        id="ceph-rgw",
        marks=[] if ceph_rgw_enabled() else [pytest.mark.skip(reason=f"{SWITCH}=0")],
    ),
]


@pytest.fixture(scope="session", params=SERVERS)
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each real S3 server in turn (session-wide, so each starts once)."""
    name = "seaweedfs_server" if request.param == "seaweedfs" else "ceph_rgw_server"
    server: S3Server = request.getfixturevalue(name)
    return server


@pytest.fixture(autouse=True)
def _known_gaps(request: pytest.FixtureRequest) -> None:
    """Mark a test of a feature the current server lacks as a strict expected failure."""
    marker = request.node.get_closest_marker("s3_feature")
    if marker is None or "s3_server" not in request.fixturenames:
        return
    server: S3Server = request.getfixturevalue("s3_server")
    for feature in marker.args:
        gap = KNOWN_GAPS.get((server.name, feature))
        if gap:
            reason, raises = gap
            request.applymarker(pytest.mark.xfail(reason=reason, raises=raises, strict=True))
