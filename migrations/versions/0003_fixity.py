"""Fixity audits: audit bookkeeping on replicas and on version manifests (issue 4).

Revision ID: 0003_fixity
Revises: 0002
Create Date: 2026-11-27 12:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_fixity"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("replica", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("audit_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("last_audit_level", sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column("last_read_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("provider_checksum", sa.String(length=200), nullable=True))
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "manifest_state", sa.String(length=20), nullable=False, server_default="present"
            )
        )
        batch_op.add_column(
            sa.Column("manifest_verified_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("manifest_next_audit_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("version", schema=None) as batch_op:
        batch_op.drop_column("manifest_next_audit_at")
        batch_op.drop_column("manifest_verified_at")
        batch_op.drop_column("manifest_state")
    with op.batch_alter_table("replica", schema=None) as batch_op:
        batch_op.drop_column("provider_checksum")
        batch_op.drop_column("last_read_at")
        batch_op.drop_column("last_audit_level")
        batch_op.drop_column("audit_count")
