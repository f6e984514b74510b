"""Couplings are indexed by their two unique keys only.

Every lookup goes through one of them; the two other indexes made recording a chunk of new couplings
twice as slow (each is written at a random place per coupling).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("coupling") as batch_op:
        batch_op.drop_index("ix_coupling_mapping_bc_record")
        batch_op.drop_index("ix_coupling_dataverse_id")


def downgrade() -> None:
    with op.batch_alter_table("coupling") as batch_op:
        batch_op.create_index("ix_coupling_dataverse_id", ["dataverse_id"])
        batch_op.create_index("ix_coupling_mapping_bc_record", ["bc_entity", "dataverse_table", "bc_id"])
