"""Where a webhook may be sent: one rule, used when a subscription is made and before
every delivery attempt, and a transport that connects to the address that was checked.

The rule: an ``http(s)`` URL with a host and no userinfo, parsed by the HTTP client that
sends it (so the check and the request cannot disagree on the host); a numeric host only
in canonical form (``127.1``, ``2130706433``, ``0x7f.0.0.1`` and ``0177.0.0.1`` are
refused: resolvers read them differently); and every address the host resolves to
public: not loopback, private, link-local (cloud metadata), shared, multicast, reserved
or unspecified, IPv6 included, where the IPv4-mapped (``::ffff:a.b.c.d``), IPv4-translated
(``::ffff:0:a.b.c.d``), IPv4-compatible (``::a.b.c.d``) and local-use NAT64
(``64:ff9b:1::/48``) forms are never public, the well-known NAT64 (``64:ff9b::/96``) and
6to4 (``2002::/16``) forms are judged by the IPv4 address they carry, and any other
address outside global unicast (``2000::/3``) is not public.

The dispatcher resolves the host once per attempt, checks every address, and connects to
the checked one (:func:`pin`), with the ``Host`` header and the TLS server name (SNI, and
so the certificate check) still the URL's host: a DNS answer that changes between the
check and the connect (DNS rebinding) cannot steer the request elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import anyio
import httpx

from orchestrator.domain import InvalidRequest

__all__ = [
    "Pinned",
    "RefusedTarget",
    "Resolver",
    "Target",
    "UnresolvableHost",
    "check_subscription_url",
    "non_public_reason",
    "parse_target",
    "pin",
    "resolve_public",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``(host, port) -> addresses``; injectable so tests can play a hostile DNS server.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64_WELL_KNOWN: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
#: SIIT's IPv4-translated form (``::ffff:0:a.b.c.d``): Python reads it as global.
_IPV4_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")
#: All public IPv6 unicast lies here; Python calls much outside it global (``fec0::/10``
#: site-local, ``5f00::/8``, the rest of ``::/8``).
_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
#: The IPv6 documentation prefix of RFC 9637, newer than Python's tables.
_DOCUMENTATION_V6: Final = ipaddress.IPv6Network("3fff::/20")


class RefusedTarget(Exception):
    """The host is, or resolves to, an address webhooks must not reach."""


class UnresolvableHost(Exception):
    """The host did not resolve (retryable: DNS may be back on the next attempt)."""


@dataclass(frozen=True, slots=True)
class Target:
    url: httpx.URL
    host: str
    port: int

    @property
    def literal(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(f"url: {message}", field="url")


def parse_target(url: str) -> Target:
    """The URL as the HTTP client will send it, or :class:`InvalidRequest` (field ``url``)."""
    try:
        parsed = httpx.URL(url)
        split = urlsplit(url)
        split_port = split.port  # ValueError when not a number in 0-65535
    except (ValueError, httpx.InvalidURL) as exc:
        raise _invalid(f"not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise _invalid("only http and https URLs are allowed")
    host = parsed.host.rstrip(".").lower()
    if not host:
        raise _invalid("has no host")
    if parsed.userinfo or split.username is not None or split.password is not None or "@" in split.netloc:
        raise _invalid("must not contain credentials (use the signing secret)")
    # Two parsers, one answer: a URL they read differently (backslashes, odd brackets)
    # could pass the check as one host and be sent to another.
    default_port = 443 if parsed.scheme == "https" else 80
    port = parsed.port or default_port
    if (split.hostname or "").rstrip(".").lower() != host or (split_port or default_port) != port:
        raise _invalid("is ambiguous (parsers disagree on its host or port)")
    if _non_canonical_ipv4(host):
        raise _invalid(f"{host} is a non-canonical IPv4 address: write it as a dotted quad (a.b.c.d)")
    return Target(parsed, host, port)


def _non_canonical_ipv4(host: str) -> bool:
    """``127.1``, ``2130706433``, ``0x7f.0.0.1``, ``0177.0.0.1``: accepted by inet_aton
    (so by getaddrinfo) but not the dotted quad the address check reads."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return False


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _IPV4_TRANSLATED:
        return "IPv4-translated", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE:
        return "IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64_WELL_KNOWN:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


def _kind(address: IPAddress) -> str:
    for kind, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return kind
    return "not globally routable"


