"""audit_log: the append-only audit log (who, what, when, from where, why), with triggers refusing
UPDATE and DELETE (wuji_common.audit)

Revision ID: 0003
Revises: 0002
"""
from typing import Sequence, Union

from alembic import op

from wuji_common.audit import create_audit_table, drop_audit_table

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_table(op)


def downgrade() -> None:
    drop_audit_table(op)
