"""Fixtures shared by every test package; each lives in tests/support/."""

pytest_plugins = [
    "tests.support.s3server",
    "tests.support.ceph_rgw",
    "tests.support.moto_server",
    "tests.support.database",
]
