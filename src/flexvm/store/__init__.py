"""Persistence: SQLAlchemy tables, Alembic migrations and repositories that speak model dataclasses."""
