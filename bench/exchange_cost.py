"""The Python cost of one exchange through the tunnel, without sockets or an event loop in the way.

wrk figures mix the kernel, the event loop and our code; this drives one client connection and one
pooled upstream connection of the real tunnel with in-memory transports, feeding a request and the
app's response (nginx's five header fields, 12-byte body) for every exchange. What is left is the
Python work decorator adds per exchange, with the hooks `decorator run` would attach.

    .venv/bin/python bench/exchange_cost.py                          # tunnel + telemetry (the `decorator` row)
    .venv/bin/python bench/exchange_cost.py --rules bench/rules/card.yaml
    .venv/bin/python bench/exchange_cost.py --no-hooks --browser     # bare tunnel, a 10-field browser request
    .venv/bin/python bench/exchange_cost.py --tracing                # + OTLP tracing, every request sampled
    .venv/bin/python bench/exchange_cost.py --profile                # cProfile of 100k exchanges (pure Python)
    LOOPN=2000 valgrind --tool=callgrind .venv/bin/python bench/exchange_cost.py   # instructions (see --help)

It prints ns per exchange (best of 5 runs of 100k). For instruction counts, run it under callgrind
twice with LOOPN=2000 and LOOPN=6000 (just that many exchanges, no timing) and divide the
difference by 4000: start-up cancels out and the figure is deterministic.

--tracing turns on what OTEL_EXPORTER_OTLP_ENDPOINT turns on (always_on sampler, a traceparent in each
request): the trace hooks on the request path, and the export work too: each full batch of spans
is encoded to its OTLP body in the loop, as the exporter would (only the post itself is left out).

The hot path is compiled with Cython when a compiler was present at install; cProfile cannot see
into compiled functions, so --profile re-runs itself with DECORATOR_PURE_PYTHON=1 (the pure-Python
build of the same code). The other modes measure whichever build is imported, and say which.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys
import timeit

import uvloop

from decorator.app import App
from decorator.proxy.tunnel import ClientConnection, ProxyServer
from decorator.proxy.upstream import UpstreamConnection
from decorator.settings import Settings

WRK_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"
BROWSER_REQUEST = (
    b"GET /api/items?page=2 HTTP/1.1\r\nHost: shop.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.9\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: session=abc123; theme=dark\r\n"
    b"Referer: https://shop.example.com/\r\nCache-Control: no-cache\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 22:09:54 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n")


class _Transport:
    """Enough of an asyncio transport for the tunnel: writes are counted and dropped."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def main(args: argparse.Namespace) -> None:
    server = ProxyServer(("127.0.0.1", 1))
    otlp = None
    if not args.no_hooks:
        otel_env = (("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"), ("OTEL_TRACES_SAMPLER", "always_on"),
                    ("OTEL_METRICS_EXPORTER", "none")) if args.tracing else ()
        app = App(Settings(rules=tuple(args.rules), otel_env=otel_env))
        app.load_rules()  # the hooks `decorator run` attaches: telemetry, then the compiled rules
        server.hooks = app.proxy.hooks
        otlp = app.telemetry.otlp
    client = ClientConnection(server)
    client_t = _Transport()
    client.connection_made(client_t)
    up = UpstreamConnection(server.pool)
    up.connection_made(_Transport())
    server.pool.idle.append(up)
    request = BROWSER_REQUEST if args.browser else WRK_REQUEST

    def one() -> None:
        client.data_received(request)
        up.data_received(RESPONSE)

    if args.traceparent or args.tracing:
        request = request.replace(b"\r\n\r\n", b"\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-"
                                                 b"00f067aa0ba902b7-01\r\n\r\n")
    if otlp is not None:
        from decorator.telemetry.otlp import _resource_bytes, _scope_bytes, encode_traces
        queue, batch = otlp.traces.queue, otlp.config.max_batch
        resource, scope = _resource_bytes(otlp.config.resource), _scope_bytes()
        proxied = one

        def one() -> None:
            proxied()
            if len(queue) >= batch:  # what the exporter's task does with each full batch
                batch_ = [queue.popleft() for _ in range(batch)]
                if not os.environ.get("NOENC"):
                    encode_traces(batch_, resource, scope)

    one()
    if client_t.writes != 1 or server.pool.idle[-1] is not up:
        raise SystemExit("the exchange did not complete as expected (no response written or upstream not pooled)")
    loopn = int(os.environ.get("LOOPN", "0"))
    if loopn:
        for _ in range(loopn):
            one()
        return
    for _ in range(2000):
        one()
    n = 100_000
    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            one()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        return
    best = min(timeit.repeat(one, number=n, repeat=5))
    hooks = "no hooks" if args.no_hooks else ("telemetry + rules " + " ".join(args.rules) if args.rules
                                              else "telemetry") + (" + tracing" if args.tracing else "")
    print(f"{best / n * 1e9:.0f} ns per exchange ({hooks}; {'browser' if args.browser else 'wrk'} request; "
          f"{build()} build)")


def build() -> str:
    """'compiled' when the tunnel's module was loaded from an extension module, else 'pure'."""
    path = inspect.getfile(sys.modules[ClientConnection.__module__])
    return "pure" if path.endswith(".py") else "compiled"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", action="append", default=[], metavar="PATH", help="rules file or directory")
    p.add_argument("--no-hooks", action="store_true", help="the bare tunnel: no telemetry, no rules")
    p.add_argument("--browser", action="store_true", help="a 10-field browser request instead of wrk's")
    p.add_argument("--profile", action="store_true", help="print a cProfile of 100k exchanges")
    p.add_argument("--tracing", action="store_true", help="OTLP tracing on, every request sampled (see above)")
    p.add_argument("--traceparent", action="store_true",
                   help="a traceparent field in the request (what --tracing sends), tracing on or not")
    a = p.parse_args()
    if a.no_hooks and (a.rules or a.tracing):
        sys.exit("--no-hooks excludes --rules and --tracing")
    if a.profile and os.environ.get("DECORATOR_PURE_PYTHON") != "1":
        # The build is chosen at import, which has happened: start again with pure Python.
        print("exchange_cost: --profile runs with DECORATOR_PURE_PYTHON=1 (cProfile cannot see into "
              "compiled code)", file=sys.stderr)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "DECORATOR_PURE_PYTHON": "1"})
    if a.profile and build() != "pure":
        print("exchange_cost: WARNING: DECORATOR_PURE_PYTHON=1 is set but the tunnel is still compiled; "
              "the profile will not show its functions", file=sys.stderr)
    uvloop.install()
    asyncio.run(main(a))
