"""Index couplings by mapping and BC record: a chunk of a synchronization looks its couplings up so.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("coupling") as batch_op:
        batch_op.create_index("ix_coupling_mapping_bc_record", ["bc_entity", "dataverse_table", "bc_id"])


def downgrade() -> None:
    with op.batch_alter_table("coupling") as batch_op:
        batch_op.drop_index("ix_coupling_mapping_bc_record")
