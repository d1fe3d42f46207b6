"""Alembic migrations of transched's own tables (Optuna creates and migrates its own)."""
