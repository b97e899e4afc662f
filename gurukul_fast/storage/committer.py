"""Group commit: many senders, one transaction.

Why: a database round trip (and, for durable storage, an fsync) costs far more than writing
one more row in it. Messages that arrive while a commit is in flight, or within a short
window after the first one, are written together by one `Storage.append_messages` call.
Each sender awaits its own future and is answered only after the commit that holds its
message has returned, so "acknowledged" always means "stored".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from gurukul_fast.storage.base import NewMessage, Storage, StorageUnavailable, StoredMessage

__all__ = ["CommitObserver", "GroupCommitter"]

logger = logging.getLogger(__name__)

# Called after every commit with (batch size, seconds the commit took, succeeded).
CommitObserver = Callable[[int, float, bool], None]


class GroupCommitter:
    """Batches `append` calls into `Storage.append_messages` calls.

    Call `start()` once inside the running loop, `append()` from any task, and `stop()` at
    shutdown: it waits for every queued message to be committed (or failed) first.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        max_batch: int = 512,
        window_s: float = 0.002,
        observer: CommitObserver | None = None,
    ) -> None:
        self._storage = storage
        self._max_batch = max_batch
        self._window_s = window_s
        self._observer = observer
        self._pending: list[tuple[NewMessage, asyncio.Future[StoredMessage]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the writer task; call once, inside the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    @property
    def pending_count(self) -> int:
        """Messages queued and not yet handed to the backend."""
        return len(self._pending)

    async def append(self, message: NewMessage) -> StoredMessage:
        """Store `message`; return once its batch is committed.

        Raises `StorageUnavailable` if the batch failed or the committer is stopping.
        """
        if self._closing:
            raise StorageUnavailable("storage is shutting down")
        future: asyncio.Future[StoredMessage] = asyncio.get_running_loop().create_future()
        self._pending.append((message, future))
        self._wakeup.set()
        return await future

    async def stop(self) -> None:
        """Refuse new messages, commit the queued ones, then end the writer task."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._pending and self._closing:
                return
            if self._window_s > 0 and len(self._pending) < self._max_batch and not self._closing:
                await asyncio.sleep(self._window_s)
            self._wakeup.clear()
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            if self._pending:
                self._wakeup.set()
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[NewMessage, asyncio.Future[StoredMessage]]]) -> None:
        started = time.perf_counter()
        try:
            stored = await self._storage.append_messages([message for message, _ in batch])
        except StorageUnavailable as exc:
            self._finish(batch, started, ok=False)
            for _, future in batch:
                if not future.done():
                    future.set_exception(StorageUnavailable(str(exc)))
            return
        except Exception:
            # A backend bug must not kill the writer; senders see 503, the log has the cause.
            logger.exception("storage backend raised an unexpected error in append_messages")
            self._finish(batch, started, ok=False)
            for _, future in batch:
                if not future.done():
                    future.set_exception(StorageUnavailable("storage error"))
            return
        self._finish(batch, started, ok=True)
        for (_, future), record in zip(batch, stored, strict=True):
            if not future.done():
                future.set_result(record)

    def _finish(self, batch: Sequence[object], started: float, *, ok: bool) -> None:
        if self._observer is not None:
            self._observer(len(batch), time.perf_counter() - started, ok)
