"""The floor under any uvloop proxy: a byte pump that does no HTTP work at all.

Each client connection gets its own connection to the app and bytes are copied both ways as they
come: no parsing, no framing checks, no headers added, no pooling, no hooks, no telemetry. It is
not a proxy anyone should run (it cannot answer an error, bound a header or drain); `bench/run.sh`
measures it in the `uvloop-pump` row to show what CPython + uvloop cost per request before any
HTTP is understood, beside nginx and decorator in the same run.

    python bench/floor_pump.py            # listens on $PORT, forwards to 127.0.0.1:$TARGET_PORT
"""

from __future__ import annotations

import asyncio
import os
import socket

import uvloop


class _Up(asyncio.Protocol):
    def __init__(self, down: asyncio.Transport) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        self.down.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.close()


class _Down(asyncio.Protocol):
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            up, _ = await loop.create_connection(lambda: _Up(self.transport), *self.target)
        except OSError:
            self.transport.close()
            return
        up.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.up = up
        for data in self.early:
            up.write(data)
        self.early = []

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.early.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


async def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    target = os.environ.get("TARGET_PORT", "8087")
    host, _, tport = target.rpartition(":")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Down((host or "127.0.0.1", int(tport))), "127.0.0.1", port,
                                      backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main())
