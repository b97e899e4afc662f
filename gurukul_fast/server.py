"""Server lifecycle: open storage, listen, report, drain.

Shutdown order (SIGTERM/SIGINT): stop accepting → close every client with 1001 → let
in-flight commits and agent replies finish within DRAIN_TIMEOUT, cancel the rest and log
how many → close storage. A message whose commit finished is stored even if its sender
was gone before the acknowledgement: a retry with the same temp id gets the stored copy.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from picows import WSAutoPingStrategy, ws_create_server

from gurukul_fast.agents import AgentRegistry, build_registry
from gurukul_fast.auth import TokenVerifier, load_or_create_secret
from gurukul_fast.broker import Broker, BrokerUnavailable, broker_scheme, load_broker
from gurukul_fast.chat import ChatService, CloseCode
from gurukul_fast.cluster import ClusterStore, ClusterStoreUnavailable, load_cluster_store
from gurukul_fast.config import Config
from gurukul_fast.metrics import Metrics
from gurukul_fast.storage import Storage, StorageOptions, StorageUnavailable, load_storage
from gurukul_fast.transport import UpgradeRouter

__all__ = ["GurukulServer", "StartupError"]

logger = logging.getLogger(__name__)

# Initial per-connection read buffer; picows grows it for larger frames. The 16 KiB
# default would dominate the memory of an idle connection.
READ_BUFFER_BYTES = 2048
STORAGE_PROBE_INTERVAL_S = 5.0


class StartupError(Exception):
    """The server cannot start for a reason the operator can fix; the message says which."""


class GurukulServer:
    """One server process. `await start()`, then `await stop()`; `port` once started."""

    def __init__(
        self,
        config: Config,
        *,
        storage: Storage | None = None,
        agents: AgentRegistry | None = None,
    ) -> None:
        self.config = config
        self._storage = storage
        self._agents = agents
        self._owns_agents = False  # built here from config: closed (HTTP sessions) at stop
        self._server: asyncio.Server | None = None
        self._router: UpgradeRouter | None = None
        self._service: ChatService | None = None
        self._background: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self.secret_generated = False
        self._broker: Broker | None = None
        self._cluster: ClusterStore | None = None

    @property
    def service(self) -> ChatService:
        if self._service is None:
            raise RuntimeError("server not started")
        return self._service

    @property
    def port(self) -> int:
        """The bound TCP port (useful with WS_PORT=0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Open storage (applying migrations), then listen. Raises StorageUnavailable."""
        config = self.config
        secret, self.secret_generated = load_or_create_secret(config)
        verifier = TokenVerifier(config, secret)
        storage = self._storage or load_storage(
            config.storage_url,
            StorageOptions(
                pool_max_size=config.storage_pool_size,
                pool_min_size=min(2, config.storage_pool_size),
            ),
        )
        self._storage = storage
        tls = _tls_context(config)  # before anything is opened: a bad file fails fast
        await storage.open()
        metrics = Metrics()
        if self._agents is None:
            # From config: the built-in personas, AGENT_PROVIDER, the [[agents]] tables.
            self._agents = build_registry(config)
            self._owns_agents = True
        try:
            broker, cluster = _cluster_parts(config)
        except ValueError as exc:  # an unknown BROKER_URL or CLUSTER_STORE_URL scheme
            await storage.close()
            raise StartupError(str(exc)) from None
        self._broker, self._cluster = broker, cluster
        service = ChatService(
            config, storage, self._agents, verifier, metrics, broker=broker, cluster=cluster
        )
        service.start()
        self._service = service
        try:
            if broker is not None:
                assert service.nodes is not None
                await broker.start(service.deliver_remote, service.nodes.resync)
            if cluster is not None:
                await cluster.start(service.on_presence)
        except (BrokerUnavailable, ClusterStoreUnavailable) as exc:
            await service.drain(0)
            await storage.close()
            raise StartupError(f"broker {_safe_url(config.broker_url)}: {exc}") from None
        # /dev/token exists only with a generated secret, never with a configured one.
        self._router = UpgradeRouter(
            service, time.monotonic(), dev_token_secret=secret if self.secret_generated else None
        )
        try:
            self._server = await ws_create_server(
                self._router,
                config.ws_host,
                config.ws_port,
                websocket_handshake_timeout=config.connection_timeout,
                enable_auto_ping=True,
                auto_ping_idle_timeout=config.ping_interval,
                # picows requires reply timeout <= interval; a short PING_INTERVAL wins.
                auto_ping_reply_timeout=min(config.ping_timeout, config.ping_interval),
                auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
                max_frame_size=config.max_frame_bytes,
                read_buffer_init_size=READ_BUFFER_BYTES,
                ssl=tls,
                logger_name="server",
                reuse_port=True if config.workers > 1 else None,
            )
        except OSError as exc:
            await service.drain(0)
            await storage.close()
            where = f"{config.ws_host}:{config.ws_port}"
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._probe_storage()))
        if config.metrics_log_interval > 0:
            self._background.append(loop.create_task(self._log_metrics()))
        if self.secret_generated:
            logger.warning(
                "JWT_SECRET is not set: using a generated secret kept in %s, and anyone "
                "who can reach this port can mint tokens at /dev/token. "
                "Set JWT_SECRET in production.",
                config.secret_file,
            )
        scheme = "wss" if config.tls_cert else "ws"
        logger.info(
            "listening on %s://%s:%d%s (storage %s)",
            scheme,
            config.ws_host,
            self.port,
            config.ws_path,
            storage.url,
        )

    async def stop(self) -> None:
        """Drain and shut down; safe to call twice."""
        if self._stopped.is_set() or self._server is None or self._router is None:
            self._stopped.set()
            return
        self._stopped.set()
        service = self.service
        self._router.draining = True
        self._server.close()  # stop accepting
        for client in tuple(service.clients.values()):
            client.close(CloseCode.GOING_AWAY, "Server shutting down")
        cancelled = await service.drain(self.config.drain_timeout)
        if cancelled:
            logger.warning("drain timeout: cancelled %d unfinished tasks", cancelled)
        if self._owns_agents and self._agents is not None:
            await self._agents.aclose()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        # The cluster store reports this node's users offline: storage must still be open.
        if self._cluster is not None:
            await self._cluster.close()
        if self._broker is not None:
            await self._broker.close()
        if self._storage is not None:
            await self._storage.close()
        logger.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _probe_storage(self) -> None:
        """Keep the health endpoint's storage status fresh (it cannot await)."""
        while True:
            await asyncio.sleep(STORAGE_PROBE_INTERVAL_S)
            try:
                self.service.storage_ok = await self.service.storage.ping()
            except StorageUnavailable:
                self.service.storage_ok = False

    async def _log_metrics(self) -> None:
        """SPEC's metrics line: connections, active chats, messages per second, errors."""
        service = self.service
        interval = self.config.metrics_log_interval
        last = service.metrics.stored_total()
        while True:
            await asyncio.sleep(interval)
            stored = service.metrics.stored_total()
            errors = service.metrics.errors_total()
            logger.info(
                "WebSocket Metrics: totalConnections=%d activeChats=%d "
                "messagesPerSecond=%.1f errors=%d",
                len(service.clients),
                service.rooms.active_chats,
                (stored - last) / interval,
                errors,
            )
            last = stored


def _cluster_parts(config: Config) -> tuple[Broker | None, ClusterStore | None]:
    """The broker and cluster store for several nodes, or (None, None) for one process."""
    if broker_scheme(config.broker_url) == "memory":
        return None, None
    broker = load_broker(config.broker_url)
    store_url = config.cluster_store_url
    if store_url is None:
        # Redis carries both; with NATS, limits and presence stay node-local by default.
        redis = broker_scheme(config.broker_url) in ("redis", "rediss", "unix")
        store_url = config.broker_url if redis else "memory:"
    return broker, load_cluster_store(store_url, node_id=broker.node_id)


def _safe_url(url: str) -> str:
    """The URL without credentials, for messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}"


def _tls_context(config: Config) -> ssl.SSLContext | None:
    if not config.tls_cert or not config.tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(f"TLS_CERT/TLS_KEY cannot be loaded: {reason}") from None
    return context
