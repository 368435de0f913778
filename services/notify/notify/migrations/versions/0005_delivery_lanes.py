"""deliveries.lane: deliveries are kept in order per recipient and channel (a lane), no longer per
provider, so that different recipients are sent to in parallel

Revision ID: 0005
Revises: 0004
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lane", sa.String(length=160), nullable=True))
        batch_op.create_index("ix_deliveries_lane", ["lane", "status", "occurred_at"], unique=False)
        batch_op.create_index("ix_deliveries_lane_claimed", ["lane", "claimed_until"], unique=False)
    # deliveries made before: a citizen's lane by the citizen notify knows of (else the case)
    op.execute("UPDATE deliveries SET lane = COALESCE("
               "(SELECT 'citizen:' || c.citizen_ref FROM case_citizens c WHERE c.case_no = deliveries.case_no), "
               "'citizen:' || COALESCE(case_no, event_id)) || '|' || channel WHERE recipient = 'citizen'")
    op.execute("UPDATE deliveries SET lane = recipient || '|' || channel WHERE recipient <> 'citizen'")


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_lane_claimed")
        batch_op.drop_index("ix_deliveries_lane")
        batch_op.drop_column("lane")
