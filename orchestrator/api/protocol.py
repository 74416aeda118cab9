"""uvicorn's h11 protocol with a request-head deadline.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``), but not a client
that sends its request head slowly: every byte cancels the keep-alive timer, and a fresh
connection has no timer at all, so a few hundred clients sending one header byte a
minute would hold every connection slot (slowloris). Here a connection must deliver a
complete request head within ``header_timeout`` seconds of opening, and again after each
response (including a client still sending a body nobody reads after an early 401/413);
otherwise it is closed. Request bodies are bounded in time by
:class:`orchestrator.api.limits.BodyLimit`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["with_header_timeout"]


class _HeadDeadlineH11(H11Protocol):
    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._armed_for: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._armed_for:
            self._disarm()  # a request head arrived: the body has its own deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless a pipelined request already started: the next head (or the rest of a body
        # nobody reads) must come in time.
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._armed_for = self.cycle
        self._head_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self.cycle is self._armed_for and not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(seconds: float) -> type[H11Protocol]:
    """The protocol class to pass as uvicorn's ``http``."""
    return type("HeadDeadlineH11", (_HeadDeadlineH11,), {"header_timeout": seconds})
