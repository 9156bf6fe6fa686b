"""`make demo`: a demo app, the dashboard and `decorator run` in front of the app, with the example rules
in examples/demo/rules/ and a gentle load generator so the charts move. Ctrl-C stops everything.

Owns the demo's process life (ports, start order, readiness, SIGTERM then wait) and the printed guide.
Standard library only; drives decorator through its CLI as a user would, importing nothing from it.

    .venv/bin/python examples/demo/demo.py [--no-load] [--duration N] [--ports auto] [--db PATH]
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# The ports the README promises; any that is taken is replaced by a free one (and said so).
PREFERRED = {"sidecar": 8080, "app": 8087, "dashboard": 8088, "admin": 9090}
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0         # the sidecar drains in-flight requests on SIGTERM (15 s by default)
FRIENDLY_MARK = b"served by the decorator sidecar"   # in pages/404.html

# What the load generator asks for, with weights: mostly fine, some slow, some 404 and 5xx.
PATHS = [("GET", "/", 6), ("GET", "/about", 2), ("GET", "/api/users", 4), ("GET", "/api/users/{id}", 8),
         ("GET", "/api/users/404", 1), ("POST", "/api/users", 1), ("GET", "/slow", 3), ("GET", "/flaky", 3),
         ("GET", "/old-page", 1), ("GET", "/favicon.ico", 1)]


# -- ports ----------------------------------------------------------------------------------------
def port_free(port: int) -> bool:
    with socket.socket() as s:
        # the servers set SO_REUSEADDR, so a port held only by TIME_WAIT sockets counts as free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


def choose_ports(mode: str) -> tuple[dict[str, int], list[str]]:
    """The preferred ports where free (mode 'default'), else free ones; 'auto' always picks free ones."""
    ports: dict[str, int] = {}
    notes: list[str] = []
    for name, want in PREFERRED.items():
        if mode == "default" and port_free(want):
            ports[name] = want
        else:
            ports[name] = free_port(set(ports.values()) | set(PREFERRED.values()))
            if mode == "default":
                notes.append(f"port {want} is taken: the {name} uses {ports[name]} instead")
    return ports, notes


# -- children -------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the child: get SIGTERM if the demo itself is killed, so nothing is left running (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """One process of the demo, its output in `<logdir>/<name>.log`."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        with open(self.log, "wb") as out:
            # own process group: Ctrl-C reaches only the demo, which then stops the children in order
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, process_group=0,
                                         # children start before any load thread exists
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in lines[-n:])

    def wait_ready(self, port: int, stop: threading.Event) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if stop.is_set():
                raise Interrupted
            if self.proc.poll() is not None:
                raise DemoError(f"{self.name} exited with status {self.proc.returncode} before listening "
                                f"on :{port}; its log ({self.log}):\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise DemoError(f"{self.name} did not listen on :{port} within {READY_TIMEOUT:.0f}s; "
                        f"its log ({self.log}):\n{self.tail()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} did not stop within {STOP_TIMEOUT:.0f}s: killing it", flush=True)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class DemoError(Exception):
    """The demo could not start: one message, exit 1."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while starting: stop what runs, exit 0."""


