"""the test split: an experiment that scores its held-out test split ("split": "test" or "all") keeps that
split as a datasets row of its own, and each model the codes it gives those samples. Earlier experiments
studied their training split only: both columns stay empty.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiments", sa.Column("test_dataset_id", sa.Integer(), nullable=True))
    op.add_column("models", sa.Column("test_codes", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("test_codes")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("test_dataset_id")
