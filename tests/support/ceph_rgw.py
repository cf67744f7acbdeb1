"""A second real S3 endpoint for tests: Ceph's RADOS Gateway, started once per session.

``scripts/objectstore/ceph-rgw`` installs Debian's ``ceph-mon``, ``ceph-osd`` and
``radosgw`` when they are missing and runs a one-node cluster (a monitor, one
BlueStore OSD on a sparse file, radosgw on 127.0.0.1) in a temporary folder; this
fixture calls it to start and stop. ``tests/tiers`` runs the S3 tier tests against it
beside SeaweedFS.

``PERMAFROST_TEST_CEPH_RGW=0`` leaves it out (the tier tests then run on SeaweedFS
only, and the summary says so); anything else, or unset, runs it. A cluster that does
not come up fails the tests that need it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3server import S3Server

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "objectstore" / "ceph-rgw"
START_TIMEOUT = 300.0
"""Installing the Debian packages on a fresh machine is most of it."""
STOP_TIMEOUT = 60.0
SWITCH = "PERMAFROST_TEST_CEPH_RGW"


def ceph_rgw_enabled() -> bool:
    """False when ``PERMAFROST_TEST_CEPH_RGW`` is ``0``: no Ceph in this run."""
    return os.environ.get(SWITCH, "1") != "0"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines, as the script writes them."""
    pairs = (shlex.split(line)[0].split("=", 1) for line in path.read_text().splitlines() if line)
    return {key: value for key, value in pairs}


def _run(action: str, workdir: Path, timeout: float) -> None:
    result = subprocess.run(
        [str(SCRIPT), action, str(workdir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{SCRIPT.name} {action} {workdir} exited with {result.returncode}:\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def ceph_rgw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Ceph RGW on 127.0.0.1 with a user of its own, for the whole session."""
    workdir = tmp_path_factory.mktemp("ceph-rgw")
    try:
        _run("start", workdir, START_TIMEOUT)
        env = read_env_file(workdir / "s3.env")
        yield S3Server(
            endpoint_url=env["S3_ENDPOINT_URL"],
            access_key_id=env["S3_ACCESS_KEY_ID"],
            secret_access_key=env["S3_SECRET_ACCESS_KEY"],
            region_name=env["S3_REGION"],
            name="ceph-rgw",
        )
    finally:
        _run("stop", workdir, STOP_TIMEOUT)
        shutil.rmtree(workdir / "osd", ignore_errors=True)  # the OSD's sparse block file
