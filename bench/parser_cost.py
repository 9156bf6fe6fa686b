"""What httptools' per-field callbacks cost per exchange: the figure behind "a head parser that hands
Python one list per head" (the next step for the tunnel's instruction count).

Parses the benchmark's request (wrk's) and response (nginx's: five fields, a 12-byte body) the way the
tunnel does: every callback it uses records what it gets (`recording`), or only the end of each message
is reported (`bare`: llhttp still parses and validates everything, no Python call per field). The
difference is the Python side of per-field parsing: the calls into Python, the bytes objects made for
every name and value, and the tuples they go into.

    LOOPN=2000 valgrind --tool=callgrind .venv/bin/python bench/parser_cost.py recording
    (as exchange_cost.py: run with LOOPN=2000 and 6000, divide the difference by 4000)
    .venv/bin/python bench/parser_cost.py          # ns per exchange for both, best of 5 x 100k
"""

from __future__ import annotations

import os
import sys
import timeit

import httptools

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 22:09:54 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n")


class Recording:
    """The callbacks the tunnel's two protocols use, each recording as they do."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers = []
        self.url = b""

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done += 1
        self.body = []


class Bare:
    """Only the end of each message: llhttp calls into Python once per message."""

    def __init__(self) -> None:
        self.done = 0

    def on_message_complete(self) -> None:
        self.done += 1


def make(kind: str):
    proto = Recording() if kind == "recording" else Bare()
    req = httptools.HttpRequestParser(proto)
    resp = httptools.HttpResponseParser(proto)
    recording = kind == "recording"

    def one() -> None:
        req.feed_data(REQUEST)
        if recording:
            req.get_method()
            req.get_http_version()
        resp.feed_data(RESPONSE)
        if recording:
            resp.get_status_code()
            resp.should_keep_alive()

    return one, proto


def main() -> None:
    loopn = int(os.environ.get("LOOPN", "0"))
    if loopn:
        one, proto = make(sys.argv[1] if len(sys.argv) > 1 else "recording")
        for _ in range(loopn):
            one()
        assert proto.done == 2 * loopn
        return
    for kind in ("recording", "bare"):
        one, proto = make(kind)
        n = 100_000
        best = min(timeit.repeat(one, number=n, repeat=5))
        print(f"{kind:10s} {best / n * 1e9:6.0f} ns per exchange (request + response parsed)")


if __name__ == "__main__":
    main()
