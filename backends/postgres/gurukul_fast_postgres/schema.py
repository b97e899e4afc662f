"""Versioned schema migrations for the PostgreSQL backend.

Theory of operation: `schema_migrations` holds one row per applied version. `apply_migrations`
runs in ONE transaction that first takes a transaction-scoped advisory lock, so when several
servers start at once the first applies what is pending and the others wait, then find
nothing left to do. A migration is never edited once released; a change is a new version.

Version 1 follows the SPEC's tables (`messages`, `users`, read status) plus `chats`,
`chat_members` and `message_reads`, and installs `gf_append_messages`, the function that
writes one group-commit batch in one round trip (see its comment for the locking rules).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "UNKNOWN_CHAT_SQLSTATE", "apply_migrations"]

logger = logging.getLogger(__name__)

# Key of the advisory lock that serialises migrations (advisory locks are per database).
# The value is arbitrary; it only has to be the same in every gurukul-fast release.
_MIGRATION_LOCK_KEY = 0x6775_7275_6B75_6C00  # b"gurukul\0"

# SQLSTATE raised by gf_append_messages when a batch names a chat that does not exist.
UNKNOWN_CHAT_SQLSTATE = "GF404"


class Migration(NamedTuple):
    version: int
    name: str
    sql: str  # one or more statements, run with the simple query protocol


_V1_INITIAL = """
CREATE TABLE users (
    id          text PRIMARY KEY,
    last_active timestamptz NOT NULL,
    is_online   boolean NOT NULL DEFAULT false
);

