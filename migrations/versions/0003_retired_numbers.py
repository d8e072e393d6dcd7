"""retired version numbers: a number removed by `rm` is never handed out again, so NAME@vN names
one version for the life of the catalog

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nothing to fill in: a catalog upgraded from 0002 cannot tell a number removed before the
    # upgrade from one never used (a gap a pull may fill); numbers removed from now on are kept
    op.create_table(
        "retired_numbers",
        sa.Column("model_name", sa.String(200), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("retired_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("retired_numbers")
