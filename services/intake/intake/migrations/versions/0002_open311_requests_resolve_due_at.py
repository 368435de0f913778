"""Open311 requests; appeals.resolve_due_at

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 23:20:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('appeals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resolve_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_appeals_received_at'), ['received_at'], unique=False)
    op.create_table(
        'open311_requests',
        sa.Column('case_no', sa.String(length=32), nullable=False),
        sa.Column('token', sa.String(length=36), nullable=False),
        sa.Column('service_code', sa.String(length=64), nullable=False),
        sa.Column('service_name', sa.String(length=100), nullable=False),
        sa.Column('service_notice', sa.String(length=500), nullable=True),
        sa.Column('client', sa.String(length=64), nullable=False),
        sa.Column('address_id', sa.String(length=12), nullable=True),
        sa.Column('located_by', sa.String(length=24), nullable=False),
        sa.ForeignKeyConstraint(['case_no'], ['appeals.case_no'], ),
        sa.PrimaryKeyConstraint('case_no'),
        sa.UniqueConstraint('token'),
    )
    with op.batch_alter_table('open311_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_open311_requests_service_code'), ['service_code'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('open311_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_open311_requests_service_code'))
    op.drop_table('open311_requests')
    with op.batch_alter_table('appeals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_appeals_received_at'))
        batch_op.drop_column('resolve_due_at')