def _show(address: IPAddress) -> str:
    """The address as messages show it, the same on every Python (3.13 prints IPv4-mapped
    addresses with their dotted IPv4 part; 3.11 in hexadecimal groups)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def non_public_reason(address: IPAddress) -> str | None:
    """Why webhooks must not reach ``address``, or None when it is public."""
    shown = _show(address)
    if isinstance(address, ipaddress.IPv6Address):
        # IPv6's own loopback and unspecified addresses (inside the IPv4-compatible range),
        # then the embedded forms before the flags: Python 3.13 answers is_loopback & co.
        # for an IPv4-mapped address from its IPv4 part, 3.11 does not.
        if address.ipv4_mapped is None and (address.is_loopback or address.is_unspecified):
            return f"{shown} is not a public address ({_kind(address)})"
        if address in _NAT64_LOCAL_USE:
            return f"{shown} is a local-use NAT64 address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            form, v4 = embedded
            if form in ("IPv4-mapped", "IPv4-translated", "IPv4-compatible"):
                return f"{shown} is an {form} IPv6 address (of {v4})"
            inner = non_public_reason(v4)
            if inner is not None:
                return f"{shown} is a {form} form of {v4}, which is not public"
            return None
    if address.is_loopback or address.is_unspecified:
        return f"{shown} is not a public address ({_kind(address)})"
    if not address.is_global or address.is_multicast:
        return f"{shown} is not a public address ({_kind(address)})"
    if isinstance(address, ipaddress.IPv6Address):
        if address not in _GLOBAL_UNICAST:
            return f"{shown} is not a public address (outside global unicast 2000::/3)"
        if address in _DOCUMENTATION_V6:
            return f"{shown} is not a public address (documentation)"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnresolvableHost(f"cannot resolve {host}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def host_key(host: str) -> str:
    """A host name as ``ORCHESTRATOR_WEBHOOK_PRIVATE_HOSTS`` lists it: lower case, no
    trailing dot, no IPv6 brackets."""
    return host.strip().strip("[]").lower().rstrip(".")


async def resolve_public(
    target: Target,
    *,
    allow_private: bool = False,
    private_hosts: Collection[str] = (),
    resolver: Resolver = system_resolver,
) -> IPAddress:
    """The one address to connect to: the literal, or the first the host resolves to,
    after checking EVERY address it resolves to (one private answer refuses the host),
    unless private targets are allowed: all of them, or those of the hosts named in
    ``private_hosts`` (exactly as the URL names them).
    Raises :class:`RefusedTarget` or :class:`UnresolvableHost`."""
    literal = target.literal
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        found = await resolver(target.host, target.port)
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        except ValueError as exc:
            raise UnresolvableHost(f"cannot resolve {target.host}: {exc}") from None
        if not addresses:
            raise UnresolvableHost(f"cannot resolve {target.host}: no address")
    if not (allow_private or host_key(target.host) in private_hosts):
        for address in addresses:
            why = non_public_reason(address)
            if why is not None:
                shown = why if literal is not None else f"{target.host} resolves to a non-public address: {why}"
                raise RefusedTarget(shown)
    return addresses[0]


async def check_subscription_url(
    url: str, *, allow_private: bool = False, private_hosts: Collection[str] = (), resolver: Resolver = system_resolver
) -> str:
    """The delivery rule at subscription time: :class:`InvalidRequest` (field ``url``)
    for a malformed URL or a non-public target. A host that does not resolve now is
    accepted: DNS may be down, and every delivery attempt checks again."""
    target = parse_target(url)
    try:
        await resolve_public(target, allow_private=allow_private, private_hosts=private_hosts, resolver=resolver)
    except RefusedTarget as exc:
        raise _invalid(f"refused: {exc}") from None
    except UnresolvableHost:
        pass
    return url


@dataclass(frozen=True, slots=True)
class Pinned:
    """A request aimed at a checked address: the URL with the address as its host, the
    ``Host`` header and the TLS server name (SNI, hence the certificate check) keeping
    the URL's own host."""

    url: httpx.URL
    host_header: str
    extensions: dict[str, object]


def pin(target: Target, address: IPAddress) -> Pinned:
    default = 443 if target.url.scheme == "https" else 80
    name = f"[{target.host}]" if ":" in target.host else target.host
    host_header = name if target.port == default else f"{name}:{target.port}"
    extensions: dict[str, object] = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
    return Pinned(target.url.copy_with(host=str(address)), host_header, extensions)