# -- load -----------------------------------------------------------------------------------------
class Load:
    """A few threads sending mixed requests through the sidecar at about `rate` per second."""

    def __init__(self, port: int, rate: float, stop: threading.Event, workers: int = 4) -> None:
        self.port, self.stop = port, stop
        self.interval = workers / rate
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
                        for i in range(workers)]
        self.paths = [(m, p) for m, p, w in PATHS for _ in range(w)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(5)

    def _run(self) -> None:
        rng = random.Random()
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic() + rng.random() * self.interval
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval * rng.uniform(0.5, 1.5)
            method, path = rng.choice(self.paths)
            path = path.replace("{id}", str(rng.randint(1, 10)))
            body = b'{"name": "Alan"}' if method == "POST" else None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                headers = {"Content-Type": "application/json"} if body else {}
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                key = f"{resp.status // 100}xx"
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                key = "errors"
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.counts[key] += 1
        if conn is not None:
            conn.close()

    def summary(self) -> str:
        with self.lock:
            total = sum(self.counts.values())
            parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return f"{total} requests ({parts or 'none'})"


# -- the guide ------------------------------------------------------------------------------------
def friendly_404(port: int) -> bool:
    """Does the sidecar swap the app's 404 for the rules' page? (Says whether the rules are live.)"""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/no-such-page")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    except (OSError, http.client.HTTPException):
        return False
    return resp.status == 404 and FRIENDLY_MARK in body


def guide(ports: dict[str, int], rules_live: bool, load: bool, duration: float | None) -> str:
    s, a, d, m = (f"http://127.0.0.1:{ports[k]}" for k in ("sidecar", "app", "dashboard", "admin"))
    lines = [
        "",
        "decorator demo is running" + (f" for {duration:g}s" if duration else "  (Ctrl-C stops everything)"),
        "",
        f"  app through the sidecar  {s}/",
        f"  the app directly         {a}/",
        f"  dashboard                {d}/",
        f"  metrics                  {m}/metrics",
        f"  status                   {m}/status",
        "",
        "  rules: " + ("live (examples/demo/rules/: security headers, friendly 404, timing, alert on 5xx)"
                       if rules_live else "NOT live: the sidecar did not serve the friendly 404 page, so it "
                       "forwards without rules (see the decorator log)"),
        "  load:  " + ("about 30 requests/s of mixed traffic (some 404 and 5xx); --no-load turns it off"
                       if load else "off (--no-load)"),
        "",
        "try:",
        f"  curl -i {s}/api/users/3              # compare with {a}/api/users/3: security headers added",
        f"  curl -i {s}/no-such-page             # the app's 404, replaced by a friendly page",
        f"  curl -i {s}/flaky                    # fails one time in four: an alert shows on the dashboard",
        f"  curl -s {m}/metrics | grep http_server_request_duration",
        f"  curl -s {m}/status",
        "",
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the decorator demo: app, dashboard and sidecar.")
    p.add_argument("--no-load", action="store_true", help="do not start the load generator")
    p.add_argument("--duration", type=float, metavar="N", help="stop after N seconds (default: until Ctrl-C)")
    p.add_argument("--ports", choices=["default", "auto"], default="default",
                   help="default: 8080 sidecar, 8087 app, 8088 dashboard, 9090 admin where free; "
                   "auto: free ports only")
    p.add_argument("--db", metavar="PATH",
                   help="dashboard SQLite file (default .demo/dashboard.db in the repo)")
    p.add_argument("--rate", type=float, default=30.0, help="load generator requests per second (default 30)")
    args = p.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be a positive number of seconds")
    if args.rate <= 0:
        p.error("--rate must be positive")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    ports, notes = choose_ports(args.ports)
    for note in notes:
        print(note, flush=True)
    db = Path(args.db) if args.db else REPO / ".demo" / "dashboard.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    logdir = db.parent / "demo-logs"   # beside the database (.demo/ by default, git-ignored)
    logdir.mkdir(exist_ok=True)
    # the demo sets every port and path by flag; a token meant for another dashboard would only get 401s
    env = {k: v for k, v in os.environ.items()
           if k not in ("DASHBOARD_TOKEN", "RULES", "PORT", "TARGET_PORT")}
    env.update(POD_NAME=env.get("POD_NAME", "demo-pod"), PYTHONUNBUFFERED="1",
               DEMO_EVENTS_URL=f"http://127.0.0.1:{ports['dashboard']}/events")
    cli = [sys.executable, "-m", "decorator"]
    children: list[Child] = []
    load: Load | None = None
    status = 0
    starting = False
    try:
        print(f"starting the demo app, the dashboard and the sidecar (logs in {logdir})", flush=True)
        app = Child("app", [sys.executable, str(HERE / "app.py"), "--port", str(ports["app"])], env, logdir)
        children.append(app)
        dash = Child("dashboard", [*cli, "dashboard", "--host", "127.0.0.1",
                                   "--port", str(ports["dashboard"]), "--db", str(db)], env, logdir)
        children.append(dash)
        app.wait_ready(ports["app"], stop)
        dash.wait_ready(ports["dashboard"], stop)
        sidecar = Child("decorator", [*cli, "run", "--host", "127.0.0.1", "--port", str(ports["sidecar"]),
                                      "--target", str(ports["app"]), "--admin-port", str(ports["admin"]),
                                      "--rules", str(HERE / "rules"),
                                      "--dashboard", f"http://127.0.0.1:{ports['dashboard']}"], env, logdir)
        children.append(sidecar)
        sidecar.wait_ready(ports["sidecar"], stop)
        sidecar.wait_ready(ports["admin"], stop)
        print(guide(ports, friendly_404(ports["sidecar"]), not args.no_load, args.duration), flush=True)
        if not args.no_load:
            load = Load(ports["sidecar"], args.rate, stop)
            load.start()
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.is_set():
            left = deadline - time.monotonic() if deadline else 0.5
            if left <= 0:
                break
            stop.wait(min(left, 0.5))
            dead = [c for c in children if c.proc.poll() is not None]
            if dead:
                for c in dead:
                    print(f"{c.name} exited unexpectedly (status {c.proc.returncode}); its log ({c.log}):\n"
                          f"{c.tail()}", flush=True)
                status = 1
                break
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr, flush=True)
        status = 1
    except Interrupted:
        # children still starting may not handle SIGTERM yet: their exit status says nothing
        print("interrupted while starting", flush=True)
        starting = True
    finally:
        stop.set()
        if load is not None:
            load.join()
            print(f"load generator: {load.summary()}", flush=True)
        print("stopping: sidecar (drains in-flight requests), dashboard, app", flush=True)
        # the sidecar first, so nothing it forwards or pushes loses its other end mid-request
        for child in reversed(children):
            rc = child.stop()
            if rc != 0 and status == 0 and not starting:
                print(f"{child.name} exited with status {rc} (log: {child.log})", flush=True)
                status = 1
    print("demo stopped" if status == 0 else "demo stopped with errors", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
