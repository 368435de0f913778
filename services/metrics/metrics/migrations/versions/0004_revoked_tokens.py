"""revoked_tokens: access tokens revoked by the platform (auth.token_revoked), refused on every call
until they would have expired anyway (wuji_common.auth)

Revision ID: 0004
Revises: 0003
"""
from typing import Sequence, Union

from alembic import op

from wuji_common.auth import create_revocation_table

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_revocation_table(op)


def downgrade() -> None:
    op.drop_table("revoked_tokens")
