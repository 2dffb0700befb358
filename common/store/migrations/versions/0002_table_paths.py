"""how each neighbour table and chunk was computed: its path, compute seconds and work

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:  # plain ADD COLUMN: SQLite does it in place, no table is copied
    op.add_column('neighbor_tables', sa.Column('path', sa.String(length=64), nullable=True))
    op.add_column('neighbor_tables', sa.Column('compute_seconds', sa.Float(), nullable=True))
    op.add_column('neighbor_tables', sa.Column('work', sa.Float(), nullable=True))
    op.add_column('neighbor_chunks', sa.Column('path', sa.String(length=32), nullable=True))
    op.add_column('neighbor_chunks', sa.Column('seconds', sa.Float(), nullable=True))
    op.add_column('neighbor_chunks', sa.Column('work', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('neighbor_chunks') as batch:
        batch.drop_column('work')
        batch.drop_column('seconds')
        batch.drop_column('path')
    with op.batch_alter_table('neighbor_tables') as batch:
        batch.drop_column('work')
        batch.drop_column('compute_seconds')
        batch.drop_column('path')
