"""Alembic environment for the catalog schema."""
