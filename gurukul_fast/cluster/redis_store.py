"""The Redis cluster store: connection caps, rate limits and presence across nodes.

Theory of operation. Every node keeps its own truth locally (which connections it holds
per user, who is present on it) and mirrors it into Redis under its node id:

    <p>:nodes                  ZSET  node id → heartbeat expiry (Redis server time, ms)
    <p>:node:<id>:conns        HASH  user → connections of that user on this node
    <p>:node:<id>:online       SET   users present on this node (grace period included)
    <p>:rate:<kind>:<user>     HASH  token bucket {tokens, ts}

A node is *live* while its `nodes` score is in the future; it renews it every
`heartbeat_interval_s` (5 s) for `node_ttl_s` (15 s). Every check that spans nodes is one
Lua script that only looks at live nodes (server time from TIME, so clocks need not
agree): a node that crashed stops counting within `node_ttl_s`, with no cleanup on the
path. The heartbeat of each live node also claims dead nodes atomically (one winner),
deletes their keys and reports their users offline where no live node still has them.
A node whose entry vanished (Redis restarted, or it was declared dead during a pause)
rewrites its keys from its local state at the next heartbeat.

What each call costs:

- `try_acquire`: one script, O(live nodes) HGETs. `release`: one HINCRBY script.
- `connection_opened`/`closed`: no I/O unless it is the user's first connection on this
  node / the grace period of its last one ends; then one script, O(live nodes).
- `check_rate`: a node takes tokens from the shared Redis bucket in *leases* of
  `limit // 20` (at most 25, at least 1) and spends them locally, so a user sending 100
  messages a minute costs ~5 round trips a minute, and `check_rate_cached` answers most
  calls synchronously. The bound is exact in the strict direction: the cluster never
  grants more than the bucket holds. The price: tokens leased by one node and not used
  within `lease_ttl_s` (10 s) are lost, so a user active on several nodes at once can be
  refused up to (nodes − 1) × (lease − 1) tokens early.

While Redis is down (`healthy` False) every call answers from node-local state: the cap
counts this node's connections only, rate limits are per node, and offline reports wait
until Redis is back (then the node rewrites its keys and re-checks them). Availability
over strictness: an outage never refuses a connection that would otherwise be allowed.

Keys built inside the scripts (other nodes' keys) are not declared in KEYS: this targets a
single Redis server (or a primary with replicas), not a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gurukul_fast.broker.base import new_node_id
from gurukul_fast.broker.redis_broker import split_prefix
from gurukul_fast.cluster.base import ClusterStoreUnavailable, PresenceHandler
from gurukul_fast.cluster.memory import LocalBuckets, LocalPresence

__all__ = ["RedisClusterStore"]

logger = logging.getLogger(__name__)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_LIVE_NODES = "local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')\n"
# Returns 0 if a live node other than ARGV[2] has user ARGV[3] online, else 1.
_NO_OTHER_LIVE_NODE_HAS_USER = """
for _, node in ipairs(live) do
  if node ~= ARGV[2] and
     redis.call('SISMEMBER', ARGV[1] .. ':node:' .. node .. ':online', ARGV[3]) == 1 then
    return 0
  end
end
return 1
"""

# KEYS: nodes. ARGV: prefix, node id, user, limit → 1 counted, 0 at the cap, -1 not live.
_ACQUIRE = (
    _NOW
    + """
local own = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not own or tonumber(own) <= now then return -1 end
"""
    + _LIVE_NODES
    + """
local total = 0
for _, node in ipairs(live) do
  local n = redis.call('HGET', ARGV[1] .. ':node:' .. node .. ':conns', ARGV[3])
  total = total + (tonumber(n) or 0)
end
if total >= tonumber(ARGV[4]) then return 0 end
redis.call('HINCRBY', ARGV[1] .. ':node:' .. ARGV[2] .. ':conns', ARGV[3], 1)
return 1
"""
)

# KEYS: this node's conns hash. ARGV: user.
_RELEASE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"""

# KEYS: nodes. ARGV: prefix, node id, user → 1 came online, 0 was online, -1 not live.
_PRESENCE_ADD = (
    _NOW
    + """
local own = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not own or tonumber(own) <= now then return -1 end
redis.call('SADD', ARGV[1] .. ':node:' .. ARGV[2] .. ':online', ARGV[3])
"""
    + _LIVE_NODES
    + _NO_OTHER_LIVE_NODE_HAS_USER
)

# KEYS: nodes. ARGV: prefix, node id, user → 1 went offline (no live node has the user).
_PRESENCE_REMOVE = (
    _NOW
    + """
redis.call('SREM', ARGV[1] .. ':node:' .. ARGV[2] .. ':online', ARGV[3])
"""
    + _LIVE_NODES
    + _NO_OTHER_LIVE_NODE_HAS_USER
)

