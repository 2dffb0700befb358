"""your data: a data set stores one sample's shape ([H, W], [H, W, C] or [D]), so that images of any size
and plain vectors are shown as what they are; its values' type (uint8, or float32/float64 data); whether
it came with labels; an upload's SHA-256 (the same bytes are one data set) and time. Rows stored before
(MNIST, Fashion-MNIST) keep none: 28 x 28 bytes, labelled, not an upload.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("shape", sa.JSON(), nullable=True))
    op.add_column("datasets", sa.Column("dtype", sa.String(length=8), nullable=True))
    op.add_column("datasets", sa.Column("labelled", sa.Boolean(), nullable=True))
    op.add_column("datasets", sa.Column("sha256", sa.String(length=64), nullable=True))
    op.add_column("datasets", sa.Column("created_at", sa.DateTime(), nullable=True))
    op.create_index("ix_datasets_sha256", "datasets", ["sha256"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_datasets_sha256", "datasets")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("created_at")
        batch.drop_column("sha256")
        batch.drop_column("dtype")
        batch.drop_column("labelled")
        batch.drop_column("shape")
