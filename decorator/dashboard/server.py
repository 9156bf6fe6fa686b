"""The dashboard process: a Starlette app on uvicorn that receives telemetry from sidecars, stores it
(store.py), answers the page's JSON queries and serves the static page.

Owns HTTP concerns only: auth, body limits, gzip, status codes, query parameters. SQLite work runs
in worker threads (one writer, a few readers) so ingest never blocks the event loop or the reads.
Must not import proxy, rules or telemetry: it shares only the wire format with the sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import signal
import socket
import sqlite3
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from decorator.dashboard.store import Store, StoreConfig
from decorator.errors import UsageError
from decorator.units import duration_seconds
from decorator.wire.models import (
    EventPayload,
    ResourcesPayload,
    SeedStatsPayload,
    StatsPayload,
    is_seed_stats,
)

STATIC = Path(__file__).with_name("static")
MAX_BODY = 4 * 1024 * 1024          # both the compressed and the decompressed body
_STEPS = (5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_POINTS = 120                       # about this many points per chart
_METRICS_STATS = {"rps", "latency", "status"}
_METRICS_RES = {"cpu", "memory"}
_INLINE_PARSE = 32 * 1024           # smaller bodies are decoded on the loop: a thread hop would cost more
# The page loads only its own files and talks only to this server; pod names and paths shown on it
# come from the network, so no inline script may run even if escaping were ever missed.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _Reject(Exception):
    """A request we answer with an error status and a reason (and store nothing)."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error}
        if self.detail is not None:
            body["detail"] = self.detail
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def create_app(db_path: str | Path, retention: float = 24 * 3600.0, token: str | None = None, *,
               clock: Callable[[], float] = time.time, stale_after: float = 10.0, raw_keep: float = 900.0,
               minute_keep: float = 8 * 3600.0, prune_interval: float = 30.0,
               max_body: int = MAX_BODY) -> Starlette:
    """The dashboard app on `db_path` (created if missing). `clock` is injectable for tests."""
    store = Store(db_path, StoreConfig(retention=retention, raw_keep=min(raw_keep, retention),
                                       minute_keep=minute_keep, stale_after=stale_after), clock=clock)
    writer = ThreadPoolExecutor(1, thread_name_prefix="dashboard-writer")
    readers = ThreadPoolExecutor(4, thread_name_prefix="dashboard-reader")
    secret = token.encode() if token else None

    async def write(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(writer, fn, *args)

    async def read(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(readers, fn, *args)

    def check_token(request: Request) -> None:
        if secret is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), secret):
            raise _Reject(401, "missing or wrong bearer token (Authorization: Bearer <DASHBOARD_TOKEN>)")

    async def payload(request: Request, parse: Callable[[Any], Any]) -> Any:
        """Token, body, decode, validate. Big bodies are decoded and validated in a worker thread so
        one large push does not stall every other request on the event loop."""
        check_token(request)
        body = await read_body(request, max_body)
        encoding = request.headers.get("content-encoding")

        def work() -> Any:
            return parse(json_body(body, encoding, max_body))
        if len(body) < _INLINE_PARSE:
            return work()
        return await asyncio.get_running_loop().run_in_executor(None, work)

    def validated(model: type[BaseModel], data: Any) -> Any:
        if not isinstance(data, dict):
            raise _Reject(422, f"expected a JSON object, got {type(data).__name__}")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise _Reject(422, f"invalid {model.__name__}: {e.error_count()} error(s)", [
                {"loc": ".".join(str(x) for x in err["loc"]), "msg": err["msg"]}
                for err in e.errors(include_url=False)[:20]]) from None

    def handler(fn):
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except _Reject as r:
                return r.response()
            except sqlite3.Error as e:   # disk full, file gone: say so; sidecars back off and retry
                print(f"decorator dashboard: storage error on {request.url.path}: {e}", file=sys.stderr,
                      flush=True)
                return JSONResponse({"error": f"storage unavailable: {e}"}, status_code=503)
        return endpoint

    # -- ingest --------------------------------------------------------------------------------

    def parse_stats(data: Any) -> tuple[StatsPayload, dict | None]:
        if is_seed_stats(data):   # the seed's list of exchanges, kept as sent for GET /stats
            seed = validated(SeedStatsPayload, data)
            return seed.to_stats(), seed.model_dump(mode="json")
        return validated(StatsPayload, data), None

    async def post_stats(request: Request) -> Response:
        stats, raw = await payload(request, parse_stats)
        n = await write(store.add_stats, stats, raw)
        return JSONResponse({"response": "saved", "rows": n})

    async def post_resources(request: Request) -> Response:
        await write(store.add_resources, await payload(request, lambda d: validated(ResourcesPayload, d)))
        return JSONResponse({"response": "saved"})

    async def post_events(request: Request) -> Response:
        await write(store.add_event, await payload(request, lambda d: validated(EventPayload, d)))
        return JSONResponse({"response": "saved"})

    async def get_stats(request: Request) -> Response:
        return JSONResponse(await read(store.latest, "stats"))

    async def get_resources(request: Request) -> Response:
        return JSONResponse(await read(store.latest, "resources"))

    # -- queries for the page ------------------------------------------------------------------

    def window_of(request: Request) -> float:
        text = request.query_params.get("window", "15m")
        w = duration_seconds(text)
        if w is None:
            raise _Reject(400, f"window: expected a duration such as 15m, 1h or 90s, got {text!r}")
        return min(max(w, 60.0), retention)

    def pod_of(request: Request) -> str | None:
        return request.query_params.get("pod") or None

    def limit_of(request: Request, default: int) -> int:
        text = request.query_params.get("limit", str(default))
        if not text.isdigit() or not 1 <= int(text) <= 500:
            raise _Reject(400, f"limit: expected a whole number from 1 to 500, got {text!r}")
        return int(text)

    async def overview(request: Request) -> Response:
        window, pod = window_of(request), pod_of(request)

        def query() -> dict:
            now = clock()
            pods = store.pods(now - window)
            per_pod = store.per_pod_totals(now - window, now)
            rates = store.current_rates()
            for p in pods:
                p["traffic"] = per_pod.get(p["pod"], {"requests": 0, "rps_avg": 0.0, "errors": 0, "p95_ms": None})
                p["traffic"]["rps_now"] = rates.get(p["pod"], 0.0)
            totals = store.totals(now - window, now, pod)
            # The current rate (the tile); rps_avg is the window's average and says so on the page.
            totals["rps_now"] = round(rates.get(pod, 0.0) if pod else sum(rates.values()), 3)
            return {"now": now, "window": window, "pod": pod, "stale_after": store.config.stale_after,
                    "recent": store.config.recent, "totals": totals, "pods": pods,
                    "counts": {"pods": len(pods), "stale": sum(p["stale"] for p in pods)}}
        return JSONResponse(await read(query))

    async def series(request: Request) -> Response:
        window, pod = window_of(request), pod_of(request)
        metric = request.query_params.get("metric", "rps")
        if metric not in _METRICS_STATS | _METRICS_RES:
            raise _Reject(400, f"metric: expected one of {sorted(_METRICS_STATS | _METRICS_RES)}, got {metric!r}")
        endpoint = request.query_params.get("endpoint") or None
        gran = store.granularity(clock() - window)
        step = next((s for s in _STEPS if s * _POINTS >= window and s % gran == 0), _STEPS[-1])

        def query() -> dict:
            now = clock()
            # Stats buckets end at the last whole step (a partial one would read as a drop in traffic);
            # resources are levels, so the bucket in progress is shown too.
            end = math.floor(now / step) * step + (step if metric in _METRICS_RES else 0)
            n = max(round(window / step), 1)
            since = end - n * step
            if metric in _METRICS_STATS:
                lines = store.stats_series(metric, since, end, step, pod, endpoint)
            else:
                lines = store.resource_series(metric, since, end, step, pod)
            return {"metric": metric, "step": step, "now": now, "t": [since + i * step for i in range(n)],
                    "series": lines}
        return JSONResponse(await read(query))

    async def endpoints(request: Request) -> Response:
        window, pod, limit = window_of(request), pod_of(request), limit_of(request, 20)

        def query() -> list:
            now = clock()
            return store.endpoints(now - window, now, pod, limit)
        return JSONResponse(await read(query))

    async def events(request: Request) -> Response:
        window, pod, limit = window_of(request), pod_of(request), limit_of(request, 50)

        def query() -> dict:
            since = clock() - window
            return {"errors": store.recent_errors(since, pod, limit), "alerts": store.recent_events(since, pod, limit)}
        return JSONResponse(await read(query))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "auth": secret is not None, "retention": retention})

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache", **_PAGE_HEADERS})

    # -- lifecycle -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        async def prune_forever() -> None:
            while True:
                try:
                    await write(store.prune)
                except sqlite3.Error as e:  # a full disk must not kill the receiver; try again later
                    print(f"decorator dashboard: prune failed: {e}", file=sys.stderr, flush=True)
                await asyncio.sleep(prune_interval)

        task = asyncio.create_task(prune_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await write(store.checkpoint)
            writer.shutdown(wait=True)
            readers.shutdown(wait=True)
            store.close()

    routes = [
        Route("/", index),
        Route("/stats", handler(post_stats), methods=["POST"]),
        Route("/stats", handler(get_stats), methods=["GET"]),
        Route("/resources", handler(post_resources), methods=["POST"]),
        Route("/resources", handler(get_resources), methods=["GET"]),
        Route("/events", handler(post_events), methods=["POST"]),
        Route("/api/overview", handler(overview)),
        Route("/api/series", handler(series)),
        Route("/api/endpoints", handler(endpoints)),
        Route("/api/events", handler(events)),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    # Compress answers (uPlot, JSON series); request bodies are handled by json_body() above.
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(GZipMiddleware, minimum_size=1024)])
    app.state.store = store
    return app


