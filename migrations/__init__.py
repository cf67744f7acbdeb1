"""Alembic environment and revisions of the catalog; run them via ``archive.catalog.migrate``."""
