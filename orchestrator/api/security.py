"""Who may talk to the API: the trusted-Host check, the bearer token, and the checks
``serve`` makes before it exposes anything.

Both checks are plain ASGI middleware in front of the application, so they run before
routing and before a request body is read: an unauthenticated client costs us a header
parse, never a body read, a store query or a validation error that describes our schema.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.api.errors import error_response

__all__ = [
    "DOC_PATHS",
    "LOOPBACK_HOSTS",
    "OPEN_PATHS",
    "AccessPolicy",
    "BearerAuth",
    "HostCheck",
    "default_allowed_hosts",
    "host_allowed",
    "is_loopback_bind",
    "is_wildcard_bind",
]

#: Host names a loopback-bound server answers to by default.
LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "::1")
#: Never behind the token: probes (they say nothing a client could use).
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
#: Behind the token only with ``ORCHESTRATOR_API_PROTECT_DOCS=true``.
DOC_PATHS: Final = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DOC_ASSETS_PREFIX: Final = "/docs-assets/"
_WILDCARD_BINDS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104 - names, not binds


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """``token`` None: no authentication. ``allowed_hosts`` holds lower-case names, IP
    literals without brackets, ``*`` (anything) or ``*.domain`` (its subdomains)."""

    token: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    protect_docs: bool = False

    def needs_token(self, path: str) -> bool:
        if self.token is None or path in OPEN_PATHS:
            return False
        if path in DOC_PATHS or path.startswith(DOC_ASSETS_PREFIX):
            return self.protect_docs
        return True  # every other path, unknown ones too: 401 before 404 says nothing


def is_wildcard_bind(host: str) -> bool:
    return host.strip() in _WILDCARD_BINDS


def is_loopback_bind(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it is not loopback


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """Loopback names, plus the bind address itself when it is a concrete one."""
    hosts = list(LOOPBACK_HOSTS)
    name = bind_host.strip().strip("[]").lower()
    if not is_wildcard_bind(bind_host) and name not in hosts:
        hosts.append(name)
    return tuple(hosts)


def _host_name(header: str) -> str | None:
    """The host of a Host header value (``name``, ``name:port``, ``[v6]:port``), or None."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not value[end + 1 :].startswith(":")):
            return None
        name = value[1:end]
    else:
        name, _, port = value.partition(":")
        if port and not port.isdigit():
            return None
    name = name.rstrip(".")
    return name or None


def host_allowed(header: str | None, allowed: Iterable[str]) -> bool:
    if header is None:
        return False
    name = _host_name(header)
    if name is None:
        return False
    for entry in allowed:
        if entry == "*" or entry == name:
            return True
        if entry.startswith("*.") and name.endswith(entry[1:]):
            return True
    return False


def _header(scope: Scope, key: bytes) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == key:
            return bytes(value).decode("latin-1")
    return None


class HostCheck:
    """400 for a Host header the server does not answer to: a browser page whose DNS name
    was rebound to 127.0.0.1 still sends its own name, so it cannot reach the API."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = tuple(h.strip().strip("[]").lower().rstrip(".") for h in allowed)
        self.any = "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any or host_allowed(_header(scope, b"host"), self.allowed):
            await self.app(scope, receive, send)
            return
        refused = error_response(
            400, "invalid_host", "the Host header names no host this server answers to (ORCHESTRATOR_API_ALLOWED_HOSTS)"
        )
        await refused(scope, receive, send)


#: Methods a browser may send across sites without a CORS preflight of ours answering.
UNSAFE_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CrossSiteCheck:
    """403 for a state-changing request a browser sent on behalf of another site: a web
    page may POST to a loopback API (a form or ``fetch`` in ``no-cors`` mode needs no
    preflight), and without a token nothing else would stop it cancelling or deleting a
    job. Browsers name the page's origin (``Origin``, ``Sec-Fetch-Site``); clients that
    are not browsers (curl, httpx, the CLI) send neither and are not affected."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = tuple(h.strip().strip("[]").lower().rstrip(".") for h in allowed)
        self.any = "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") not in UNSAFE_METHODS or self._same_site(scope):
            await self.app(scope, receive, send)
            return
        refused = error_response(
            403,
            "cross_site_request",
            "a browser sent this request for another site (Origin / Sec-Fetch-Site); "
            "state-changing requests are accepted from this server's own origin or from clients that are not browsers",
        )
        await refused(scope, receive, send)

    def _same_site(self, scope: Scope) -> bool:
        if (_header(scope, b"sec-fetch-site") or "").strip().lower() == "cross-site":
            return False
        origin = _header(scope, b"origin")
        if origin is None:
            return True
        scheme, sep, rest = origin.strip().partition("://")
        if not sep or scheme.lower() not in ("http", "https") or "/" in rest:
            return False  # "null" (a sandboxed frame, a file: page) and anything malformed
        return self.any or host_allowed(rest, self.allowed)


class BearerAuth:
    """401 unless ``Authorization: Bearer <token>`` (compared in constant time)."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy
        self._token = policy.token.encode() if policy.token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.policy.needs_token(scope.get("path", "")) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await error_response(401, "unauthorized", "a valid bearer token is required")(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        assert self._token is not None
        scheme, _, given = (_header(scope, b"authorization") or "").partition(" ")
        # compare_digest on bytes: a non-ASCII header value cannot raise.
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), self._token)
