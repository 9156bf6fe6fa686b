"""Fixtures for the tunnel tests: a scriptable upstream on a real socket, raw-byte clients, a proxy.

Everything listens on 127.0.0.1 port 0. The upstream records the raw bytes it received so tests can
prove what did (or did not) reach the app.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from decorator.proxy.tunnel import ProxyServer
from decorator.proxy.limits import Limits
from tests.support import free_port, wait_port  # noqa: F401 - re-exported for the proxy tests


# ----------------------------------------------------------------------------- a tiny HTTP reader
@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]], bytes]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].split(b"\r\n")
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers.append((k.decode(), v.strip().decode("latin-1")))
    return lines[0], headers, raw


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    """Read one response as a client would: 1xx are returned as their own Response."""
    first, headers, raw = await read_head(reader)
    status = int(first.split()[1])
    resp = Response(status, headers, b"", raw)
    if method == "HEAD" or status in (204, 304) or status < 200:
        return resp
    te = resp.header("transfer-encoding")
    cl = resp.header("content-length")
    if te is not None:
        assert te.lower() == "chunked", te
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        resp.body = bytes(body)
    elif cl is not None:
        resp.body = await reader.readexactly(int(cl))
    else:
        resp.body = await reader.read()
    return resp


async def request_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    d = {k.lower(): v for k, v in headers}
    if d.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in d:
        return await reader.readexactly(int(d["content-length"]))
    return b""


# ----------------------------------------------------------------------------- the upstream
@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class Upstream:
    """A real HTTP/1.1 server on port 0. `handler(seen, writer)` answers each request; the default
    echoes a small JSON-free text. `raw` collects every byte received; `requests` every parsed request."""

    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    connections: int = 0
    handler: object = None
    server: asyncio.AbstractServer | None = None

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    first, headers, raw = await read_head(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.raw += raw
                method, target, _ = first.decode().split(" ", 2)
                body = await request_body(reader, headers) if self.handler != "no-body-read" else b""
                self.raw += body
                seen = Seen(method, target, headers, body)
                self.requests.append(seen)
                handler = self.handler if callable(self.handler) else default_handler
                keep = await handler(seen, writer, reader)
                await writer.drain()
                if keep is False:
                    writer.close()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server:
            self.server.close()


async def default_handler(seen: Seen, writer, reader) -> bool:
    body = f"{seen.method} {seen.target} {len(seen.body)}\n".encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return True


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
async def upstream():
    up = await Upstream().start()
    yield up
    await up.close()


@pytest.fixture
async def make_proxy():
    servers: list[ProxyServer] = []

    async def make(target_port: int, hooks=None, **limits) -> ProxyServer:
        srv = ProxyServer(("127.0.0.1", target_port), Limits(**limits), hooks=hooks)
        await srv.start("127.0.0.1", 0)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.shutdown(0.5)


@pytest.fixture
async def proxy(upstream, make_proxy):
    return await make_proxy(upstream.port)


async def open_client(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


async def roundtrip(port: int, raw: bytes, method: str = "GET") -> Response:
    r, w = await open_client(port)
    w.write(raw)
    await w.drain()
    resp = await asyncio.wait_for(read_response(r, method), 10)
    w.close()
    return resp


async def closed_after(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the peer closes the connection (EOF or reset) within timeout."""
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout)
        while data:
            data = await asyncio.wait_for(reader.read(65536), timeout)
        return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


# ----------------------------------------------------------------------------- subprocess helpers
def start_decorator(*args: str, env: dict | None = None) -> subprocess.Popen:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "decorator", "run", *args], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
