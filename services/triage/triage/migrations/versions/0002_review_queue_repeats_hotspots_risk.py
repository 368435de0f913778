"""review queue, dispatcher decisions, repeats, hot spots, cross-level petitions, risk flags, joint
enforcement on orders

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:00:00

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
        batch_op.add_column(sa.Column('reception_level', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('repeat_of', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('repeat_unit_code', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('cross_level', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('urgency', sa.String(length=16), nullable=False, server_default='normal'))
        batch_op.add_column(sa.Column('risk_reasons', sa.Text(), nullable=False, server_default='[]'))
        # appeals stored before this revision count as stored when they were received
        batch_op.add_column(sa.Column('stored_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE appeals SET stored_at = received_at")
    with op.batch_alter_table('appeals', schema=None) as batch_op:
        batch_op.alter_column('stored_at', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.alter_column('cross_level', server_default=None)
        batch_op.alter_column('urgency', server_default=None)
        batch_op.alter_column('risk_reasons', server_default=None)
        batch_op.create_index(batch_op.f('ix_appeals_repeat_of'), ['repeat_of'], unique=False)
        batch_op.create_index(batch_op.f('ix_appeals_repeat_unit_code'), ['repeat_unit_code'], unique=False)
        batch_op.create_index(batch_op.f('ix_appeals_stored_at'), ['stored_at'], unique=False)

    with op.batch_alter_table('work_orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('urgency', sa.String(length=16), nullable=False, server_default='normal'))
        batch_op.add_column(sa.Column('violation_type', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('enforcement_requested', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('review_reason', sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column('classifier_label', sa.String(length=40), nullable=True))
    with op.batch_alter_table('work_orders', schema=None) as batch_op:
        batch_op.alter_column('urgency', server_default=None)
        batch_op.alter_column('enforcement_requested', server_default=None)

    op.create_table('dispatcher_decisions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('case_no', sa.String(length=32), nullable=False),
    sa.Column('order_no', sa.String(length=40), nullable=False),
    sa.Column('new_order_no', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('review_reason', sa.String(length=24), nullable=True),
    sa.Column('previous_unit_code', sa.String(length=40), nullable=False),
    sa.Column('previous_item', sa.String(length=40), nullable=False),
    sa.Column('unit_code', sa.String(length=40), nullable=False),
    sa.Column('category', sa.String(length=40), nullable=False),
    sa.Column('item', sa.String(length=40), nullable=False),
    sa.Column('label', sa.String(length=40), nullable=False),
    sa.Column('taxonomy_version', sa.String(length=40), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_no'], ['appeals.case_no'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dispatcher_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dispatcher_decisions_case_no'), ['case_no'], unique=False)
        batch_op.create_index(batch_op.f('ix_dispatcher_decisions_decided_at'), ['decided_at'], unique=False)

    op.create_table('hotspots',
    sa.Column('hotspot_id', sa.String(length=40), nullable=False),
    sa.Column('town_code', sa.String(length=12), nullable=False),
    sa.Column('village_code', sa.String(length=12), nullable=True),
    sa.Column('category', sa.String(length=40), nullable=False),
    sa.Column('item', sa.String(length=40), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('appeals', sa.Integer(), nullable=False),
    sa.Column('people', sa.Integer(), nullable=False),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('detected_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('hotspot_id')
    )
    with op.batch_alter_table('hotspots', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotspots_last_received_at'), ['last_received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_hotspots_town_code'), ['town_code'], unique=False)

    op.create_table('hotspot_members',
    sa.Column('case_no', sa.String(length=32), nullable=False),
    sa.Column('hotspot_id', sa.String(length=40), nullable=False),
    sa.Column('similarity', sa.Float(), nullable=True),
    sa.Column('joined_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_no'], ['appeals.case_no'], ),
    sa.ForeignKeyConstraint(['hotspot_id'], ['hotspots.hotspot_id'], ),
    sa.PrimaryKeyConstraint('case_no')
    )
    with op.batch_alter_table('hotspot_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotspot_members_hotspot_id'), ['hotspot_id'], unique=False)


def downgrade() -> None:
    op.drop_table('hotspot_members')
    op.drop_table('hotspots')
    op.drop_table('dispatcher_decisions')
    with op.batch_alter_table('work_orders', schema=None) as batch_op:
        for column in ('classifier_label', 'review_reason', 'enforcement_requested', 'violation_type',
                       'urgency'):
            batch_op.drop_column(column)
    with op.batch_alter_table('appeals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_appeals_stored_at'))
        batch_op.drop_index(batch_op.f('ix_appeals_repeat_unit_code'))
        batch_op.drop_index(batch_op.f('ix_appeals_repeat_of'))
        for column in ('stored_at', 'risk_reasons', 'urgency', 'cross_level', 'repeat_unit_code',
                       'repeat_of', 'reception_level'):
            batch_op.drop_column(column)
