"""Helpers for the telemetry tests: exchanges built by hand and a raw asyncio HTTP receiver."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from dataclasses import dataclass, field

from decorator.proxy.hooks import Exchange


def make_ex(target: str = "/", method: str = "GET", status: int = 200, ms: float = 3.0,
            bytes_in: int = 0, bytes_out: int = 0, route: str | None = None, error: str | None = None,
            request_id: str = "") -> Exchange:
    ex = Exchange(method, target, "1.1", [(b"Host", b"x")], "127.0.0.1:5000", request_id=request_id)
    ex.status = status
    ex.t_start = 1000.0
    ex.t_response = 1000.0 + ms / 2000.0
    ex.t_end = 1000.0 + ms / 1000.0
    ex.bytes_in = bytes_in
    ex.bytes_out = bytes_out
    ex.route = route
    ex.error = error
    return ex


async def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `cond()` until true; fails the test (with `what`) if it never becomes true."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Post:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    data: object


@dataclass
class Receiver:
    """A tiny HTTP/1.1 server on 127.0.0.1: records each request, answers `status` (after `hold`)."""

    status: int = 200
    hold: asyncio.Event | None = None
    posts: list[Post] = field(default_factory=list)
    waiting: int = 0           # requests received and not yet answered
    port: int = 0
    _server: asyncio.base_events.Server | None = None
    _writers: set = field(default_factory=set)

    async def start(self, port: int = 0) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, path: str) -> list[Post]:
        return [p for p in self.posts if p.path == path]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
                self.posts.append(Post(method, path, headers, raw, json.loads(body)))
                self.waiting += 1
                try:
                    if self.hold is not None:
                        await self.hold.wait()
                finally:
                    self.waiting -= 1
                writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: 2\r\n\r\n{{}}".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


class App:
    """The app behind the proxy: answers every request 200 with a small body, keep-alive."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set = set()

    async def start(self) -> App:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if length:
                    await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
