"""One worker process of a multi-worker pod: `python -m decorator.workers.worker FD INDEX`.

Owns a worker's life: it takes its settings and the current rules from the supervisor over the
channel on fd FD, serves on its own SO_REUSEPORT socket with the same App as a single process, and
answers the supervisor (snapshots, new rules). It never reads rules files, never listens on the
admin port and never pushes telemetry: the supervisor does those once for the pod.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import replace
from typing import Any

from decorator.actions.runtime import NotifyTarget, Runtime
from decorator.app import App, setup_logging
from decorator.telemetry.merge import export_metrics
from decorator.workers.channel import frame, listen_socket, receive

log = logging.getLogger("decorator.worker")

# Notifications waiting for the supervisor past this are dropped (and counted): a stuck supervisor
# must not grow a worker's memory.
_MAX_NOTIFY_BACKLOG = 4 * 1024 * 1024


class WorkerRuntime(Runtime):
    """Hands notifications to the supervisor, which applies the pod-wide cooldown and delivers."""

    def __init__(self, send, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._send = send

    def submit(self, rule: str, event: dict, target: NotifyTarget, key: str = "", cooldown: float = 0.0) -> bool:
        if self._send({"t": "notify", "rule": rule, "event": event, "target": target, "key": key,
                       "cooldown": cooldown}, optional=True):
            return True
        self.count("notify_dropped", rule)
        return False


class Worker:
    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.app: App | None = None
        self.digest: str | None = None
        self.stop = asyncio.Event()

    def send(self, msg: dict[str, Any], optional: bool = False) -> bool:
        transport = self.writer.transport
        if transport.is_closing():
            return False
        if optional and transport.get_write_buffer_size() > _MAX_NOTIFY_BACKLOG:
            return False
        self.writer.write(frame(msg))
        return True

    async def run(self) -> int:
        init = await receive(self.reader)
        if init is None:
            return 1
        settings = init["settings"]
        setup_logging(settings.log_level)
        for h in logging.getLogger("decorator").handlers:
            h.setFormatter(logging.Formatter(
                f"%(asctime)s %(levelname)s %(name)s[worker {self.index}]: %(message)s", "%Y-%m-%dT%H:%M:%S"))
        # The supervisor owns the admin port, the rules files and the push to the dashboard.
        s = replace(settings, admin_port=0, dashboard=None, rules=())
        app = self.app = App(s)
        if init["rules"] is not None:
            app.runtime = WorkerRuntime(self.send, recorder=app.telemetry.aggregator, pod=s.pod,
                                        workers=s.workers, worker=self.index)
            app.telemetry.add_source(lambda: app.runtime.counters)
            digest, ruleset = init["rules"]
            if not self.install(digest, ruleset):
                return 1
        else:
            app.proxy.hooks = app.telemetry.hooks
        app.listen_sock = listen_socket(s.host, init["port"])
        await app.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        # A SIGHUP to the whole process group must neither kill a worker nor reload it: the
        # supervisor reloads once and sends every worker the result.
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.send({"t": "ready", "pid": os.getpid(), "digest": self.digest})
        control = asyncio.create_task(self._control())
        await self.stop.wait()
        control.cancel()
        await app.stop()
        # The last numbers (what the drain finished) reach the pod's totals before the exit.
        self.send(self.snapshot(final=True))
        try:
            await asyncio.wait_for(self.writer.drain(), 5.0)
        except (TimeoutError, ConnectionError):
            pass
        self.writer.close()
        return 0

    def install(self, digest: str, ruleset: Any, hooks: Any = None) -> bool:
        """Compile the rules the supervisor validated (unless `hooks` are the compiled ones) and swap
        them in; on failure keep the last good."""
        from decorator.rules.compile import compile_rules
        app = self.app
        assert app is not None and app.runtime is not None
        try:
            app._swap(hooks if hooks is not None else compile_rules(ruleset, app.runtime))
        except Exception as e:  # validated already: a failure here is a bug, keep the traceback
            log.exception("installing rules %s failed; keeping %s", digest[:12], (self.digest or "none")[:12])
            self.send({"t": "rules", "ok": False, "digest": digest, "error": f"{type(e).__name__}: {e}"})
            return False
        self.digest = digest
        self.send({"t": "rules", "ok": True, "digest": digest})
        return True

    async def reinstall(self, digest: str, ruleset: Any) -> None:
        """A reload: compiled in a thread as a single process's reload is (the proxy shares this
        loop), swapped in on the loop. Messages are handled in order, so rule sets never cross."""
        from decorator.rules.compile import compile_rules
        assert self.app is not None
        try:
            hooks = await asyncio.to_thread(compile_rules, ruleset, self.app.runtime)
        except Exception as e:
            log.exception("compiling rules %s failed; keeping %s", digest[:12], (self.digest or "none")[:12])
            self.send({"t": "rules", "ok": False, "digest": digest, "error": f"{type(e).__name__}: {e}"})
            return
        self.install(digest, ruleset, hooks)

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        app = self.app
        assert app is not None
        return {"t": "snap", "final": final, "metrics": export_metrics(app.telemetry.metrics),
                "stats": app.telemetry.aggregator.snapshot_delta(app.settings.pod),
                "requests": app.proxy.stats["exchanges"], "connections": len(app.proxy.connections),
                "in_flight": app.proxy.stats["in_flight"], "draining": app.proxy.draining,
                "digest": self.digest}

    async def _control(self) -> None:
        while True:
            msg = await receive(self.reader)
            if msg is None:
                if not self.stop.is_set():
                    log.warning("the supervisor is gone: draining and exiting")
                    self.stop.set()
                return
            kind = msg["t"]
            if kind == "snap":
                self.send(self.snapshot())
            elif kind == "rules":
                await self.reinstall(msg["digest"], msg["ruleset"])


async def _main(fd: int, index: int) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    return await Worker(index, reader, writer).run()


def main(argv: list[str]) -> int:
    fd, index = int(argv[0]), int(argv[1])
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_main(fd, index))
    return uvloop.run(_main(fd, index))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
