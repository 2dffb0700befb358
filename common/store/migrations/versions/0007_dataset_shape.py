"""your data: a data set stores one sample's shape ([H, W], [H, W, C] or [D]), so that images of any size
and plain vectors are shown as what they are. Rows stored before (MNIST, Fashion-MNIST) keep none: 28 x 28.

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


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("shape")
