"""RSS soak: is `decorator run` under 40 MB idle, and does its memory stay flat over a million requests?

Starts a fast upstream (uvloop, "hello world\\n", keep-alive) and `decorator run` on free ports, reads
the decorator's VmRSS idle, then drives --requests requests through it with wrk (-c50, in rounds of
about 100k; an asyncio client when wrk is missing) and samples VmRSS after each round. A benchmark
script, not a test: it prints the figures and exits 1 when a target is missed.

    .venv/bin/python bench/rss_soak.py [--requests 1000000] [--rules bench/rules/card.yaml] [--json OUT]

Flat means: max/min of the samples taken after the first 200k requests is at most 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROUND = 100_000          # requests per sample
MAX_ROUND_S = 60         # one wrk run never lasts longer than this, whatever the measured rate
WARMUP = 200_000         # samples before this many requests are not judged (pools, caches, arenas fill)
IDLE_LIMIT_MB = 40.0
FLAT_LIMIT = 1.10
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n"


# -- the upstream: answers every request head with the same 12-byte body ---------------------------
class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        # wrk sends GETs without bodies, so each blank line ends one request; pipelined heads
        # in one read get one answer each.
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(RESPONSE * n)


def _serve_upstream(conn) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", 0, backlog=4096)
        conn.send(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    uvloop.run(main())


def start_upstream() -> tuple[multiprocessing.Process, int]:
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_serve_upstream, args=(child,), daemon=True)
    proc.start()
    if not parent.poll(15):
        proc.kill()
        raise SystemExit("rss_soak: the upstream did not start")
    return proc, parent.recv()


# -- helpers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"rss_soak: decorator exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"rss_soak: decorator did not listen on :{port} within {timeout:.0f}s")


def pin(pid: int, cpu: int) -> None:
    """Proxy alone on CPU 1, wrk and the upstream on CPU 0, as peers.sh places them."""
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError:
            pass


# -- load -----------------------------------------------------------------------------------------
def wrk_round(url: str, seconds: int, conns: int) -> tuple[int, int]:
    """One wrk run -> (requests completed, errors: socket errors + non-2xx)."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=seconds + 30,
                         preexec_fn=lambda: pin(0, 0)).stdout
    m = re.search(r"^\s*(\d+) requests in", out, re.MULTILINE)
    if not m:
        raise SystemExit(f"rss_soak: could not read wrk's output:\n{out}")
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return int(m.group(1)), errors + (int(non2xx.group(1)) if non2xx else 0)


async def _client_round(port: int, n: int, conns: int) -> tuple[int, int]:
    """Fallback without wrk: `conns` keep-alive connections sending GET / until n are answered."""
    req = b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n"
    left = [n]
    errors = [0]

    async def one() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] > 0:
                left[0] -= 1
                w.write(req)
                head = await r.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                await r.readexactly(length)
                if not head.startswith(b"HTTP/1.1 2"):
                    errors[0] += 1
        finally:
            w.close()

    results = await asyncio.gather(*(one() for _ in range(conns)), return_exceptions=True)
    errors[0] += sum(isinstance(x, Exception) for x in results)
    return n - max(left[0], 0), errors[0]


class Stalled(Exception):
    """The decorator answered nothing in a whole round, or the soak ran out of time."""


