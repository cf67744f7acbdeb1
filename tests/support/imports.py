"""What a process has loaded of the catalog: a start-up that must not pay for SQLAlchemy,
SQLModel and the catalog models checks that none of these is in ``sys.modules``."""

CATALOG_MODULES = ("sqlalchemy", "sqlmodel", "archive.catalog")
