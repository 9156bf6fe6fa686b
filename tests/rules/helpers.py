"""Shared helpers for the rules tests: synthetic exchanges, compiled hooks, error lists."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from decorator.proxy.hooks import Exchange
from decorator.rules import Runtime, compile_rules, load_rules


def make_ex(target: str = "/", method: str = "GET", headers: dict | None = None, status: int = 0,
            response_headers: dict | None = None) -> Exchange:
    ex = Exchange(method, target, "1.1", [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
                  "127.0.0.1", request_id="rid-1")
    if status:
        ex.status = status
        ex.response_headers = [(k.encode(), v.encode()) for k, v in (response_headers or {}).items()]
    return ex


def hooks_for(path: str, env: dict | None = None, runtime: Runtime | None = None):
    rs = load_rules([path], env=env or {})
    rt = runtime or Runtime()
    return compile_rules(rs, rt), rt


def errors_of(paths, env: dict | None = None) -> list[str]:
    from decorator.errors import RulesInvalid
    with pytest.raises(RulesInvalid) as info:
        load_rules(paths if isinstance(paths, list) else [paths], env=env or {})
    return [str(e) for e in info.value.errors]


class Receiver:
    """A tiny HTTP/1.1 webhook receiver. `script` is a list of (status, headers) answers used in
    order (the last repeats); status None means: never answer (a slow receiver)."""

    def __init__(self, script):
        self.script = list(script)
        self.events: list[dict] = []
        self.attempts = 0
        self.server = None
        self.port = 0
        self.writers: set = set()

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def _handle(self, reader, writer):
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                status, headers = self.script[min(self.attempts, len(self.script) - 1)]
                self.attempts += 1
                if status is None:
                    await asyncio.sleep(3600)
                if status < 300:
                    self.events.append(json.loads(body))
                extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n{extra}\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def close(self):
        self.server.close()
        for w in list(self.writers):  # also the connections a "slow" handler still holds
            w.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
