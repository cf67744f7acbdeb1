"""Audits of federation copies (issue 5 follow-up): manifest copies on partner tiers
(``manifestcopy``, filled from the replication events that used to remember them), and
the audit state of what we hold for partners (``heldobject``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 18:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "manifestcopy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("tier_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("last_verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_audit_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tier_id"], ["tier.id"], name=op.f("fk_manifestcopy_tier_id_tier")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["version.id"], name=op.f("fk_manifestcopy_version_id_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manifestcopy")),
        sa.UniqueConstraint(
            "version_id", "tier_id", name=op.f("uq_manifestcopy_version_id_tier_id")
        ),
    )
    with op.batch_alter_table("manifestcopy", schema=None) as batch_op:
        batch_op.create_index(
            "ix_manifestcopy_state_next_audit", ["state", "next_audit_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_manifestcopy_tier_id"), ["tier_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_manifestcopy_version_id"), ["version_id"], unique=False
        )

    with op.batch_alter_table("heldobject", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("state", sa.String(length=20), server_default="present", nullable=False)
        )
        batch_op.add_column(
            sa.Column("last_verified_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("next_audit_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_heldobject_state_next_audit", ["state", "next_audit_at"], unique=False
        )

    # Manifests already sent to a partner were remembered by their replication events.
    op.execute(
        sa.text(
            "INSERT INTO manifestcopy "
            "(version_id, tier_id, key, state, failures, created_at, updated_at) "
            "SELECT DISTINCT v.id, t.id, v.manifest_key, 'present', 0, "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP "
            "FROM event e JOIN version v ON v.manifest_key = e.object_id "
            "JOIN tier t ON t.name = e.tier "
            "WHERE e.type = 'replication' AND e.object_type = 'manifest' "
            "AND e.outcome = 'success'"
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("heldobject", schema=None) as batch_op:
        batch_op.drop_index("ix_heldobject_state_next_audit")
        batch_op.drop_column("next_audit_at")
        batch_op.drop_column("last_verified_at")
        batch_op.drop_column("state")

    with op.batch_alter_table("manifestcopy", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_manifestcopy_version_id"))
        batch_op.drop_index(batch_op.f("ix_manifestcopy_tier_id"))
        batch_op.drop_index("ix_manifestcopy_state_next_audit")

    op.drop_table("manifestcopy")
