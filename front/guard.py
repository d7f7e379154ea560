"""Who may open a session, and what the access log may say about them.

* Token (`[security] token`): presented in the start message (`token`), as `?token=` on
  the URL, or the way browsers can, `Sec-WebSocket-Protocol: token, <value>` (the server
  then answers with the `token` subprotocol). Compared with `hmac.compare_digest`, so the
  time taken says nothing about how much of a guess was right. A wrong one closes 1008.
* Origin (`[security] origins`): browsers send it and cannot lie about it; a page from an
  origin not on a non-empty list is refused before the upgrade (403). Clients that send no
  Origin (scripts, servers) are not browsers and are not affected.
* The access log names method, path and status only: a query string can hold a token.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from runtime.config import Security

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


def origin_ok(sec: Security, request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return not sec.origins or origin is None or origin in sec.origins


class QuietAccessLogger(AbstractAccessLogger):
    """One line per request without the query string (tokens) or any body (audio)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %s %.3f s', request.remote, request.method, request.path, response.status,
                         time)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
