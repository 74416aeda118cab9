"""The PostgreSQL connector's TCP settings: every connection it makes (pooled, the first
check, the LISTEN connection) has keepalives and a TCP user timeout, so a server that
vanishes from the network is seen as gone within about a minute, not the kernel's
default hours; a URL's own settings win.

Read off the real sockets (``getsockopt``), not off our own configuration: the numbers
below are the kernel's, after libpq applied what it was given."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from orchestrator.stores.postgres import PostgresConnector, tcp_settings

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@contextmanager
def _socket_of(conn: psycopg.AsyncConnection[Any]) -> Iterator[socket.socket]:
    """The connection's own TCP socket (a duplicate of its descriptor: closing it leaves
    the connection alone)."""
    sock = socket.socket(fileno=socket.dup(conn.pgconn.socket))
    try:
        assert sock.family in (socket.AF_INET, socket.AF_INET6), "the test server must be reached over TCP"
        yield sock
    finally:
        sock.close()


def _tcp_options(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    with _socket_of(conn) as sock:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }


def _with_query(url: str, query: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))


#: What an operator can rely on: an idle connection to a vanished server is found dead
#: after 30 s + 3 probes 10 s apart; data left unacknowledged for 60 s ends it too.
_EXPECTED = {"keepalive": 1, "idle": 30, "interval": 10, "count": 3, "user_timeout_ms": 60_000}


def test_libpq_alone_keeps_the_kernels_two_hour_keepalive_and_no_user_timeout(postgres_url: str) -> None:
    """What the connector replaces: libpq turns keepalives on but leaves the kernel's
    timing (two hours idle) and no user timeout, so the test below cannot pass for nothing."""
    with psycopg.connect(postgres_url) as plain:
        sock = socket.socket(fileno=socket.dup(plain.pgconn.socket))
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7200
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
        finally:
            sock.close()


async def test_every_connection_has_keepalives_and_a_tcp_user_timeout(postgres_url: str, pg_schema: str) -> None:
    connector = PostgresConnector(postgres_url, schema=pg_schema, min_size=2, max_size=2)
    await connector.open()
    try:
        assert connector._pool is not None
        async with connector._pool.connection() as pooled:
            assert _tcp_options(pooled) == _EXPECTED
        direct = await connector._connect()  # the first check's and the LISTEN connection's kind
        try:
            assert _tcp_options(direct) == _EXPECTED
        finally:
            await direct.close()
        # The LISTEN connection itself, once a wait opened it.
        await connector.wait_for_notification(max_wait=0.01)
        assert connector._listener is not None
        assert _tcp_options(connector._listener) == _EXPECTED
    finally:
        await connector.close()


async def test_the_urls_own_tcp_settings_win(postgres_url: str, pg_schema: str) -> None:
    url = _with_query(postgres_url, "keepalives_idle=120&tcp_user_timeout=5000")
    assert tcp_settings(url) == {"keepalives": 1, "keepalives_interval": 10, "keepalives_count": 3}
    connector = PostgresConnector(url, schema=pg_schema, min_size=1, max_size=1)
    await connector.open()
    try:
        assert connector._pool is not None
        async with connector._pool.connection() as pooled:
            assert _tcp_options(pooled) == {**_EXPECTED, "idle": 120, "user_timeout_ms": 5000}
    finally:
        await connector.close()


async def test_a_url_turning_keepalives_off_is_obeyed(postgres_url: str, pg_schema: str) -> None:
    connector = PostgresConnector(_with_query(postgres_url, "keepalives=0"), schema=pg_schema, min_size=1, max_size=1)
    await connector.open()
    try:
        assert connector._pool is not None
        async with connector._pool.connection() as pooled:
            options = _tcp_options(pooled)
        assert options["keepalive"] == 0
        # libpq applies tcp_user_timeout only along with keepalives: off, both are off.
        assert options["user_timeout_ms"] == 0
    finally:
        await connector.close()


def test_a_key_value_conninfo_is_read_as_well_as_a_url() -> None:
    assert "keepalives_idle" not in tcp_settings("host=127.0.0.1 dbname=test keepalives_idle=45")
    assert tcp_settings("host=127.0.0.1 dbname=test")["keepalives_idle"] == 30


def test_a_named_service_keeps_its_own_tcp_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pg_service.conf entry may set them: the connector's keyword arguments would win
    over it silently, so with a service it sets none."""
    assert tcp_settings("service=analysis") == {}
    assert tcp_settings("postgresql:///test?service=analysis") == {}
    monkeypatch.setenv("PGSERVICE", "analysis")
    assert tcp_settings("postgresql://127.0.0.1/test") == {}
