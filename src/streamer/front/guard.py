"""Who may open a session, and what the access log may say about them.

* Token (`[security] token`): presented in the start message (`token`), as `?token=` on
  the URL, or the way browsers can, `Sec-WebSocket-Protocol: token, <value>` (the server
  then answers with the `token` subprotocol). Compared with `hmac.compare_digest`, so the
  time taken says nothing about how much of a guess was right. A wrong one closes 1008.
* Origin (`[security] origins`): browsers send it and cannot lie about it; a page from an
  origin not on a non-empty list is refused before the upgrade (403). Clients that send no
  Origin (scripts, servers) are not browsers and are not affected.
* The access log names the client, method, path and status only: a query string can hold a
  token. aiohttp's own lines that would quote a client's subprotocols or request line are
  rewritten (`TokenRedaction`).
* Who the client is (for the access log and the admin endpoints' loopback rule): whoever
  connected, or behind a proxy of `[server] trusted_proxies`, whom its X-Forwarded-For names.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from streamer.runtime.config import Security

SUBPROTOCOL = "token"


def handshake_token(request: web.Request) -> str | None:
    """A token offered before the upgrade, if any (query or subprotocol list)."""
    if "token" in request.query:
        return request.query["token"]
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    if len(offered) >= 2 and offered[0] == SUBPROTOCOL:
        return offered[1]
    return None


def token_ok(sec: Security, presented: str | None) -> bool:
    if not sec.token:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), sec.token.encode())


class TokenRedaction(logging.Filter):
    """Keeps tokens out of the two lines aiohttp writes with what a client sent, as it came.

    * `aiohttp.websocket`, when no offered subprotocol is `token`: it lists them all, so a
      client that misspells the word (`Token, <value>`) or offers the token alone has it
      logged. The line says what was missing instead.
    * `aiohttp.server`, for a request it could not parse: the error quotes the request line,
      `?token=` and all. Query strings are cut from the message and the traceback, as the
      access log never has them.
    """

    QUERY = re.compile(r"\?\S*")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aiohttp.websocket" and "protocols" in str(record.msg):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "%s: no offered subprotocol is %r (the offer is not logged: it may hold a token)"
            record.args = (peer, SUBPROTOCOL)
        elif record.name == "aiohttp.server":
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.QUERY.sub("?<query not logged>", record.exc_text)
            with contextlib.suppress(TypeError, ValueError):  # a filter must never raise into aiohttp
                record.msg, record.args = self.QUERY.sub("?<query not logged>", record.getMessage()), None
        return True


def redact_logs() -> None:
    """Installs `TokenRedaction` where aiohttp logs (on the loggers: a handler set up later
    must not bring the lines back)."""
    for name in ("aiohttp.websocket", "aiohttp.server"):
        logging.getLogger(name).addFilter(TokenRedaction())


def origin_ok(sec: Security, request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return not sec.origins or origin is None or origin in sec.origins


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address(text: str | None) -> IPAddress | None:
    """An address as the kernel or a proxy writes it, None for anything else. A zone index is
    dropped and an IPv4-mapped IPv6 address is its IPv4 one: one client, one spelling."""
    try:
        ip = ipaddress.ip_address((text or "").strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Proxies:
    """Who the client is when proxies stand in front (`[server] trusted_proxies`).

    Behind a balancer every request comes from the balancer: on one machine that is loopback,
    which would open the admin endpoints to everyone and name nobody in the access log. A proxy
    appends the address it was connected from to X-Forwarded-For, so read from the right, the
    first address that is not a trusted proxy's is the client; what a client wrote itself
    further left is never reached. The header is read only from a trusted peer: with the list
    empty (the default) a client that forges it gains nothing.
    """

    def __init__(self, trusted: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(t, strict=False) for t in trusted)

    def trusts(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.networks)

    def client(self, request: web.BaseRequest) -> IPAddress | None:
        """The client's address; None when it cannot be known (a hop that is no address)."""
        peer = address(request.remote)
        if peer is None or not self.trusts(peer):
            return peer
        client = peer
        hops = [h for line in request.headers.getall("X-Forwarded-For", []) for h in line.split(",")]
        for hop in reversed(hops):
            ip = address(hop)
            if ip is None:
                return None
            client = ip
            if not self.trusts(ip):
                break
        return client  # all trusted: the leftmost (a client on a proxy's own machine)


class QuietAccessLogger(AbstractAccessLogger):
    """One line per request without the query string (tokens) or any body (audio), naming the
    client as `proxies` find it."""

    proxies = Proxies(())

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        client = self.proxies.client(request)
        self.logger.info('%s "%s %s" %s %.3f s', client or "unknown", request.method, request.path, response.status,
                         time)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def access_logger(proxies: Proxies) -> type[AbstractAccessLogger]:
    """aiohttp makes the access logger itself, from a class: a class that knows the proxies."""

    class Logger(QuietAccessLogger):
        pass

    Logger.proxies = proxies
    return Logger
