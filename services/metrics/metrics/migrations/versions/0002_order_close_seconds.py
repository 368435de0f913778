"""orders.close_seconds: dispatch → closed (结案), for the time-to-close histogram

Existing rows get it from ``metrics rebuild`` (or the RPC ``metrics.rebuild()``), which refolds
every fact from the event log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('close_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('close_seconds')
