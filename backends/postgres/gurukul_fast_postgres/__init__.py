"""PostgreSQL storage backend for gurukul-fast (asyncpg).

Registered under the entry-point group `gurukul_fast.storage` as `postgresql`, so
`STORAGE_URL=postgresql://user@host/db` (or `postgres://…`) selects it.
"""

from __future__ import annotations

from gurukul_fast_postgres.schema import SCHEMA_VERSION
from gurukul_fast_postgres.storage import PostgresStorage

__all__ = ["SCHEMA_VERSION", "PostgresStorage"]
