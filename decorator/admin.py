"""The admin port: /healthz, /readyz, /metrics, /status for probes, Prometheus and people.

Owns a tiny HTTP/1.1 GET-only server on asyncio + httptools with a routing table of callables that
the app fills in. Must not import rules or telemetry: it serves whatever the table returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import httptools

from decorator.proxy.http import simple_response, status_line

log = logging.getLogger("decorator.admin")

# A handler returns (status, content_type, body); it may be a coroutine function.
Handler = Callable[[], "tuple[int, str, bytes] | Awaitable[tuple[int, str, bytes]]"]


def json_response(obj, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(obj, indent=2, default=str) + "\n").encode()


class AdminServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AdminProtocol(self), host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


class _AdminProtocol(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.size = 0
        self.tasks: list[asyncio.Task] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > 65536:
            self.transport.write(simple_response(431, "request too large"))
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(simple_response(400, "malformed request"))
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self.url) if self.url.startswith(b"/") else None
        path = url.path.decode("latin-1") if url else ""
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        self.url = b""
        self.size = 0
        self.tasks.append(asyncio.ensure_future(self._answer(method, path, keep)))

    async def _answer(self, method: bytes, path: str, keep: bool) -> None:
        # Answers go out in request order: wait for the one before.
        prev = self.tasks[-2] if len(self.tasks) > 1 else None
        if prev is not None:
            await asyncio.wait([prev])
        handler = self.server.routes.get(path)
        if method not in (b"GET", b"HEAD"):
            status, ctype, body = 405, "text/plain", b"only GET and HEAD\n"
        elif handler is None:
            status, ctype, body = 404, "text/plain", ("not found; try " + ", ".join(sorted(self.server.routes))
                                                      + "\n").encode()
        else:
            try:
                result = handler()
                if asyncio.iscoroutine(result):
                    result = await result
                status, ctype, body = result
            except Exception:
                log.exception("admin handler for %s failed", path)
                status, ctype, body = 500, "text/plain", b"internal error\n"
        if self.transport is None or self.transport.is_closing():
            return
        head = (status_line(status) + b"Content-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
                % (ctype.encode(), len(body)) + (b"" if keep else b"Connection: close\r\n") + b"\r\n")
        self.transport.write(head + (b"" if method == b"HEAD" else body))
        if not keep:
            self.transport.close()
        self.tasks = [t for t in self.tasks if not t.done()]

    def connection_lost(self, exc) -> None:
        self.transport = None
