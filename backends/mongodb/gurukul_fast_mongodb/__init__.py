"""MongoDB storage backend for gurukul-fast, registered for `mongodb:` URLs.

Install this distribution next to `gurukul-fast` and set `STORAGE_URL` to a MongoDB
connection string, e.g. `mongodb://db1,db2,db3/gurukul?replicaSet=rs0`. See
`gurukul_fast_mongodb.backend` for how batches are written and what each mode guarantees.
"""

from __future__ import annotations

from gurukul_fast_mongodb.backend import DEFAULT_DATABASE, MongoStorage
from gurukul_fast_mongodb.schema import SCHEMA_VERSION

__all__ = ["DEFAULT_DATABASE", "SCHEMA_VERSION", "MongoStorage"]
