"""Personal data protection: citizen_contacts columns become encrypted text (intake.encryption);
appeals.hide_identity ("hide my identity from the unit"), appeals.unit_code (the unit holding the
order, for reveal rights) and appeals.personal_data_erased_at (retention); the append-only
audit_log (wuji_common.audit).

Contact rows written before this revision are encrypted here under the newest key of
WUJI_CONTACT_KEYS (needed only when there are such rows); `intake rotate-keys` also encrypts any
plain value it still finds.

Revision ID: 0005
Revises: 0004
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

from wuji_common.audit import create_audit_table, drop_audit_table

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels = None
depends_on = None

CONTACT_COLUMNS = {"name": 64, "phone": 20, "id_number": 18, "email": 254, "wechat_openid": 64,
                   "address": 200}


def upgrade() -> None:
    # plain ADD COLUMN (no batch): on SQLite a batch would copy appeals, which the rows of
    # citizen_contacts and timeline refer to
    op.add_column("appeals", sa.Column("hide_identity", sa.Boolean(), nullable=False,
                                       server_default=sa.false()))
    op.add_column("appeals", sa.Column("unit_code", sa.String(length=40), nullable=True))
    op.add_column("appeals", sa.Column("personal_data_erased_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("citizen_contacts") as batch:
        for column, length in CONTACT_COLUMNS.items():
            batch.alter_column(column, type_=sa.Text(), existing_type=sa.String(length=length),
                               existing_nullable=True)
    from intake.handlers import encrypt_contacts
    encrypt_contacts(op.get_bind())
    create_audit_table(op)


def downgrade() -> None:
    drop_audit_table(op)
    # the contact columns stay text (and encrypted): decrypting on the way down would undo the
    # protection this revision exists for
    with op.batch_alter_table("appeals") as batch:
        batch.drop_column("personal_data_erased_at")
        batch.drop_column("unit_code")
        batch.drop_column("hide_identity")