# KEYS: nodes, this node's swept marker, conns, online. ARGV: node id, ttl ms.
# → {1 if our entry was live, 1 if a sweeper declared us dead}
_HEARTBEAT = (
    _NOW
    + """
local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local swept = redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[3], 4 * tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[4], 4 * tonumber(ARGV[2]))
if exp and tonumber(exp) > now then return {1, swept} end
return {0, swept}
"""
)

# KEYS: nodes. ARGV: prefix → the dead nodes claimed by this call (each by one caller).
_CLAIM_DEAD = (
    _NOW
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
local claimed = {}
for _, node in ipairs(dead) do
  redis.call('ZREM', KEYS[1], node)
  local base = ARGV[1] .. ':node:' .. node
  redis.call('DEL', base .. ':conns')
  redis.call('SET', base .. ':swept', '1', 'PX', 3600000)
  if redis.call('EXISTS', base .. ':online') == 1 then
    local scratch = ARGV[1] .. ':sweep:' .. node
    redis.call('RENAME', base .. ':online', scratch)
    redis.call('PEXPIRE', scratch, 3600000)
    table.insert(claimed, node)
  end
end
return claimed
"""
)

# KEYS: nodes, a claimed node's scratch set. ARGV: prefix, batch size.
# → {users popped, {users no live node has}}
_SWEEP_USERS = (
    _NOW
    + """
local users = redis.call('SPOP', KEYS[2], tonumber(ARGV[2]))
"""
    + _LIVE_NODES
    + """
local offline = {}
for _, user in ipairs(users) do
  local found = false
  for _, node in ipairs(live) do
    if redis.call('SISMEMBER', ARGV[1] .. ':node:' .. node .. ':online', user) == 1 then
      found = true
      break
    end
  end
  if not found then table.insert(offline, user) end
end
return {#users, offline}
"""
)

# KEYS: bucket. ARGV: capacity, refill per ms, tokens wanted → {granted, wait ms}
_TAKE_TOKENS = (
    _NOW
    + """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then tokens = math.min(capacity, tokens + (now - ts) * rate) end
local granted = math.min(want, math.floor(tokens))
local wait = 0
if granted >= 1 then
  tokens = tokens - granted
else
  granted = 0
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return {granted, wait}
"""
)

_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

SWEEP_BATCH = 500  # users per sweep script call
LEASE_TTL_S = 10.0
MAX_LEASE = 25


class _Down(Exception):
    """Redis is not usable right now; answer from local state."""


_FAILURES: tuple[type[BaseException], ...] = (_Down, *_ERRORS)


class RedisClusterStore:
    """`ClusterStore` on one Redis server. See the module docstring."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        node_id: str | None = None,
        prefix: str | None = None,
        presence_grace_s: float = 5.0,
        heartbeat_interval_s: float = 5.0,
        node_ttl_s: float = 15.0,
        timeout_s: float = 1.0,
        lease_ttl_s: float = LEASE_TTL_S,
    ) -> None:
        self.node_id = node_id or new_node_id()
        self._url, url_prefix = split_prefix(url)
        self.prefix = prefix if prefix is not None else url_prefix
        self._heartbeat_interval_s = heartbeat_interval_s
        self._node_ttl_ms = round(node_ttl_s * 1000)
        self._timeout_s = timeout_s
        self._lease_ttl_s = lease_ttl_s
        self._nodes_key = f"{self.prefix}:nodes"
        base = f"{self.prefix}:node:{self.node_id}"
        self._conns_key = f"{base}:conns"
        self._online_key = f"{base}:online"
        self._swept_key = f"{base}:swept"
        self._client: Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._healthy = False
        self._on_presence: PresenceHandler | None = None
        self._held: dict[str, set[str]] = {}  # user → conn keys counted here
        self._presence = LocalPresence(presence_grace_s, self._grace_ended)
        self._pending_offline: set[str] = set()  # grace ended while Redis was down
        self._buckets = LocalBuckets()  # the fallback while Redis is down
        self._leases: dict[tuple[str, str], list[float]] = {}  # → [tokens, expires at]
        self._heartbeat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._resync_lock = asyncio.Lock()
        self._last_prune = time.monotonic()

    @property
    def healthy(self) -> bool:
        return self._healthy

    # ------------------------------------------------------------------ lifecycle

    async def start(self, on_presence: PresenceHandler | None = None) -> None:
        self._on_presence = on_presence
        client = Redis.from_url(
            self._url,
            socket_timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name=f"gurukul-store-{self.node_id[:12]}",
        )
        self._client = client
        for name, source in (
            ("acquire", _ACQUIRE),
            ("release", _RELEASE),
            ("presence_add", _PRESENCE_ADD),
            ("presence_remove", _PRESENCE_REMOVE),
            ("heartbeat", _HEARTBEAT),
            ("claim_dead", _CLAIM_DEAD),
            ("sweep_users", _SWEEP_USERS),
            ("take_tokens", _TAKE_TOKENS),
        ):
            self._scripts[name] = client.register_script(source)
        try:
            await self._beat()
        except _ERRORS as exc:
            await client.aclose()
            self._client = None
            raise ClusterStoreUnavailable(f"cannot reach Redis: {exc}") from None
        self._healthy = True
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.create_task(self._heartbeat_loop(), name="cluster-heartbeat")

    async def close(self) -> None:
        """Withdraw this node: its users go offline where no other node has them."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        leaving = {*self._presence.cancel_timers(), *self._presence.present()}
        leaving |= self._pending_offline
        client = self._client
        if client is None:
            return
        try:
            if self._healthy:
                for user_id in sorted(leaving):
                    if await self._run("presence_remove", [self._nodes_key], self._who(user_id)):
                        self._report(user_id, False)
                await client.zrem(self._nodes_key, self.node_id)
                await client.delete(self._conns_key, self._online_key)
        except _FAILURES:
            logger.warning("cluster store: could not withdraw this node; it expires by itself")
        finally:
            self._healthy = False
            await client.aclose()
            self._client = None

    # ------------------------------------------------------------------ plumbing

    def _who(self, user_id: str) -> list[str]:
        return [self.prefix, self.node_id, user_id]

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script; raise `_Down` (after marking unhealthy) if Redis fails."""
        if not self._healthy:
            raise _Down
        try:
            return await self._scripts[name](keys=keys, args=args)
        except _ERRORS as exc:
            self._mark_down(exc)
            raise _Down from None

    def _mark_down(self, exc: BaseException) -> None:
        if self._healthy:
            logger.warning("cluster store: Redis unreachable (%s); limits are node-local", exc)
        self._healthy = False
        self._leases.clear()  # counted against a bucket we can no longer see

    def _report(self, user_id: str, online: bool) -> None:
        if self._on_presence is None:
            return
        try:
            self._on_presence(user_id, online)
        except Exception:
            logger.exception("presence handler failed")

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ heartbeat

    async def _beat(self) -> None:
        """Renew this node's entry; rewrite our keys if it had lapsed. Raises on errors."""
        keys = [self._nodes_key, self._swept_key, self._conns_key, self._online_key]
        live, swept = await self._scripts["heartbeat"](
            keys=keys, args=[self.node_id, self._node_ttl_ms]
        )
        if not live or not self._healthy:
            await self._resync(bool(swept))

    async def _resync(self, swept: bool) -> None:
        """Write this node's connections and presence from local state (one transaction)."""
        assert self._client is not None
        async with self._resync_lock:
            counts = {user: len(keys) for user, keys in self._held.items() if keys}
            present = self._presence.present()
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._conns_key, self._online_key)
                if counts:
                    pipe.hset(self._conns_key, mapping=counts)  # type: ignore[arg-type]
                if present:
                    pipe.sadd(self._online_key, *present)
                ttl = 4 * self._node_ttl_ms
                pipe.pexpire(self._conns_key, ttl)
                pipe.pexpire(self._online_key, ttl)
                await pipe.execute()
        if swept:
            # A sweeper declared us dead and may have reported our users offline.
            logger.warning("cluster store: this node was declared dead; re-registered")
            for user_id in present:
                self._report(user_id, True)

    async def _heartbeat_loop(self) -> None:
        while True:
            interval = self._heartbeat_interval_s
            await asyncio.sleep(interval if self._healthy else min(interval, 0.5))
            try:
                await self._beat()
            except _ERRORS as exc:
                self._mark_down(exc)
                continue
            if not self._healthy:
                self._healthy = True
                logger.info("cluster store: Redis is back; this node's state was rewritten")
            try:
                await self._sweep_dead_nodes()
                await self._recheck_offline()
            except _Down:
                continue
            now = time.monotonic()
            if now - self._last_prune > 60.0:
                self._last_prune = now
                self._buckets.prune(now)
                expired = [k for k, (_, until) in self._leases.items() if until <= now]
                for key in expired:
                    del self._leases[key]

    async def _sweep_dead_nodes(self) -> None:
        claimed = await self._run("claim_dead", [self._nodes_key], [self.prefix])
        for raw in claimed:
            node = raw.decode() if isinstance(raw, bytes) else str(raw)
            scratch = f"{self.prefix}:sweep:{node}"
            logger.warning("cluster store: node %s is dead; releasing its users", node[:12])
            while True:
                popped, offline = await self._run(
                    "sweep_users", [self._nodes_key, scratch], [self.prefix, SWEEP_BATCH]
                )
                for user in offline:
                    self._report(user.decode() if isinstance(user, bytes) else user, False)
                if popped < SWEEP_BATCH:
                    break

    async def _recheck_offline(self) -> None:
        """Grace periods that ended while Redis was down: decide them now."""
        while self._pending_offline:
            user_id = self._pending_offline.pop()
            if self._presence.count(user_id):
                continue  # back on this node meanwhile
            try:
                gone = await self._run("presence_remove", [self._nodes_key], self._who(user_id))
            except _Down:
                self._pending_offline.add(user_id)
                raise
            if gone:
                self._report(user_id, False)

    # ------------------------------------------------------------------ connection cap

    async def try_acquire(self, user_id: str, conn_key: str, limit: int) -> bool:
        held = self._held.get(user_id)
        if held is not None and conn_key in held:
            return True
        try:
            counted = await self._run("acquire", [self._nodes_key], [*self._who(user_id), limit])
            if counted == -1:  # our entry lapsed (Redis restarted?): re-register, retry
                await self._beat()
                counted = await self._run(
                    "acquire", [self._nodes_key], [*self._who(user_id), limit]
                )
        except _FAILURES as exc:
            if not isinstance(exc, _Down):
                self._mark_down(exc)
            counted = 1 if len(held or ()) < limit else 0  # node-local while down
        if counted != 1:
            return False
        self._held.setdefault(user_id, set()).add(conn_key)
        return True

    async def release(self, user_id: str, conn_key: str) -> None:
        held = self._held.get(user_id)
        if held is None or conn_key not in held:
            return
        held.discard(conn_key)
        if not held:
            del self._held[user_id]
        with contextlib.suppress(_Down):  # else the resync after the outage writes it
            await self._run("release", [self._conns_key], [user_id])

    # ------------------------------------------------------------------ rate limits

    @staticmethod
    def lease_size(limit_per_minute: int) -> int:
        """Tokens a node takes from the shared bucket at once."""
        return max(1, min(limit_per_minute // 20, MAX_LEASE))

    def check_rate_cached(self, user_id: str, kind: str, limit_per_minute: int) -> float | None:
        now = time.monotonic()
        if not self._healthy:
            return self._buckets.take(user_id, kind, limit_per_minute, now)
        lease = self._leases.get((user_id, kind))
        if lease is not None and lease[0] >= 1 and lease[1] > now:
            lease[0] -= 1
            return 0.0
        return None

    async def check_rate(self, user_id: str, kind: str, limit_per_minute: int) -> float:
        cached = self.check_rate_cached(user_id, kind, limit_per_minute)
        if cached is not None:
            return cached
        key = f"{self.prefix}:rate:{kind}:{user_id}"
        args = [limit_per_minute, limit_per_minute / 60_000, self.lease_size(limit_per_minute)]
        try:
            granted, wait_ms = await self._run("take_tokens", [key], args)
        except _Down:
            return self._buckets.take(user_id, kind, limit_per_minute, time.monotonic())
        if granted < 1:
            return float(wait_ms) / 1000.0
        now = time.monotonic()
        lease = self._leases.get((user_id, kind))
        if lease is not None and lease[1] > now:  # a concurrent call leased too: merge
            lease[0] += granted - 1
            lease[1] = now + self._lease_ttl_s
        else:
            self._leases[(user_id, kind)] = [float(granted - 1), now + self._lease_ttl_s]
        return 0.0

    # ------------------------------------------------------------------ presence

    async def connection_opened(self, user_id: str) -> bool:
        first, resumed = self._presence.opened(user_id)
        if not first or resumed:
            self._pending_offline.discard(user_id)
            return False  # this node already holds the user present
        self._pending_offline.discard(user_id)
        try:
            came = await self._run("presence_add", [self._nodes_key], self._who(user_id))
            if came == -1:
                await self._beat()  # re-registers and writes our online set
                came = await self._run("presence_add", [self._nodes_key], self._who(user_id))
        except _FAILURES as exc:
            if not isinstance(exc, _Down):
                self._mark_down(exc)
            return True  # node-local view; recording "online" twice is harmless
        return bool(came == 1)

    async def connection_closed(self, user_id: str) -> None:
        self._presence.closed(user_id)

    def _grace_ended(self, user_id: str) -> None:
        self._spawn(self._leave(user_id))

    async def _leave(self, user_id: str) -> None:
        try:
            gone = await self._run("presence_remove", [self._nodes_key], self._who(user_id))
        except _Down:
            self._pending_offline.add(user_id)  # decided once Redis is back
            return
        if not self._presence.count(user_id):
            if gone:
                self._report(user_id, False)
            return
        # The user came back here while the script ran (the two calls may have used two
        # pooled connections, in either order): put them back in our online set.
        with contextlib.suppress(_Down):  # else the resync after the outage writes it
            await self._run("presence_add", [self._nodes_key], self._who(user_id))
