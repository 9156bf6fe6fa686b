"""The app behind the sidecar in the fault campaign, a real process: `python fault_app.py PORT`.

GET /ok answers 200 `ok` (keep-alive); /reset-response sends its head and half its body, then
resets the connection; /reset-body reads part of the request body, then resets. Test helper only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

_RST = struct.pack("ii", 1, 0)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    writer.transport.abort()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if target.startswith(b"/reset-body"):
                await reader.readexactly(min(length, 10))
                _reset(writer)
                return
            if length:
                await reader.readexactly(length)
            if target.startswith(b"/reset-response"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
                await writer.drain()
                await asyncio.sleep(0.01)
                _reset(writer)
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port, reuse_address=True, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
