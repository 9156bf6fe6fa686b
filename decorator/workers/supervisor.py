"""The supervisor of a multi-worker pod (`decorator run --workers N|auto`, N > 1).

Owns the worker processes (start, restart with backoff, signal forwarding, the drain on SIGTERM),
the one admin port, the one rules load (validated once, sent to every worker as plain data), the
pod's telemetry (worker snapshots merged, one push to the dashboard) and notify delivery with a
pod-wide cooldown. Serves no proxied request itself. Must not import proxy internals or rules
models: workers compile the rules; this process only validates them in a child (rules.isolated).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from decorator import build
from decorator.actions.runtime import COUNTER_NAMES, Runtime
from decorator.admin import AdminServer, json_response
from decorator.app import app_unreachable, setup_logging
from decorator.settings import Settings
from decorator.telemetry.merge import PodMetrics, PodStats, add_metrics
from decorator.telemetry.push import Pusher
from decorator.telemetry.resources import Resources
from decorator.trim import release_memory
from decorator.workers.channel import frame, listen_socket, receive

log = logging.getLogger("decorator.workers")

BACKOFF_BASE = 0.5     # seconds before the first restart of a worker that died
BACKOFF_MAX = 30.0     # doubling per quick death, up to this
STABLE_AFTER = 30.0    # a worker that ran this long resets its backoff
START_TIMEOUT = 60.0   # every worker must listen within this at start, or the pod does not start
POLL_EVERY = 1.0       # snapshots from every worker: dashboard deltas and fresh per-worker numbers
SNAP_TIMEOUT = 1.0     # a scrape waits this long for the workers' fresh numbers
MAX_GATE_KEYS = 10_000  # notify (rule, key, url) cooldowns remembered per pod


class WorkerFailed(Exception):
    """A worker exited before it was ready at start-up."""


class Slot:
    """Worker number `index`: the current process (if any) and what outlives its restarts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task | None = None
        self.watch_task: asyncio.Task | None = None
        self.ready = asyncio.Event()
        self.started = 0.0
        self.restarts = 0
        self.quick_deaths = 0      # deaths in a row within STABLE_AFTER of their start
        self.last_exit: int | None = None
        self.snap: dict[str, Any] | None = None   # the current process's last snapshot
        self.retired_requests = 0  # exchanges counted by this slot's earlier processes
        self.digest: str | None = None
        self.waiters: list[asyncio.Future] = []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def send(self, data: bytes) -> None:
        if self.writer is not None and not self.writer.transport.is_closing():
            self.writer.write(data)

    def requests(self) -> int:
        return self.retired_requests + (self.snap["requests"] if self.snap else 0)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        s = self.settings = settings
        self.slots = [Slot(i) for i in range(s.workers)]
        self.started_at = time.time()
        self.stopping = False
        self.stats = PodStats()
        self.metrics = PodMetrics()
        self.retired: dict[str, Any] = {}  # exited processes' last numbers (counters, no gauges)
        # Pod-level notify delivery: workers decide per rule, the supervisor dedupes across them.
        self.runtime = Runtime(pod=s.pod, workers=s.workers)
        self.gate: dict[tuple[str, str, str], float] = {}
        self.resources = Resources(pod=s.pod)
        self.pusher = (Pusher(s.dashboard, s.dashboard_token, s.pod, self.stats, self.resources)
                       if s.dashboard else None)
        self.reloader = None
        self.rules: tuple[str, Any] | None = None
        self.admin: AdminServer | None = None
        self.holder: socket.socket | None = None
        self.port = 0
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()  # set when stopping: backoff sleeps end early
        self.metrics.add_source(self._own_counters)

    # -- rules: validated once here, compiled by every worker ---------------------------------

    def load_rules(self) -> None:
        """The first load, before any worker starts (RulesInvalid: the pod does not start)."""
        s = self.settings
        if not s.rules:
            return
        from decorator.reload import Reloader
        self.reloader = Reloader(s.rules, build=self._build, on_swap=self._broadcast,
                                 poll_interval=s.reload_poll, watch=s.watch)
        self.reloader.load_initial()

    @staticmethod
    def _build(paths) -> tuple[str, Any]:
        from decorator.rules.isolated import load_isolated
        ruleset = load_isolated(paths)
        return ruleset.digest, ruleset

    def _broadcast(self, ruleset: Any) -> None:
        self.rules = (ruleset.digest, ruleset)
        data = frame({"t": "rules", "digest": ruleset.digest, "ruleset": ruleset})  # pickled once
        for slot in self.slots:
            slot.send(data)

    # -- workers --------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        # Held, never listening: the port stays ours while workers restart, and port 0 is resolved once.
        self.holder = listen_socket(s.host, s.port)
        self.port = self.holder.getsockname()[1]
        for slot in self.slots:
            await self._spawn(slot)
        await self._wait_started()
        if s.admin_port:
            self.admin = AdminServer(self.admin_routes())
            await self.admin.start(s.admin_host, s.admin_port)
        await self.runtime.start()
        if self.pusher is not None:
            await self.pusher.start()
        if self.reloader is not None:
            await self.reloader.start()
        self._tasks.append(asyncio.create_task(self._poll(), name="workers-poll"))
        log.info("listening on %s:%d with %d workers (%s), forwarding to %s:%d%s", s.host, self.port,
                 s.workers, s.workers_reason, s.target_host, s.target_port,
                 f", admin on :{self.admin.port}" if self.admin else "")
        release_memory()

    async def _wait_started(self) -> None:
        pending = {asyncio.ensure_future(slot.ready.wait()): slot for slot in self.slots}
        exits = {asyncio.ensure_future(slot.proc.wait()): slot for slot in self.slots if slot.proc}
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while pending:
                done, _ = await asyncio.wait(set(pending) | set(exits), timeout=deadline - time.monotonic(),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise WorkerFailed(f"workers not listening after {START_TIMEOUT:.0f}s: "
                                       + ", ".join(str(s.index) for s in pending.values()))
                for f in done:
                    if f in exits:
                        slot = exits[f]
                        raise WorkerFailed(f"worker {slot.index} exited ({_exit_text(f.result())}) "
                                           "before it was ready")
                    pending.pop(f)
        finally:
            for f in list(pending) + list(exits):
                f.cancel()

    async def _spawn(self, slot: Slot) -> None:
        parent, child = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "decorator.workers.worker", str(child.fileno()), str(slot.index),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        slot.proc, slot.writer, slot.snap = proc, writer, None
        slot.ready = asyncio.Event()
        slot.started = time.monotonic()
        slot.send(frame({"t": "init", "settings": self.settings, "index": slot.index, "port": self.port,
                         "rules": self.rules}))
        slot.reader_task = asyncio.create_task(self._read(slot, reader), name=f"worker-{slot.index}-read")
        slot.watch_task = asyncio.create_task(self._watch(slot, proc), name=f"worker-{slot.index}-watch")

    async def _read(self, slot: Slot, reader: asyncio.StreamReader) -> None:
        while (msg := await receive(reader)) is not None:
            kind = msg["t"]
            if kind == "snap":
                self.stats.add(msg["stats"])
                slot.snap = msg
                waiters, slot.waiters = slot.waiters, []
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
            elif kind == "notify":
                self._notify(msg)
            elif kind == "ready":
                slot.digest = msg["digest"]
                slot.ready.set()
                log.info("worker %d (pid %d) ready", slot.index, msg["pid"])
            elif kind == "rules":
                if msg["ok"]:
                    slot.digest = msg["digest"]
                else:
                    log.error("worker %d could not install rules %s (%s); it keeps %s", slot.index,
                              msg["digest"][:12], msg["error"], (slot.digest or "none")[:12])

    async def _watch(self, slot: Slot, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        # Its last words (the final snapshot after a drain) are read before its numbers retire.
        if slot.reader_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(slot.reader_task), 2.0)
            except TimeoutError:
                slot.reader_task.cancel()
        if slot.writer is not None:
            slot.writer.close()
        slot.writer = None
        slot.last_exit = code
        slot.ready.clear()
        if slot.snap is not None:
            add_metrics(self.retired, slot.snap["metrics"], gauges=False)
            slot.retired_requests += slot.snap["requests"]
            slot.snap = None
        if self.stopping:
            return
        ran = time.monotonic() - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if ran < STABLE_AFTER else 1
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (slot.quick_deaths - 1))
        slot.restarts += 1
        log.warning("worker %d (pid %d) exited (%s) after %.1fs; restarting in %.1fs (restart %d)",
                    slot.index, proc.pid, _exit_text(code), ran, delay, slot.restarts)
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except TimeoutError:
            pass
        if not self.stopping:
            await self._spawn(slot)

    async def _poll(self) -> None:
        """Every second: ask each worker for a snapshot (the dashboard's deltas flow in with them)."""
        ask = frame({"t": "snap"})
        while True:
            await asyncio.sleep(POLL_EVERY)
            for slot in self.slots:
                if slot.ready.is_set():
                    slot.send(ask)

    async def fresh(self) -> dict[str, Any]:
        """Every live worker's numbers as of now (waiting up to SNAP_TIMEOUT), summed with the
        numbers of processes that exited: the pod's metrics."""
        loop = asyncio.get_running_loop()
        ask = frame({"t": "snap"})
        waits = []
        for slot in self.slots:
            if slot.ready.is_set():
                fut = loop.create_future()
                slot.waiters.append(fut)
                waits.append(fut)
                slot.send(ask)
        if waits:
            await asyncio.wait(waits, timeout=SNAP_TIMEOUT)
        merged = add_metrics({}, self.retired)
        for slot in self.slots:
            if slot.snap is not None:
                add_metrics(merged, slot.snap["metrics"])
        return merged

    # -- notify: one cooldown per pod -----------------------------------------------------------

    def _notify(self, msg: dict[str, Any]) -> None:
        rule, cooldown = msg["rule"], msg["cooldown"]
        if cooldown > 0:
            key = (rule, msg["key"], msg["target"].url)
            now = time.monotonic()
            if now - self.gate.get(key, float("-inf")) < cooldown:
                self.runtime.count("notify_suppressed", rule)  # another worker sent it already
                return
            if len(self.gate) >= MAX_GATE_KEYS and key not in self.gate:
                del self.gate[next(iter(self.gate))]
            self.gate[key] = now
        self.runtime.submit(rule, msg["event"], msg["target"])

    # -- admin port -----------------------------------------------------------------------------

    def admin_routes(self) -> dict:
        return {"/healthz": self._healthz, "/readyz": self._readyz, "/status": self._status,
                "/metrics": self._metrics}

    def _healthz(self):
        return 200, "text/plain", b"ok\n"

    async def _readyz(self):
        if self.stopping:
            return 503, "text/plain", b"draining\n"
        waiting = [str(slot.index) for slot in self.slots if not slot.ready.is_set()]
        if waiting:
            return 503, "text/plain", f"workers not ready: {', '.join(waiting)}\n".encode()
        s = self.settings
        problem = await app_unreachable(s.target_host, s.target_port)
        if problem:
            return 503, "text/plain", problem.encode()
        return 200, "text/plain", b"ready\n"

    async def _metrics(self):
        self.metrics.show(await self.fresh())
        body, ctype = self.metrics.render()
        return 200, ctype, body

    async def _status(self):
        return json_response(self.status(await self.fresh()))

    def status(self, merged: dict[str, Any] | None = None) -> dict[str, Any]:
        """/status; `merged` is `fresh()`'s sum (the rule counters shown come from it)."""
        s = self.settings
        now = time.monotonic()
        workers = []
        for slot in self.slots:
            snap = slot.snap or {}
            workers.append({
                "worker": slot.index,
                "pid": slot.proc.pid if slot.alive else None,
                "ready": slot.ready.is_set(),
                "uptime_s": round(now - slot.started, 1) if slot.alive else None,
                "restarts": slot.restarts,
                "last_exit": _exit_text(slot.last_exit) if slot.last_exit is not None else None,
                "requests": slot.requests(),
                "connections_open": snap.get("connections"),
                "in_flight": snap.get("in_flight"),
                "rss_bytes": _rss(slot.proc.pid) if slot.alive else None,
                "rules": slot.digest,
            })
        return {
            "pod": s.pod,
            "listen": f"{s.host}:{self.port}",
            "target": f"{s.target_host}:{s.target_port}",
            "uptime_s": round(time.time() - self.started_at, 1),
            "draining": self.stopping,
            "workers": {"count": s.workers, "chosen": s.workers_reason,
                        "ready": sum(slot.ready.is_set() for slot in self.slots),
                        "supervisor_pid": os.getpid(), "supervisor_rss_bytes": _rss(os.getpid()),
                        "list": workers},
            "rules": self.reloader.status() if self.reloader is not None else None,
            "rule_counters": ({k: v for k, v in merged["counters"].items() if k in COUNTER_NAMES}
                              if merged is not None and self.reloader is not None else None),
            "telemetry": {"push": self.pusher.status() if self.pusher is not None else None,
                          "requests_recorded": self.stats.requests, "worker_deltas": self.stats.deltas},
            "build": build.summary(),
        }

    def _own_counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "workers": len(self.slots),
            "workers_ready": sum(slot.ready.is_set() for slot in self.slots),
            "worker_requests": {str(slot.index): slot.requests() for slot in self.slots},
            "worker_restarts": {str(slot.index): slot.restarts for slot in self.slots},
            "worker_resident_memory_bytes": {str(slot.index): _rss(slot.proc.pid) for slot in self.slots
                                             if slot.alive},
        }
        out.update((k, v) for k, v in self.runtime.counters.items() if v)
        if self.reloader is not None:
            out.update(self.reloader.counters())
        if self.pusher is not None:
            out.update(self.pusher.counters)
        return out

    # -- stopping -------------------------------------------------------------------------------

    def forward(self, sig: int) -> None:
        for slot in self.slots:
            if slot.alive:
                try:
                    slot.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def stop(self) -> bool:
        """SIGTERM every worker (each drains as one process does), wait for all; True when every
        worker exited 0 within the drain timeout (plus a margin)."""
        if self.stopping:
            return False
        self.stopping = True
        self._wake.set()
        live = sum(slot.alive for slot in self.slots)
        log.info("stopping: draining %d worker(s), up to %.0fs", live, self.settings.drain_timeout)
        t0 = time.monotonic()
        if self.reloader is not None:
            await self.reloader.close()
        for t in self._tasks:
            t.cancel()
        self.forward(signal.SIGTERM)
        watches = [slot.watch_task for slot in self.slots if slot.watch_task is not None]
        clean = True
        if watches:
            _, late = await asyncio.wait(watches, timeout=self.settings.drain_timeout + 5.0)
            if late:
                clean = False
                log.warning("%d worker(s) still running after the drain timeout: killing them", len(late))
                self.forward(signal.SIGKILL)
                await asyncio.wait(late, timeout=5.0)
        clean = clean and all(slot.last_exit in (0, None) for slot in self.slots)
        if self.admin is not None:
            await self.admin.close()
        await self.runtime.close()  # the workers' last notifications
        if self.pusher is not None:
            await self.pusher.close()  # the workers' last numbers
        if self.holder is not None:
            self.holder.close()
        log.info("stopped after %.2fs%s", time.monotonic() - t0, "" if clean else " (not clean)")
        return clean


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"status {code}"


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def _main(settings: Settings) -> int:
    sup = Supervisor(settings)
    sup.load_rules()  # RulesInvalid goes up to the CLI: every error line, exit 1, nothing started
    try:
        await sup.start()
    except OSError as e:
        log.error("cannot listen: %s", e.strerror or e)
        await sup.stop()
        return 1
    except WorkerFailed as e:
        log.error("cannot start: %s", e)
        await sup.stop()
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if sup.reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, sup.reloader.trigger, "SIGHUP")
    else:
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP: no rules configured, nothing to reload"))
    await stop.wait()
    return 0 if await sup.stop() else 1


def run(settings: Settings) -> int:
    setup_logging(settings.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_main(settings))
    return uvloop.run(_main(settings))
