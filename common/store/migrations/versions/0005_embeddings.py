"""embeddings: a user's codes scored beside the study's models (an uploaded space), and the experiment's
revision (bumped when a space is added, so cached answers about its spaces are revalidated)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models') as t:
        t.add_column(sa.Column('source', sa.String(length=16), nullable=True))
        t.add_column(sa.Column('code_dim', sa.Integer(), nullable=True))
        t.add_column(sa.Column('created_at', sa.DateTime(), nullable=True))
        t.add_column(sa.Column('state', sa.String(length=16), nullable=True))
        t.add_column(sa.Column('error', sa.Text(), nullable=True))
    with op.batch_alter_table('experiments') as t:
        t.add_column(sa.Column('revision', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('experiments') as t:
        t.drop_column('revision')
    with op.batch_alter_table('models') as t:
        for c in ('error', 'state', 'created_at', 'code_dim', 'source'):
            t.drop_column(c)
