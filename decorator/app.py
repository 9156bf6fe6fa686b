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

from decorator import build
from decorator.admin import AdminServer, json_response
from decorator.proxy.tunnel import ProxyServer
from decorator.settings import Settings
from decorator.telemetry import OtelConfig, Telemetry
from decorator.trim import release_memory

log = logging.getLogger("decorator")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("decorator")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


async def app_unreachable(host: str, port: int) -> str | None:
    """Why the app cannot be reached (one line for /readyz), or None when it accepts a connection."""
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        w.close()
    except (TimeoutError, OSError) as e:
        return f"app at {host}:{port} unreachable: {e}\n"
    return None


class App:
    """Everything `decorator run` runs, startable in-process for tests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proxy = ProxyServer((settings.target_host, settings.target_port), settings.limits,
                                 hooks=None, access_log=settings.access_log)
        self.admin: AdminServer | None = None
        self.started_at = time.time()
        self._stopping = False
        # Prometheus metrics see every exchange; the dashboard's stats come from `record` rules.
        # OTLP (traces, metrics) only when the OTEL_* variables name an endpoint.
        otel = OtelConfig.from_env(dict(settings.otel_env), pod=settings.pod)
        self.telemetry = Telemetry(dashboard=settings.dashboard, token=settings.dashboard_token,
                                   pod=settings.pod, record_all=False,
                                   in_flight=lambda: self.proxy.stats["in_flight"], otel=otel)
        self.telemetry.add_source(lambda: self.proxy.stats)
        self.telemetry.add_source(lambda: self.proxy.upstream_stats)
        self.runtime = None
        self.reloader = None
        self.rules_hooks = None
        self.listen_sock = None  # a worker's own SO_REUSEPORT socket (decorator.workers); else bind here

    def _build(self, paths):
        """load + validate + compile: what a reload swaps in (RulesInvalid on a user error).

        Loading and validating run in a child process that hands back plain data: pydantic and the
        YAML loader never occupy this process's memory (decorator.rules.isolated)."""
        from decorator.rules.compile import compile_rules
        from decorator.rules.isolated import load_isolated
        ruleset = load_isolated(paths)
        return ruleset.digest, compile_rules(ruleset, self.runtime)

    def _swap(self, rules_hooks) -> None:
        self.rules_hooks = rules_hooks
        # One assignment: exchanges in flight keep the Hooks object they started with.
        self.proxy.hooks = self.telemetry.wrap(rules_hooks)
        release_memory()  # the build's garbage and (once idle) the replaced rule set

    def load_rules(self) -> None:
        """Load the rules before anything listens: invalid rules stop the start (RulesInvalid)."""
        s = self.settings
        if not s.rules:
            self.proxy.hooks = self.telemetry.wrap(None)
            return
        from decorator.actions.runtime import Runtime
        from decorator.reload import Reloader
        self.runtime = Runtime(recorder=self.telemetry.aggregator, pod=s.pod)
        self.runtime.trace = self.telemetry.rule_event  # span events for the actions rules run (tracing on)
        self.telemetry.add_source(lambda: self.runtime.counters)
        self.reloader = Reloader(s.rules, build=self._build, on_swap=self._swap,
                                 poll_interval=s.reload_poll, watch=s.watch)
        self.telemetry.add_source(self.reloader.counters)
        self.reloader.load_initial()

    async def start(self) -> None:
        s = self.settings
        if self.runtime is None and self.proxy.hooks is None:
            self.load_rules()
        if self.runtime is not None:
            await self.runtime.start()
        if self.reloader is not None:
            await self.reloader.start()
        await self.telemetry.start()
        await self.proxy.start(s.host, s.port, sock=self.listen_sock)
        if s.admin_port:
            self.admin = AdminServer(self.admin_routes())
            await self.admin.start(s.admin_host, s.admin_port)
        if s.workers == 1 and s.workers_reason != "default 1":  # `--workers 1`, or `auto` found one CPU
            log.info("workers: 1 (%s): one process, no supervisor", s.workers_reason)
        log.info("listening on %s:%d, forwarding to %s:%d%s", s.host, self.proxy.port, s.target_host,
                 s.target_port, f", admin on :{self.admin.port}" if self.admin else "")
        release_memory()  # start-up garbage (imports, the first build) goes back to the OS

    def admin_routes(self) -> dict:
        return {"/healthz": self._healthz, "/readyz": self._readyz, "/status": self._status,
                "/metrics": self._metrics}

    def _metrics(self):
        body, ctype = self.telemetry.metrics.render()
        return 200, ctype, body

    def _healthz(self):
        return 200, "text/plain", b"ok\n"

    async def _readyz(self):
        if self.proxy.draining:
            return 503, "text/plain", b"draining\n"
        s = self.settings
        problem = await app_unreachable(s.target_host, s.target_port)
        if problem:
            return 503, "text/plain", problem.encode()
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
            "workers": {"count": s.workers, "chosen": s.workers_reason},
            "proxy": dict(self.proxy.stats, connections_open=len(self.proxy.connections)),
            "upstream": dict(self.proxy.upstream_stats, idle=len(self.proxy.pool.idle)),
            "rules": self.reloader.status() if self.reloader is not None else None,
            "rule_counters": self.runtime.counters if self.runtime is not None else None,
            "telemetry": self.telemetry.status(),
            "build": build.summary(),  # compiled or pure Python, per hot-path module
        }

    async def stop(self) -> bool:
        if self._stopping:
            return True
        self._stopping = True
        t0 = time.monotonic()
        n = len(self.proxy.connections)
        log.info("stopping: draining %d connection(s), up to %.0fs", n, self.settings.drain_timeout)
        if self.reloader is not None:
            await self.reloader.close()
        clean = await self.proxy.shutdown(self.settings.drain_timeout)
        if self.admin is not None:
            await self.admin.close()
        # After the drain: the last exchanges' notifications and stats still go out (bounded).
        if self.runtime is not None:
            await self.runtime.close()
        await self.telemetry.close()
        log.info("stopped after %.2fs%s", time.monotonic() - t0, "" if clean else " (drain timed out)")
        return clean


async def _main(settings: Settings) -> int:
    app = App(settings)
    app.load_rules()  # RulesInvalid goes up to the CLI: every error line, exit 1, nothing started
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
    if app.reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, app.reloader.trigger, "SIGHUP")
    else:
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP: no rules configured, nothing to reload"))
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
