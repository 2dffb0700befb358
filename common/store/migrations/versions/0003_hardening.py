"""every k stored, worker heartbeats, rendered plots kept

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (SQLite does it in place): a batch copy of `experiments` would drop the table
    # its models, metrics and tables point to
    op.add_column('experiments', sa.Column('metrics_all_k', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column('work_items', sa.Column('heartbeat_at', sa.DateTime(), nullable=True))
    op.create_table('plots',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('model', sa.String(length=32), nullable=False),
    sa.Column('png', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', 'name', 'model')
    )


def downgrade() -> None:
    op.drop_table('plots')
    with op.batch_alter_table('work_items') as batch:
        batch.drop_column('heartbeat_at')
    with op.batch_alter_table('experiments') as batch:
        batch.drop_column('metrics_all_k')
