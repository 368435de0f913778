"""appeals.order_event_at: when the last order event applied to the appeal's status was raised, so
that order events are ordered among themselves and not against intake's own times

Revision ID: 0007
Revises: 0006
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("appeals") as batch:
        batch.add_column(sa.Column("order_event_at", sa.DateTime(timezone=True), nullable=True))
    # an appeal past "received" had its status set by an order event at updated_at (or, once rated,
    # by the citizen after the last one): the nearest time we know
    op.execute("UPDATE appeals SET order_event_at = updated_at WHERE status <> 'received'")


def downgrade() -> None:
    with op.batch_alter_table("appeals") as batch:
        batch.drop_column("order_event_at")