async def read_body(request: Request, cap: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `cap` (before reading the rest)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise _Reject(413, f"body of {declared} bytes is over the {cap}-byte limit")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > cap:
            raise _Reject(413, f"body is over the {cap}-byte limit")
    return bytes(buf)


def json_body(body: bytes, encoding: str | None, cap: int) -> Any:
    """Decode (gzip or identity) and parse; decompression stops at `cap` bytes (zip bombs)."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("gzip", "x-gzip"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(body, cap + 1)
        except zlib.error as e:
            raise _Reject(400, f"body is not valid gzip: {e}") from None
        if len(out) > cap or d.unconsumed_tail:
            raise _Reject(413, f"decompressed body is over the {cap}-byte limit")
        if not d.eof:
            raise _Reject(400, "body is not valid gzip: truncated")
        if d.unused_data:
            raise _Reject(400, "body is not valid gzip: data after the end of the stream")
        body = out
    elif enc != "identity":
        raise _Reject(415, f"Content-Encoding {encoding!r} is not supported (use gzip or none)")
    if not body:
        raise _Reject(400, "empty body: expected JSON")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise _Reject(400, f"body is not JSON: {e}") from None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(host: str, port: int, db: str, retention: float, token: str | None) -> int:
    """Run `decorator dashboard` until SIGINT/SIGTERM; logs one line with the URL."""
    import uvicorn

    if retention <= 0:
        raise UsageError(f"--retention: expected a positive duration, got {retention:g}s")
    try:
        app = create_app(db, retention, token)
    except (sqlite3.Error, OSError) as e:
        raise UsageError(f"--db: cannot open {db!r}: {e}") from None
    try:
        sock = _bind(host, port)
    except OSError as e:
        raise UsageError(f"--port: cannot listen on {host}:{port}: {e.strerror or e}") from None
    bound = sock.getsockname()[1]
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)
    print(f"decorator dashboard: http://{shown}:{bound}/ (listening on {host}:{bound}, db {db}, retention "
          f"{retention:g}s, token {'required on POST' if token else 'off'})", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises SIGTERM after its clean shutdown, so the process would die by the signal
            # (exit 143); a clean stop of `decorator dashboard` returns 0 instead.
            old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    _Server(config).run(sockets=[sock])
    return 0
