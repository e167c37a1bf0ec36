"""PostgreSQL adapter (asyncpg). Narrow read and write functions that return domain dataclasses."""
