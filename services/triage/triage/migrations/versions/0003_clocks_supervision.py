"""clocks (限时办结) and supervision (督查督办): the time-limit policy on orders, order clocks, fired
markers, extension and suspension requests, supervision tickets and urges

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 10:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('work_orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('time_policy', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('time_policy_version', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('time_limits', sa.String(length=400), nullable=True))
        batch_op.add_column(sa.Column('first_contact_due_at', TZ, nullable=True))
    op.create_table(
        'order_clocks',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('order_no', sa.String(length=40), nullable=False),
        sa.Column('case_no', sa.String(length=32), nullable=False),
        sa.Column('clock', sa.String(length=16), nullable=False),
        sa.Column('round', sa.Integer(), nullable=False),
        sa.Column('holder_unit_code', sa.String(length=40), nullable=False),
        sa.Column('level', sa.String(length=16), nullable=False),
        sa.Column('town_code', sa.String(length=12), nullable=False),
        sa.Column('category', sa.String(length=40), nullable=False),
        sa.Column('policy', sa.String(length=40), nullable=False),
        sa.Column('policy_version', sa.String(length=40), nullable=False),
        sa.Column('limit', sa.String(length=40), nullable=False),
        sa.Column('started_at', TZ, nullable=False),
        sa.Column('due_at', TZ, nullable=False),
        sa.Column('next_check_at', TZ, nullable=True),
        sa.Column('paused_at', TZ, nullable=True),
        sa.Column('resumes_at', TZ, nullable=True),
        sa.Column('paused_seconds', sa.Float(), nullable=False),
        sa.Column('extended_days', sa.Float(), nullable=False),
        sa.Column('stopped_at', TZ, nullable=True),
        sa.Column('outcome', sa.String(length=16), nullable=True),
        sa.Column('overdue_at', TZ, nullable=True),
        sa.Column('escalated_to', sa.String(length=40), nullable=True),
    )
    op.create_index('ix_order_clocks_order_no', 'order_clocks', ['order_no'])
    op.create_index('ix_order_clocks_holder_unit_code', 'order_clocks', ['holder_unit_code'])
    op.create_index('ix_order_clocks_town_code', 'order_clocks', ['town_code'])
    op.create_index('ix_order_clocks_next_check_at', 'order_clocks', ['next_check_at'])
    op.create_index('uq_order_clocks_order_clock_round', 'order_clocks', ['order_no', 'clock', 'round'],
                    unique=True)
    op.create_table(
        'clock_fires',
        sa.Column('clock_id', sa.Integer(), sa.ForeignKey('order_clocks.id'), primary_key=True),
        sa.Column('checkpoint', sa.String(length=16), primary_key=True),
        sa.Column('fired_at', TZ, nullable=False),
    )
    op.create_table(
        'clock_requests',
        sa.Column('request_id', sa.String(length=40), primary_key=True),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('order_no', sa.String(length=40), nullable=False),
        sa.Column('clock_id', sa.Integer(), nullable=True),
        sa.Column('unit_code', sa.String(length=40), nullable=False),
        sa.Column('town_code', sa.String(length=12), nullable=False),
        sa.Column('days', sa.Float(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('requested_at', TZ, nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('supervisor', sa.String(length=64), nullable=True),
        sa.Column('note', sa.Text(), nullable=True),
        sa.Column('decided_at', TZ, nullable=True),
    )
    op.create_index('ix_clock_requests_order_no', 'clock_requests', ['order_no'])
    op.create_index('ix_clock_requests_status', 'clock_requests', ['status'])
    op.create_table(
        'supervision_tickets',
        sa.Column('ticket_no', sa.String(length=40), primary_key=True),
        sa.Column('order_no', sa.String(length=40), nullable=False),
        sa.Column('clock_id', sa.Integer(), nullable=False, unique=True),
        sa.Column('clock', sa.String(length=16), nullable=False),
        sa.Column('unit_code', sa.String(length=40), nullable=False),
        sa.Column('town_code', sa.String(length=12), nullable=False),
        sa.Column('level', sa.String(length=16), nullable=False),
        sa.Column('due_at', TZ, nullable=False),
        sa.Column('opened_at', TZ, nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('closed_at', TZ, nullable=True),
    )
    op.create_index('ix_supervision_tickets_order_no', 'supervision_tickets', ['order_no'])
    op.create_index('ix_supervision_tickets_unit_code', 'supervision_tickets', ['unit_code'])
    op.create_index('ix_supervision_tickets_town_code', 'supervision_tickets', ['town_code'])
    op.create_table(
        'urges',
        sa.Column('urge_id', sa.String(length=40), primary_key=True),
        sa.Column('order_no', sa.String(length=40), nullable=False),
        sa.Column('ticket_no', sa.String(length=40), nullable=True),
        sa.Column('unit_code', sa.String(length=40), nullable=False),
        sa.Column('town_code', sa.String(length=12), nullable=False),
        sa.Column('supervisor', sa.String(length=64), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('issued_at', TZ, nullable=False),
        sa.Column('outcome', sa.String(length=24), nullable=True),
        sa.Column('outcome_note', sa.Text(), nullable=True),
        sa.Column('outcome_at', TZ, nullable=True),
    )
    op.create_index('ix_urges_order_no', 'urges', ['order_no'])


def downgrade() -> None:
    for table in ('urges', 'supervision_tickets', 'clock_requests', 'clock_fires', 'order_clocks'):
        op.drop_table(table)
    with op.batch_alter_table('work_orders', schema=None) as batch_op:
        for column in ('first_contact_due_at', 'time_limits', 'time_policy_version', 'time_policy'):
            batch_op.drop_column(column)
