"""`decorator run`: builds the proxy, admin port, rules, telemetry and reloader from Settings and runs them.

Owns process life: logging set-up, start order, signals (SIGTERM/SIGINT drain, SIGHUP reload) and
the exit status. The only module that knows every part; the parts do not know each other.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

from decorator.admin import AdminServer, json_response
from decorator.proxy.tunnel import ProxyServer
from decorator.settings import Settings

log = logging.getLogger("decorator")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("decorator")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class App:
    """Everything `decorator run` runs, startable in-process for tests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proxy = ProxyServer((settings.target_host, settings.target_port), settings.limits,
                                 hooks=None, access_log=settings.access_log)
        self.admin: AdminServer | None = None
        self.started_at = time.time()
        self._stopping = False

    async def start(self) -> None:
        s = self.settings
        await self.proxy.start(s.host, s.port)
        if s.admin_port:
            self.admin = AdminServer(self.admin_routes())
            await self.admin.start(s.admin_host, s.admin_port)
        log.info("listening on %s:%d, forwarding to %s:%d%s", s.host, self.proxy.port, s.target_host,
                 s.target_port, f", admin on :{self.admin.port}" if self.admin else "")

    def admin_routes(self) -> dict:
        return {"/healthz": self._healthz, "/readyz": self._readyz, "/status": self._status}

    def _healthz(self):
        return 200, "text/plain", b"ok\n"

    async def _readyz(self):
        if self.proxy.draining:
            return 503, "text/plain", b"draining\n"
        s = self.settings
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(s.target_host, s.target_port), 1.0)
            w.close()
        except (OSError, asyncio.TimeoutError) as e:
            return 503, "text/plain", f"app at {s.target_host}:{s.target_port} unreachable: {e}\n".encode()
        return 200, "text/plain", b"ready\n"

    def _status(self):
        return json_response(self.status())

    def status(self) -> dict:
        s = self.settings
        return {
            "pod": s.pod,
            "listen": f"{s.host}:{self.proxy.port}",
            "target": f"{s.target_host}:{s.target_port}",
            "uptime_s": round(time.time() - self.started_at, 1),
            "draining": self.proxy.draining,
            "proxy": dict(self.proxy.stats, connections_open=len(self.proxy.connections)),
            "upstream": dict(self.proxy.upstream_stats, idle=len(self.proxy.pool.idle)),
        }

    async def stop(self) -> bool:
        if self._stopping:
            return True
        self._stopping = True
        t0 = time.monotonic()
        n = len(self.proxy.connections)
        log.info("stopping: draining %d connection(s), up to %.0fs", n, self.settings.drain_timeout)
        clean = await self.proxy.shutdown(self.settings.drain_timeout)
        if self.admin is not None:
            await self.admin.close()
        log.info("stopped after %.2fs%s", time.monotonic() - t0, "" if clean else " (drain timed out)")
        return clean


async def _main(settings: Settings) -> int:
    app = App(settings)
    try:
        await app.start()
    except OSError as e:
        log.error("cannot listen: %s", e.strerror or e)
        await app.stop()
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await app.stop()
    return 0


def run(settings: Settings) -> int:
    setup_logging(settings.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running on plain asyncio
        return asyncio.run(_main(settings))
    return uvloop.run(_main(settings))
