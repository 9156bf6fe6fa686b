"""The admin port: /healthz, /readyz, /metrics, /status for probes, Prometheus and people.

Owns the routing table of callables that the app fills in, served by the tunnel's own HTTP/1.1 code
(keep-alive, pipelining, limits and timeouts as on the proxy port) with hooks that answer every
request themselves. Must not import rules or telemetry: it serves whatever the table returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from decorator.proxy.hooks import Exchange, Hooks, Reply
from decorator.proxy.limits import Limits
from decorator.proxy.tunnel import ProxyServer

log = logging.getLogger("decorator.admin")

# A handler returns (status, content_type, body); it may be a coroutine function.
Handler = Callable[[], "tuple[int, str, bytes] | Awaitable[tuple[int, str, bytes]]"]

# Probes and scrapes are small and few: far tighter than the proxy port's.
_LIMITS = Limits(max_header_size=16 * 1024, max_headers=50, max_connections=256, idle_timeout=30.0)


def json_response(obj: Any, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(obj, indent=2, default=str) + "\n").encode()


def _reply(status: int, ctype: str, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> Reply:
    headers = [(b"Content-Type", ctype.encode("latin-1")), (b"Cache-Control", b"no-store")]
    return Reply(status, headers + (extra or []), body)


class _Routes(Hooks):
    """Answers every request from the table; nothing is ever forwarded."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes

    def on_request(self, ex: Exchange) -> Reply | Awaitable[Reply]:
        if ex.method not in ("GET", "HEAD"):
            return _reply(405, "text/plain", b"only GET and HEAD\n", [(b"Allow", b"GET, HEAD")])
        handler = self.routes.get(ex.path)
        if handler is None:
            return _reply(404, "text/plain", ("not found; try " + ", ".join(sorted(self.routes)) + "\n").encode())
        try:
            result = handler()
        except Exception:
            log.exception("admin handler for %s failed", ex.path)
            return _reply(500, "text/plain", b"internal error\n")
        if asyncio.iscoroutine(result):
            return self._later(ex.path, result)
        return _reply(*result)

    async def _later(self, path: str, pending: Awaitable[tuple[int, str, bytes]]) -> Reply:
        try:
            return _reply(*(await pending))
        except Exception:
            log.exception("admin handler for %s failed", path)
            return _reply(500, "text/plain", b"internal error\n")


class AdminServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.port = 0
        self._server = ProxyServer(None, _LIMITS, hooks=_Routes(routes))

    async def start(self, host: str, port: int) -> None:
        await self._server.start(host, port)
        self.port = self._server.port

    async def close(self) -> None:
        await self._server.shutdown(drain_timeout=1.0)
