"""What every request and response of `profileguard serve` passes: the Host check and the
security headers.

The Host check closes DNS rebinding: a page on an attacker's name that resolves to this server
makes the browser send `Host: attacker.example`, which is refused here (421) unless the name
was allowed. The names served: the bound address itself, the loopback names when bound to
loopback or to every interface, any IP address when bound to every interface (a rebinding
attack always uses a name), and the names given with --allowed-host. The port is not compared.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from profileguard.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_NAME = re.compile(rf"(?=.{{1,253}}$){LABEL}(\.{LABEL})*")
# Every response: no MIME sniffing, never framed, no Referer sent on, readable by its own origin
# only. A page sets its own Content-Security-Policy (page_policy); everything else gets NOTHING.
SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-resource-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
)
NOTHING = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def is_loopback(host: str) -> bool:
    """True when `host` is only reachable from this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def allowed_name(name: str) -> str:
    """An --allowed-host value as compared: a host name or an IP address, lower case, without
    a trailing dot; anything else (a URL, a port, a pattern) is a ConfigError."""
    text = name.strip().lower().rstrip(".")
    address = _ip(text)
    if address is not None:
        return str(address)
    if not HOST_NAME.fullmatch(text):
        raise ConfigError(
            f"--allowed-host {name!r} is not a host name",
            hint="give the name browsers and scrapers use, without scheme or port, "
            "e.g. --allowed-host dashboard.example.com",
        )
    return text


@dataclass(frozen=True)
class HostRule:
    """Which `Host` header values are served, from the bound address and the allowed names."""

    bound: str
    names: frozenset[str]

    @classmethod
    def of(cls, bound: str, allowed: Iterable[str] = ()) -> HostRule:
        return cls(bound, frozenset(allowed_name(n) for n in allowed))

    def allows(self, host: str) -> bool:
        """True when a request with this Host header (port included or not) is served."""
        name = host_of(host)
        if not name:
            return False
        if name in self.names:
            return True
        bound = self.bound.strip("[]").lower().rstrip(".")
        bound_ip = _ip(bound)
        if name == (str(bound_ip) if bound_ip is not None else bound):
            return True
        everywhere = bound_ip is not None and bound_ip.is_unspecified
        if is_loopback(name) and (is_loopback(bound) or everywhere):
            return True
        return everywhere and _ip(name) is not None


def host_of(header: str) -> str:
    """The name of a Host header, without the port, lower case, IPv6 without brackets."""
    text = header.strip().lower()
    if text.startswith("["):
        name, bracket, _ = text[1:].partition("]")
        return name if bracket and _ip(name) is not None else ""
    name, colon, port = text.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        text = name
    text = text.rstrip(".")
    address = _ip(text)
    return str(address) if address is not None else text


def page_policy(html: str) -> str:
    """The Content-Security-Policy of one static page: its own inline scripts and styles (by
    hash), requests to its own origin, nothing else; never framed."""

    def hashes(tag: str) -> str:
        found = [body for kind, body in INLINE.findall(html) if kind == tag]
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in found)
        return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    )


class SecurityMiddleware:
    """ASGI middleware: refuse requests for other hosts, add the security headers to every
    response (a route's own Content-Security-Policy is kept)."""

    def __init__(self, app: ASGIApp, rule: HostRule):
        self.app = app
        self.rule = rule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; there is no websocket route
            await self.app(scope, receive, send)
            return
        hosts = [v for k, v in scope.get("headers", ()) if k == b"host"]
        if len(hosts) != 1:
            await _refuse(send, 400, "the request needs exactly one Host header", None)
            return
        host = hosts[0].decode("latin-1")
        if not self.rule.allows(host):
            await _refuse(
                send,
                421,
                f"this server does not serve the host {host[:100]!r}",
                "open it by the address it listens on, or allow the name: "
                "profileguard serve --allowed-host NAME (or PROFILEGUARD_ALLOWED_HOSTS)",
            )
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _secured(message.get("headers", []))
            await send(message)

        await self.app(scope, receive, with_headers)


def _secured(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = list(headers)
    present = {k.lower() for k, _ in out}
    for name, value in (*SECURITY_HEADERS, ("content-security-policy", NOTHING)):
        if name.encode() not in present:
            out.append((name.encode(), value.encode()))
    return out


async def _refuse(send: Send, status: int, detail: str, hint: str | None) -> None:
    body = json.dumps({"detail": detail, "hint": hint}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": _secured(headers)})
    await send({"type": "http.response.body", "body": body})
