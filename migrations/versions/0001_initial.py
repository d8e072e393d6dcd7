"""initial catalog: models, versions, tags, lineage, objects, version_objects, leases

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False, index=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("manifest", sa.String(80), nullable=False, index=True),
        sa.Column("base_version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=True, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("codec", sa.String(50), nullable=False),
        sa.Column("codec_params", sa.JSON, nullable=False),
        sa.Column("logical_bytes", sa.BigInteger, nullable=False),
        sa.Column("stored_bytes", sa.BigInteger, nullable=False),
        sa.Column("referenced_bytes", sa.BigInteger, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("calib_sha256", sa.String(64), nullable=True),
        sa.UniqueConstraint("model_id", "number", name="uq_versions_model_number"),
    )
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("model_id", "name", name="uq_tags_model_name"),
    )
    op.create_table(
        "lineage",
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("child_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("relation", sa.String(20), nullable=False),
    )
    op.create_table(
        "objects",
        sa.Column("oid", sa.String(80), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("logical_bytes", sa.BigInteger, nullable=False),
        sa.Column("stored_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "version_objects",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("oid", sa.String(80), primary_key=True, index=True),
    )
    op.create_table(
        "leases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
        sa.Column("what", sa.String(400), nullable=False),
    )


def downgrade() -> None:
    for t in ("leases", "version_objects", "objects", "lineage", "tags", "versions", "models"):
        op.drop_table(t)
