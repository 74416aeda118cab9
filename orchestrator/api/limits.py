"""What one client can cost us: request bodies (size and time), the job queue, and an
optional per-client creation rate."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import ApiRefusal, error_response

__all__ = ["QUEUE_FULL_RETRY_AFTER", "BodyLimit", "CreateRateLimiter"]

#: Seconds a client is asked to wait when the queue is full.
QUEUE_FULL_RETRY_AFTER: Final = 5
#: Client addresses remembered by the rate limiter (least recently seen dropped first).
_MAX_CLIENTS: Final = 10_000


class BodyLimit:
    """413 for request bodies over ``limit`` bytes (announced or streamed), 408 for a body
    not received within ``timeout`` seconds (a client trickling it byte by byte)."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float = 30.0) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = error_response(413, "body_too_large", f"request body over {self.limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await too_large(scope, receive, send)
            return
        # Read the body before the app sees it: an exception raised from ``receive``
        # would reach FastAPI's body parsing, which turns it into a 400.
        messages: list[Message] = []
        outcome = "timeout"
        with anyio.move_on_after(self.timeout):
            outcome = await self._read(receive, messages)
        if outcome == "too_large":
            await too_large(scope, receive, send)
            return
        if outcome == "timeout":
            slow = error_response(408, "body_timeout", f"request body not received within {self.timeout:g} s")
            slow.headers["Connection"] = "close"
            await slow(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, messages: list[Message]) -> str:
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return "done"  # a disconnect: the app sees it
            received += len(message.get("body", b""))
            if received > self.limit:
                return "too_large"
            if not message.get("more_body", False):
                return "done"


class CreateRateLimiter:
    """A token bucket per client address: ``per_minute`` creations a minute, in bursts of
    at most ``per_minute``. Memory is bounded: the least recently seen clients are
    forgotten first (a forgotten client starts with a full bucket)."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> None:
        """Spend one token of ``client`` or raise a 429 :class:`ApiRefusal`."""
        now = self._clock()
        tokens, last = self._buckets.pop(client, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._remember(client, tokens, now)
            wait = math.ceil((1.0 - tokens) / self._rate)
            raise ApiRefusal(
                429,
                "rate_limited",
                f"more than {self.per_minute} jobs a minute from this client; retry in {wait} s",
                retry_after=wait,
            )
        self._remember(client, tokens - 1.0, now)

    def _remember(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > _MAX_CLIENTS:
            self._buckets.popitem(last=False)
