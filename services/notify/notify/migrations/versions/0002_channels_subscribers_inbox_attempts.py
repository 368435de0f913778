"""channels: staff kinds and phones, subscribers, citizens' preferences, delivery queue order,
fallback and attempts, providers' health, inbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('unit_contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='unit'))
        batch_op.add_column(sa.Column('phone', sa.String(length=20), nullable=True))
        batch_op.create_index(batch_op.f('ix_unit_contacts_kind'), ['kind'], unique=False)

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('provider', sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column('fallback', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('fallback_of', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('urgent', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('failures', sa.Integer(), nullable=False, server_default='0'))
        batch_op.create_index('ix_deliveries_queue', ['provider', 'status', 'occurred_at'], unique=False)
    # deliveries made before this revision: queued by when they were made, on their channel's provider
    op.execute("UPDATE deliveries SET occurred_at = created_at, provider = channel "
               "WHERE channel <> 'webhook'")
    op.execute("UPDATE deliveries SET occurred_at = created_at, provider = 'webhook:' || recipient "
               "WHERE channel = 'webhook'")

    op.create_table('delivery_attempts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('delivery_id', sa.String(length=36), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('error', sa.String(length=200), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('delivery_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_attempts_delivery_id'), ['delivery_id'], unique=False)

    op.create_table('providers',
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('down_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(length=200), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('subscribers',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('url', sa.String(length=500), nullable=False),
    sa.Column('secret', sa.String(length=128), nullable=False),
    sa.Column('event_types', sa.JSON(), nullable=False),
    sa.Column('unit_code', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('case_citizens',
    sa.Column('case_no', sa.String(length=32), nullable=False),
    sa.Column('citizen_ref', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('case_no')
    )
    with op.batch_alter_table('case_citizens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_citizens_citizen_ref'), ['citizen_ref'], unique=False)
    op.create_table('citizen_preferences',
    sa.Column('citizen_ref', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=True),
    sa.Column('quiet_start', sa.String(length=5), nullable=True),
    sa.Column('quiet_end', sa.String(length=5), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('citizen_ref')
    )
    op.create_table('inbox_messages',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('owner_code', sa.String(length=64), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('case_no', sa.String(length=32), nullable=True),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('urgent', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('read_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('inbox_messages', schema=None) as batch_op:
        batch_op.create_index('ix_inbox_owner_created', ['owner_code', 'created_at'], unique=False)


def downgrade() -> None:
    op.drop_table('inbox_messages')
    op.drop_table('citizen_preferences')
    op.drop_table('case_citizens')
    op.drop_table('subscribers')
    op.drop_table('providers')
    op.drop_table('delivery_attempts')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_queue')
        for column in ('failures', 'urgent', 'fallback_of', 'fallback', 'provider', 'occurred_at'):
            batch_op.drop_column(column)
    with op.batch_alter_table('unit_contacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_unit_contacts_kind'))
        batch_op.drop_column('phone')
        batch_op.drop_column('kind')
