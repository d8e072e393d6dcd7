"""catalog identity: one row holding this catalog's UUID, the owner named in the version records it
writes beside the objects, so catalogs that share one objects location tell their records apart

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""
import datetime as dt
import uuid

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    t = op.create_table(
        "catalog_identity",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    # made once, here: a catalog created from scratch runs this too, and an upgraded one gets its
    # id at its upgrade (its older records, which carry none, still count as its own: records.py)
    op.bulk_insert(t, [{"id": str(uuid.uuid4()),
                        "created_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)}])


def downgrade() -> None:
    op.drop_table("catalog_identity")
