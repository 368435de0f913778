"""citizen_contacts.wechat_openid (notify's WeChat template messages)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('citizen_contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('wechat_openid', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('citizen_contacts', schema=None) as batch_op:
        batch_op.drop_column('wechat_openid')
