"""Index job errors by record: the "same failure twice" test and the errors page look them up so.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_error") as batch_op:
        batch_op.create_index("ix_job_error_job_bc_record", ["job_id", "bc_id"])
        batch_op.create_index("ix_job_error_job_dataverse_row", ["job_id", "dataverse_id"])


def downgrade() -> None:
    with op.batch_alter_table("job_error") as batch_op:
        batch_op.drop_index("ix_job_error_job_dataverse_row")
        batch_op.drop_index("ix_job_error_job_bc_record")
