"""Archive nodes on real parts (local folders, SeaweedFS S3, SQLite, PostgreSQL)."""

from tests.archive.conftest import local_node, make_node, node

__all__ = ["local_node", "make_node", "node"]
