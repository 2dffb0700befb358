"""rank measures: experiments that succeeded before trustworthiness, continuity, MRRE, LCMC and the AUC of
R_NX were stored are marked for a backfill (metrics_all_k false), which the workers' sweeper sends and
`aeknn metrics --backfill` runs. No column changes; their other metrics are served as before meanwhile.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE experiments SET metrics_all_k = false WHERE status = 'succeeded' AND NOT EXISTS "
               "(SELECT 1 FROM metric_values m WHERE m.experiment_id = experiments.id AND m.metric = 'auc_rnx')")


def downgrade() -> None:
    pass  # the measures stay stored; a backfill that has not run yet is harmless to leave marked
