"""The only module that knows picows: the upgrade router and the per-connection listener.

The router runs synchronously inside picows' handshake parser, before the upgrade: it
authenticates the `?token=` JWT, enforces the connection caps and answers the plain GET
endpoints, so a refused client costs one short HTTP response and no WebSocket state.
The listener's `on_ws_frame` is the data path: payload → msgspec decode → ChatService,
all synchronous. A picows `WSFrame` is only valid inside that callback; we copy the
payload out as bytes and never keep the frame.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from gurukul_fast import http
from gurukul_fast.auth import AuthError, mint_token
from gurukul_fast.chat import ChatService, CloseCode
from gurukul_fast.protocol import decode_client_frame
from gurukul_fast.session import ConnectionState

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Connection", "UpgradeRouter"]

logger = logging.getLogger(__name__)

# A close frame's reason must fit in 123 bytes (RFC 6455 §5.5).
_MAX_REASON = 123
# After we send a close frame, how long the peer gets to answer before the socket is cut.
_CLOSE_GRACE_S = 5.0


class Connection(WSListener):
    """One WebSocket client: its listener callbacks and the `Client` API the service uses."""

    def __init__(self, service: ChatService, state: ConnectionState, writer: OutboxWriter) -> None:
        super().__init__()
        self._service = service
        self._state = state
        self._writer = writer
        self._transport: WSTransport | None = None
        self._outbox: list[bytes] | None = None  # frames queued this loop turn
        self._queued = 0  # bytes in the outbox
        self._open = False
        self._write_cap = service.config.write_buffer_cap_bytes
        self._fragments: bytearray | None = None
        self._max_frame = service.config.max_frame_bytes

    # ---- Client API

    @property
    def conn_id(self) -> int:
        return self._state.conn_id

    @property
    def user_id(self) -> str:
        return self._state.principal.user_id

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def batch(self) -> bool:
        return self._state.batch

    def deliver(self, frame: bytes, *, lossy: bool = False) -> None:
        """Queue one complete WebSocket frame; it leaves at the end of this loop turn,
        in one write with every other frame this connection got in the same turn."""
        transport = self._transport
        if not self._open or transport is None:
            return
        if lossy and transport.underlying_transport.get_write_buffer_size() > self._write_cap // 2:
            # Typing indicators are shed first: a client this far behind gets the next one.
            self._service.metrics.lossy_drops.inc()
            return
        outbox = self._outbox
        if outbox is None:
            self._outbox = [frame]
            self._queued = len(frame)
            self._writer.mark(self)
        else:
            outbox.append(frame)
            self._queued += len(frame)
            if self._queued > self._write_cap:
                # Do not hold more than the cap for the end of the turn: write now. What the
                # kernel does not take lands in the transport, whose cap is pause_writing's.
                self.flush()

    def flush(self) -> None:
        """Write the frames queued this loop turn in one call (one syscall when it fits)."""
        frames, self._outbox = self._outbox, None
        transport = self._transport
        if not frames or transport is None or transport.is_disconnected:
            return
        transport.underlying_transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def close(self, code: int, reason: str) -> None:
        """Send a close frame and stop delivering; the socket is cut if the peer stalls."""
        transport = self._transport
        if not self._open or transport is None:
            return
        self.flush()  # what was queued before the close still goes first
        self._open = False
        encoded = reason.encode()[:_MAX_REASON]
        transport.send_close(WSCloseCode(code), encoded)
        transport.disconnect(graceful=True)
        # A peer that stopped reading never lets a graceful close finish: bound it.
        loop = self._service.loop
        loop.call_later(_CLOSE_GRACE_S, transport.disconnect, False)

    # ---- picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._open = True
        # pause_writing() fires when unsent data passes the cap: that is the slow consumer.
        transport.underlying_transport.set_write_buffer_limits(high=self._write_cap)
        self._service.connected(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._open = False
        self._service.disconnected(self)

    def pause_writing(self) -> None:
        self._slow_consumer()

    def _slow_consumer(self) -> None:
        if self._open:
            self._service.metrics.slow_consumer_drops.inc()
            logger.info("closing a slow consumer (user %s)", self.user_id)
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def resume_writing(self) -> None:
        return None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.payload_size > self._max_frame or transport.is_close_frame_sent:
            # picows has sent 1009 (or we are closing) but still hands the frame over.
            return
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT or msg_type is WSMsgType.BINARY:
            if frame.fin:
                self._on_payload(frame.get_payload_as_bytes())
            else:
                self._fragments = bytearray(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CONTINUATION:
            if self._fragments is None:
                return  # a continuation without a start: nothing to continue
            self._fragments += frame.get_payload_as_memoryview()
            if len(self._fragments) > self._max_frame:
                self._fragments = None
                self.close(CloseCode.MESSAGE_TOO_BIG, "Message too big")
            elif frame.fin:
                payload, self._fragments = bytes(self._fragments), None
                self._on_payload(payload)
        elif msg_type is WSMsgType.CLOSE:
            self._open = False
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def _on_payload(self, payload: bytes) -> None:
        if self._open:
            self._service.handle(self, decode_client_frame(payload))


class OutboxWriter:
    """Flushes every connection that got frames during this loop turn, once, at its end.

    Why: a chat message reaches a member together with the summary that follows it, and
    a busy member gets many messages per turn; one write per connection per turn instead
    of one per frame is what keeps the kernel's share of a delivery small.
    """

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Connection] = []
        self._scheduled = False

    def mark(self, connection: Connection) -> None:
        self._dirty.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for connection in dirty:
            connection.flush()


class UpgradeRouter:
    """picows' listener factory: routes each HTTP request before any upgrade happens."""

    def __init__(
        self, service: ChatService, started_at: float, *, dev_token_secret: str | None = None
    ) -> None:
        """`dev_token_secret` is the *generated* secret in zero-config mode, else None.

        Only then does `GET /dev/token` exist: a configured JWT_SECRET or public key must
        never be reachable from a page, so the server passes None for those.
        """
        self._service = service
        self._config = service.config
        self._ws_path = service.config.ws_path.encode()
        self._started_at = started_at
        self.draining = False
        self._writer = OutboxWriter(service.loop)
        self._dev_token_secret = dev_token_secret
        page = http.demo_page(
            ws_path=service.config.ws_path, dev_tokens=dev_token_secret is not None
        )
        # Each route gets the query string (after "?") of the request.
        self._routes: dict[bytes, Callable[[bytes], http.HttpAnswer]] = {
            b"/": lambda _query: page,
            b"/ws/health": lambda _query: self._health(),
            b"/metrics": lambda _query: http.metrics(self._service.metrics.render()),
        }
        if dev_token_secret is not None:
            self._routes[b"/dev/token"] = self._dev_token

    def __call__(
        self, request: WSUpgradeRequest
    ) -> WSListener | WSUpgradeResponseWithListener | None:
        try:
            return self._route(request)
        except Exception:
            # picows would send the exception text as a 500 body: never let it get there.
            logger.exception("upgrade router failed")
            return _answer(http.json_error(500, "Internal error"))

    def _route(self, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
        path, _, query = request.path.partition(b"?")
        if request.method != b"GET":
            return _answer(http.json_error(405, "Method not allowed"))
        if path == self._ws_path:
            return self._upgrade(request, query)
        route = self._routes.get(path)
        if route is not None:
            answer = route(query)
            routed = _answer(answer)
            for name, value in answer.headers:
                routed.response.headers[name] = value
            return routed
        return _answer(http.not_found())

    def _upgrade(
        self, request: WSUpgradeRequest, query: bytes
    ) -> WSListener | WSUpgradeResponseWithListener:
        service = self._service
        if self.draining:
            return self._refuse(503, "Server is shutting down")
        params = parse_qs(query.decode("latin-1"))
        token = params.get("token", [None])[0]
        try:
            principal = service.verifier.verify(token)
        except AuthError as exc:
            return self._refuse(401, exc.reason)
        refusal = service.can_accept(principal.user_id)
        if refusal is not None:
            return self._refuse(503, refusal)
        _normalise_connection_header(request)
        if not _is_valid_upgrade(request):
            # picows would refuse it too, but with its own exception text as the body.
            return self._refuse(400, "Invalid WebSocket upgrade request")
        batch = params.get("batch", ["0"])[0] in ("1", "true")
        state = service.new_state(principal, batch)
        state.stream = params.get("stream", ["0"])[0] in ("1", "true")
        return Connection(service, state, self._writer)

    def _refuse(self, status: int, message: str) -> WSUpgradeResponseWithListener:
        self._service.metrics.http_rejections.labels(str(status)).inc()
        return _answer(http.json_error(status, message))

    def _dev_token(self, query: bytes) -> http.HttpAnswer:
        """GET /dev/token?user=NAME (zero-config mode only): a token for the demo page.

        Anyone who can reach the port can mint a token for any user: that is what a
        development server without JWT_SECRET means, and the start-up warning says so.
        """
        secret = self._dev_token_secret
        if secret is None:
            return http.not_found()
        user = parse_qs(query.decode("latin-1")).get("user", [""])[0]
        if not http.is_dev_user(user):
            return http.json_error(400, http.DEV_USER_RULE)
        issued = time.time()
        token = mint_token(
            secret,
            user,
            ttl_s=http.DEV_TOKEN_TTL_S,
            now=issued,
            audience=self._config.jwt_audience,
            issuer=self._config.jwt_issuer,
        )
        return http.dev_token(
            user=user, token=token, expires_at_s=int(issued + http.DEV_TOKEN_TTL_S)
        )

    def _health(self) -> http.HttpAnswer:
        service = self._service
        return http.health(
            draining=self.draining,
            storage_ok=service.storage_ok,
            broker_ok=service.broker_ok,
            connections=len(service.clients),
            active_chats=service.rooms.active_chats,
            uptime_s=time.monotonic() - self._started_at,
        )


def _normalise_connection_header(request: WSUpgradeRequest) -> None:
    """Firefox sends `Connection: keep-alive, Upgrade`; picows accepts only `Upgrade`.

    RFC 6455 §4.2.1 only asks that the header *include* the `Upgrade` token, so rewrite it
    to the one value picows validates when the token is present.
    """
    value = request.headers.get("Connection")
    if value is None:
        return
    tokens = {token.strip().lower() for token in value.split(",")}
    if "upgrade" in tokens and value.strip().lower() != "upgrade":
        request.headers["Connection"] = "Upgrade"


def _is_valid_upgrade(request: WSUpgradeRequest) -> bool:
    """RFC 6455 §4.2.1: Upgrade: websocket, Connection: Upgrade, version 13, a 16-byte key."""
    headers = request.headers
    if headers.get("Upgrade", "").lower() != "websocket":
        return False
    if headers.get("Connection", "").lower() != "upgrade":
        return False
    if headers.get("Sec-WebSocket-Version") not in ("13", "8", "7"):
        return False
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (UnicodeEncodeError, binascii.Error):
        return False


def _answer(answer: http.HttpAnswer) -> WSUpgradeResponseWithListener:
    if answer.status < 400:
        response = WSUpgradeResponse.create_ok_response(
            answer.body, extra_headers={"Content-Type": answer.content_type}
        )
    else:
        response = WSUpgradeResponse.create_error_response(
            answer.status, answer.body, extra_headers={"Content-Type": answer.content_type}
        )
    response.headers["Cache-Control"] = "no-store"
    return WSUpgradeResponseWithListener(response, None)
