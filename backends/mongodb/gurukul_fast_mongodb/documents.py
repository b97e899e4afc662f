"""Conversions between the contract's records and BSON documents (pure, no I/O)."""

from __future__ import annotations

from typing import Any

from gurukul_fast.storage.base import ChatRecord, NewMessage, StoredMessage

__all__ = [
    "chat_document",
    "chat_record",
    "message_document",
    "same_message",
    "stored_message",
]

Document = dict[str, Any]


def chat_document(
    chat_id: str, owner_id: str, title: str, agent_id: str | None, now_ms: int
) -> Document:
    """Return the fields of a new, empty chat (without `_id`, for `$setOnInsert`)."""
    return {
        "owner_id": owner_id,
        "title": title,
        "agent_id": agent_id,
        "message_count": 0,
        "last_message": None,
        "last_seq": 0,
        "created_at_ms": now_ms,
        "updated_at_ms": now_ms,
    }


def chat_record(document: Document) -> ChatRecord:
    """Return the `ChatRecord` stored in a `chats` document."""
    return ChatRecord(
        chat_id=document["_id"],
        owner_id=document["owner_id"],
        title=document["title"],
        agent_id=document.get("agent_id"),
        message_count=int(document.get("message_count", 0)),
        last_message=document.get("last_message"),
        last_seq=int(document.get("last_seq", 0)),
        created_at_ms=int(document["created_at_ms"]),
        updated_at_ms=int(document["updated_at_ms"]),
    )


def message_document(message: NewMessage, seq: int) -> Document:
    """Return the `messages` document for `message` stored under `seq`."""
    document: Document = {
        "_id": message.id,
        "chat_id": message.chat_id,
        "seq": seq,
        "user_id": message.user_id,
        "agent_id": message.agent_id,
        "content": message.content,
        "role": message.role,
        "created_at_ms": message.created_at_ms,
        "metadata": message.metadata,
    }
    # Absent rather than null: the idempotency index is partial on a string value.
    if message.client_message_id is not None:
        document["client_message_id"] = message.client_message_id
    return document


def stored_message(document: Document, *, duplicate: bool = False) -> StoredMessage:
    """Return the `StoredMessage` in a `messages` document."""
    return StoredMessage(
        id=document["_id"],
        chat_id=document["chat_id"],
        seq=int(document["seq"]),
        user_id=document["user_id"],
        agent_id=document.get("agent_id"),
        content=document["content"],
        role=document["role"],
        created_at_ms=int(document["created_at_ms"]),
        client_message_id=document.get("client_message_id"),
        metadata=dict(document.get("metadata") or {}),
        duplicate=duplicate,
    )


def same_message(document: Document, message: NewMessage) -> bool:
    """Return True if `document` is `message` itself, stored by an earlier attempt.

    Message ids are unique server-made ids, so a stored document with the same id and the
    same sender, chat, time and text is this message; anything else is an id collision.
    """
    return (
        document["chat_id"] == message.chat_id
        and document["user_id"] == message.user_id
        and document["created_at_ms"] == message.created_at_ms
        and document["content"] == message.content
        and document.get("client_message_id") == message.client_message_id
    )