def drive(port: int, total: int, conns: int, sample, max_seconds: float) -> tuple[list[tuple[int, int]], int]:
    """Send `total` requests in rounds of about ROUND, calling sample() after each -> samples, errors."""
    url = f"http://127.0.0.1:{port}/"
    samples: list[tuple[int, int]] = []
    done = errors = 0
    deadline = time.monotonic() + max_seconds
    use_wrk = shutil.which("wrk") is not None
    if use_wrk:
        # a short round to learn the rate, so the next rounds last about ROUND requests each
        n, errors = wrk_round(url, 2, conns)
        if n == 0:
            raise Stalled("no request was answered in the first 2 s")
        done, rate = n, n / 2
    else:
        print("  (wrk not found: using the slower asyncio client)", flush=True)
    while done < total:
        if time.monotonic() > deadline:
            raise Stalled(f"only {done:,} of {total:,} requests within --max-seconds {max_seconds:g}")
        want = min(ROUND - done % ROUND or ROUND, total - done)
        if use_wrk:
            seconds = min(max(1, round(want / rate)), MAX_ROUND_S)
            n, e = wrk_round(url, seconds, conns)
            rate = n / seconds
        else:
            n, e = asyncio.run(asyncio.wait_for(_client_round(port, want, conns), MAX_ROUND_S))
        if n == 0:
            raise Stalled(f"no request was answered in a round, after {done:,}")
        done, errors = done + n, errors + e
        samples.append((done, sample()))
        print(f"  {done:>10,} requests  RSS {samples[-1][1] / 1024:7.1f} MB", flush=True)
    return samples, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1_000_000, help="requests to send (default 1,000,000)")
    p.add_argument("--connections", type=int, default=50, help="concurrent connections (default 50)")
    p.add_argument("--rules", nargs="+", metavar="PATH", help="run the decorator with these rules")
    p.add_argument("--decorator", default=str(REPO / ".venv" / "bin" / "decorator"),
                   help="the decorator command (default: the project's venv)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    p.add_argument("--max-seconds", type=float, default=900, help="give up after this long (default 900)")
    args = p.parse_args(argv)
    if args.requests < 1:
        p.error("--requests must be at least 1")
    # SIGTERM (e.g. run.sh interrupted) unwinds through the finally below, so no child outlives us
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    # The decorator's output goes to a file, not a pipe: a chatty decorator must never block on a
    # full pipe mid-soak. Kept (and named) when the soak fails.
    with tempfile.NamedTemporaryFile(prefix="rss-soak-decorator-", suffix=".log", delete=False) as log:
        status = soak(args, log)
    if status == 0:
        os.unlink(log.name)
    else:
        print(f"decorator's log: {log.name}")
    return status


def soak(args: argparse.Namespace, log) -> int:
    up_proc, up_port = start_upstream()
    pin(up_proc.pid, 0)
    port = free_port()
    cmd = [args.decorator, "run", "--port", str(port), "--host", "127.0.0.1", "--target", str(up_port),
           "--admin-port", "0"]
    if args.rules:
        cmd += ["--rules", *args.rules]
    # settings exported for other purposes (rules, a dashboard, debug logs) must not leak in
    env = {k: v for k, v in os.environ.items() if k not in ("RULES", "DASHBOARD", "MOTHERSHIP", "LOG_LEVEL")}
    dec = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    idle = 0
    try:
        pin(dec.pid, 1)
        wait_listening(port, dec)
        time.sleep(1.0)  # let start-up allocations settle before calling it idle
        idle = rss_kb(dec.pid)
        print(f"decorator pid {dec.pid} on :{port} -> upstream :{up_port}"
              f"{' with rules ' + ' '.join(args.rules) if args.rules else ' (no rules)'}")
        print(f"idle RSS {idle / 1024:.1f} MB; sending {args.requests:,} requests, -c{args.connections}",
              flush=True)
        samples, errors = drive(port, args.requests, args.connections, lambda: rss_kb(dec.pid),
                                args.max_seconds)
        if dec.poll() is not None:
            raise Stalled(f"decorator died (status {dec.returncode})")
    except Stalled as e:
        print(f"FAIL: {e} (decorator {'alive' if dec.poll() is None else 'dead'})")
        if args.json:
            Path(args.json).write_text(json.dumps({"idle_rss_kb": idle, "error": str(e)}))
        return 1
    finally:
        if dec.poll() is None:
            dec.send_signal(signal.SIGTERM)
            try:
                dec.wait(20)
            except subprocess.TimeoutExpired:
                dec.kill()
                dec.wait()
        up_proc.terminate()
        up_proc.join(5)

    judged = [kb for n, kb in samples if n > WARMUP] or [kb for _, kb in samples[-1:]]
    spread = max(judged) / min(judged) if judged and min(judged) else None
    idle_ok = idle / 1024 < IDLE_LIMIT_MB
    flat_ok = spread is not None and spread <= FLAT_LIMIT
    done = samples[-1][0] if samples else 0
    print(f"idle RSS   {idle / 1024:.1f} MB (target < {IDLE_LIMIT_MB:.0f} MB): "
          f"{'PASS' if idle_ok else 'FAIL'}")
    if spread is not None:
        span = f"after {WARMUP // 1000}k" if samples[-1][0] > WARMUP else "(too few requests to judge)"
        print(f"flat       max/min {span} = {spread:.3f} ({min(judged) / 1024:.1f}-"
              f"{max(judged) / 1024:.1f} MB, target <= {FLAT_LIMIT:.2f}): {'PASS' if flat_ok else 'FAIL'}")
    print(f"errors     {errors} (socket errors + non-2xx) over {done:,} requests")
    if dec.returncode != 0:
        print(f"decorator exited with status {dec.returncode} on SIGTERM")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "requests": done, "idle_rss_kb": idle, "samples": samples, "flat_spread": spread,
            "errors": errors, "idle_ok": idle_ok, "flat_ok": flat_ok}, indent=1))
    return 0 if idle_ok and flat_ok and errors == 0 and dec.returncode == 0 else 1

if __name__ == "__main__":
    sys.exit(main())
