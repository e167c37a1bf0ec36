"""Data files: PostgreSQL migrations, the OpenAPI document, JSON schemas."""
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIGRATIONS = HERE / "migrations"
OPENAPI = HERE / "openapi.yaml"