CREATE TABLE chats (
    id            text PRIMARY KEY,
    owner_id      text NOT NULL,
    title         text NOT NULL,
    agent_id      text,
    message_count bigint NOT NULL DEFAULT 0,
    last_message  text,
    last_seq      bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE chat_members (
    chat_id text NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id text NOT NULL,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX chat_members_user_id_idx ON chat_members (user_id);

CREATE TABLE messages (
    id                text PRIMARY KEY,
    chat_id           text NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq               bigint NOT NULL,
    user_id           text NOT NULL,
    agent_id          text,
    content           text NOT NULL,
    role              text NOT NULL,
    "timestamp"       timestamptz NOT NULL,
    metadata          jsonb NOT NULL DEFAULT '{}',
    client_message_id text,
    CONSTRAINT messages_chat_id_seq_key UNIQUE (chat_id, seq)
);
-- The idempotency key: a client's temp id is stored once per sender and chat.
CREATE UNIQUE INDEX messages_idempotency_key
    ON messages (chat_id, user_id, client_message_id)
    WHERE client_message_id IS NOT NULL;

CREATE TABLE message_reads (
    message_id text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    text NOT NULL,
    chat_id    text NOT NULL,
    read_at    timestamptz NOT NULL,
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX message_reads_chat_id_user_id_idx ON message_reads (chat_id, user_id);

-- Writes one group-commit batch; returns one row per input, in input order (ord, 1-based).
--
-- Why a function: the batch needs two steps with a fresh snapshot between them (lock the
-- chats, then look for earlier copies of the idempotency keys), and a function call is one
-- round trip and, as a single statement, one transaction: all or nothing.
--
-- Why the lock comes first: it serialises appenders of a chat across servers, so seq has no
-- gaps or duplicates; and a statement that starts after the lock is granted sees every
-- message committed to that chat, so a key committed by another server a moment ago is
-- found here and returned as a duplicate instead of being written twice. Chats are locked
-- in id order so two batches sharing chats cannot deadlock. FOR NO KEY UPDATE (not FOR
-- UPDATE) leaves the foreign-key share locks of add_member free.
--
-- Rows: first_ord is the input whose record this row returns (itself unless the key came
-- earlier in the batch); seq is that record's seq; the m_* columns are set only when the
-- record was stored by an earlier batch, the caller builds the others from its inputs.
CREATE FUNCTION gf_append_messages(
    p_ids text[], p_chat_ids text[], p_user_ids text[], p_agent_ids text[],
    p_contents text[], p_roles text[], p_timestamps timestamptz[], p_metadata jsonb[],
    p_client_ids text[]
) RETURNS TABLE (
    ord bigint, first_ord bigint, seq bigint,
    m_id text, m_user_id text, m_agent_id text, m_content text, m_role text,
    m_timestamp timestamptz, m_metadata jsonb, m_client_message_id text
) LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    missing_chat text;
BEGIN
    PERFORM 1 FROM chats c WHERE c.id = ANY (p_chat_ids) ORDER BY c.id FOR NO KEY UPDATE;

    SELECT wanted.id INTO missing_chat
    FROM unnest(p_chat_ids) AS wanted (id)
    WHERE NOT EXISTS (SELECT 1 FROM chats c WHERE c.id = wanted.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'append to unknown chat %', missing_chat USING ERRCODE = 'GF404';
    END IF;

    RETURN QUERY
    WITH batch AS (
        SELECT b.*,
               CASE WHEN b.client_id IS NULL THEN b.ord
                    ELSE min(b.ord) OVER (PARTITION BY b.chat_id, b.user_id, b.client_id)
               END AS first_ord
        FROM unnest(p_ids, p_chat_ids, p_user_ids, p_agent_ids, p_contents, p_roles,
                    p_timestamps, p_metadata, p_client_ids) WITH ORDINALITY
             AS b (id, chat_id, user_id, agent_id, content, role, ts, metadata, client_id, ord)
    ),
    earlier AS (  -- keys stored by an earlier batch
        SELECT b.ord, m.*
        FROM batch b
        JOIN messages m ON m.chat_id = b.chat_id AND m.user_id = b.user_id
                       AND m.client_message_id = b.client_id
        WHERE b.ord = b.first_ord
    ),
    fresh AS (
        SELECT b.*, c.last_seq + row_number() OVER (PARTITION BY b.chat_id ORDER BY b.ord)
                    AS seq
        FROM batch b
        JOIN chats c ON c.id = b.chat_id
        WHERE b.ord = b.first_ord AND NOT EXISTS (SELECT 1 FROM earlier e WHERE e.ord = b.ord)
    ),
    inserted AS (
        INSERT INTO messages (id, chat_id, seq, user_id, agent_id, content, role, "timestamp",
                              metadata, client_message_id)
        SELECT f.id, f.chat_id, f.seq, f.user_id, f.agent_id, f.content, f.role, f.ts,
               coalesce(f.metadata, '{}'), f.client_id
        FROM fresh f
    ),
    summary AS (
        SELECT f.chat_id, count(*) AS added, max(f.seq) AS last_seq, max(f.ts) AS last_ts,
               (array_agg(f.content ORDER BY f.seq DESC))[1] AS last_content
        FROM fresh f
        GROUP BY f.chat_id
    ),
    bumped AS (
        UPDATE chats c
        SET message_count = c.message_count + s.added,
            last_seq = s.last_seq,
            last_message = s.last_content,
            -- Clocks of different servers may disagree; updated_at never goes backwards.
            updated_at = greatest(c.updated_at, s.last_ts)
        FROM summary s
        WHERE c.id = s.chat_id
    )
    SELECT b.ord, b.first_ord, coalesce(f.seq, e.seq),
           e.id, e.user_id, e.agent_id, e.content, e.role, e."timestamp", e.metadata,
           e.client_message_id
    FROM batch b
    LEFT JOIN fresh f ON f.ord = b.first_ord
    LEFT JOIN earlier e ON e.ord = b.first_ord
    ORDER BY b.ord;
END
$fn$;
"""

MIGRATIONS: tuple[Migration, ...] = (Migration(1, "initial schema", _V1_INITIAL),)

SCHEMA_VERSION = MIGRATIONS[-1].version

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def apply_migrations(
    connection: asyncpg.Connection | PoolConnectionProxy, timeout_s: float
) -> int:
    """Apply pending migrations in one transaction; return the version now in force.

    Call with a connection of its own (not inside another transaction). Waits, up to
    `timeout_s` per statement, while another server holds the migration lock.
    """
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY, timeout=timeout_s
        )
        # Created under the lock: IF NOT EXISTS alone is not safe against a concurrent create.
        await connection.execute(_CREATE_LEDGER, timeout=timeout_s)
        rows = await connection.fetch("SELECT version FROM schema_migrations", timeout=timeout_s)
        applied = {int(row["version"]) for row in rows}
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            logger.info("applying schema migration %d: %s", migration.version, migration.name)
            await connection.execute(migration.sql, timeout=timeout_s)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
                timeout=timeout_s,
            )
            applied.add(migration.version)
    in_force = max(applied)
    if in_force > SCHEMA_VERSION:
        logger.warning(
            "database schema version %d is newer than this release knows (%d)",
            in_force,
            SCHEMA_VERSION,
        )
    return in_force
