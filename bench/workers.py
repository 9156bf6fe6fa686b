"""Workers: what a second worker adds on a 2-core box, how evenly the kernel spreads connections, and
the pod's memory for 1, 2 and 4 workers.

    .venv/bin/python bench/workers.py                 # the figures for docs/benchmarks.md (~3.5 min)
    .venv/bin/python bench/workers.py --smoke         # every step, a few seconds each (not figures)
    .venv/bin/python bench/workers.py --only rss      # memory only (no load: fine on a busy box)

1. throughput: `decorator run --workers 1`, then `--workers 2`, against the same upstream (uvloop,
   `hello world\\n`, keep-alive), wrk -t1 -c50 for --duration seconds each, NOTHING pinned: wrk,
   the upstream and the workers share the box's cores, so the second worker's gain is measured
   under contention, as the issue asks. Per run: req/s, the pod's CPU (user+system of the
   supervisor and every worker, from /proc) per request, the ratio 2 workers / 1.
2. share: `--workers 2` under wrk for --share-seconds (60), each worker's share of the requests
   from /metrics (`decorator_worker_requests_total`); target: each within 35-65 %.
3. rss: `--workers 1, 2, 4` idle (1 s after start, one request through each worker first): every
   process's VmRSS and PSS (smaps_rollup), the pod's sums, and the cost of each extra worker
   ((pod at 4 - pod at 2) / 2); target: <= 25 MB.

Run it alone on the box: the first two steps are wall-clock figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss_soak import start_upstream  # bench/ is a directory of scripts, not a package

REPO = Path(__file__).resolve().parent.parent
EXTRA_WORKER_LIMIT_MB = 25.0
SHARE_RANGE = (0.35, 0.65)


def free_port(low: int = 20000, high: int = 32000) -> int:
    """Below the ephemeral range: wrk's own source ports cannot take it before the pod binds it."""
    import random
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise SystemExit("workers bench: no free port")


class Pod:
    """`decorator run --workers N` with an admin port; its log in a temporary file."""

    def __init__(self, workers: int, upstream: int) -> None:
        self.port, self.admin = free_port(), free_port()
        fd, name = tempfile.mkstemp(prefix=f"bench-workers-{workers}-", suffix=".log")
        self.log = os.fdopen(fd, "wb")
        self.log_name = name
        env = {k: v for k, v in os.environ.items()
               if k not in ("RULES", "DASHBOARD", "MOTHERSHIP", "LOG_LEVEL", "WORKERS")}
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "decorator", "run", "--workers", str(workers), "--host", "127.0.0.1",
             "--port", str(self.port), "--admin-port", str(self.admin), "--target", str(upstream)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.workers = workers
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"workers bench: decorator exited ({self.proc.returncode}); log {self.log_name}")
            if re.search(r"(decorator|decorator\.workers): listening on", Path(self.log_name).read_text()):
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"workers bench: decorator not listening after 60s; log {self.log_name}")

    def pids(self) -> list[int]:
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            children = []
        return [self.proc.pid, *map(int, children)]

    def cpu_seconds(self) -> float:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total

    def worker_requests(self) -> dict[str, float]:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10).read().decode()
        return {m.group(1): float(m.group(2)) for m in
                re.finditer(r'^decorator_worker_requests_total\{worker="(\d+)"\} (\S+)$', body, re.MULTILINE)}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log_name)
        return self.proc.returncode


def wrk(port: int, seconds: int, conns: int) -> tuple[int, int]:
    """wrk -t1 (not pinned) -> (requests, errors: socket errors + non-2xx)."""
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
                         check=False, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"^\s*(\d+) requests in", out, re.MULTILINE)
    if not m:
        raise SystemExit(f"workers bench: could not read wrk's output:\n{out}")
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return int(m.group(1)), errors + (int(non2xx.group(1)) if non2xx else 0)


def throughput(upstream: int, workers: int, seconds: int, conns: int) -> dict:
    pod = Pod(workers, upstream)
    try:
        wrk(pod.port, 1, conns)  # warm-up: pools and caches filled before the measured run
        cpu0, t0 = pod.cpu_seconds(), time.monotonic()
        n, errors = wrk(pod.port, seconds, conns)
        cpu, wall = pod.cpu_seconds() - cpu0, time.monotonic() - t0
    finally:
        status = pod.stop()
    row = {"workers": workers, "requests": n, "errors": errors, "rps": n / seconds,
           "cpu_us_per_request": cpu / n * 1e6 if n else None, "pod_cpu_cores": cpu / wall, "exit": status}
    print(f"  --workers {workers}: {row['rps']:>9,.0f} req/s  {row['cpu_us_per_request']:6.1f} us CPU/request  "
          f"pod {row['pod_cpu_cores']:.2f} cores  errors {errors}", flush=True)
    return row


def share(upstream: int, seconds: int, conns: int) -> dict:
    pod = Pod(2, upstream)
    try:
        before = pod.worker_requests()
        n, errors = wrk(pod.port, seconds, conns)
        after = pod.worker_requests()
    finally:
        status = pod.stop()
    served = {w: after[w] - before.get(w, 0.0) for w in after}
    total = sum(served.values()) or 1.0
    shares = {w: v / total for w, v in served.items()}
    ok = all(SHARE_RANGE[0] <= s <= SHARE_RANGE[1] for s in shares.values())
    print(f"  {seconds}s, {n:,} requests: " + ", ".join(f"worker {w} {s:.1%}" for w, s in sorted(shares.items()))
          + f" (target each {SHARE_RANGE[0]:.0%}-{SHARE_RANGE[1]:.0%}): {'PASS' if ok else 'FAIL'}", flush=True)
    return {"seconds": seconds, "requests": n, "errors": errors, "served": served, "shares": shares, "ok": ok,
            "exit": status}


def _mem_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def memory(upstream: int, counts: list[int]) -> dict:
    rows = {}
    for n in counts:
        pod = Pod(n, upstream)
        try:
            for _ in range(20 * n):  # new connections: every worker has served (kernel-spread)
                urllib.request.urlopen(f"http://127.0.0.1:{pod.port}/", timeout=10).read()
            time.sleep(1.0)
            procs = {pid: _mem_kb(pid) for pid in pod.pids()}
        finally:
            pod.stop()
        rss, pss = sum(r for r, _ in procs.values()), sum(p for _, p in procs.values())
        rows[n] = {"rss_kb": rss, "pss_kb": pss, "processes": [{"pid": k, "rss_kb": r, "pss_kb": p}
                                                              for k, (r, p) in procs.items()]}
        each = ", ".join(f"{r / 1024:.1f}" for r, _ in procs.values())
        print(f"  --workers {n}: pod RSS {rss / 1024:6.1f} MB, PSS {pss / 1024:6.1f} MB  "
              f"({len(procs)} processes, RSS MB each: {each})", flush=True)
    out = {"pods": rows}
    if 2 in rows and 4 in rows:
        extra_rss = (rows[4]["rss_kb"] - rows[2]["rss_kb"]) / 2 / 1024
        extra_pss = (rows[4]["pss_kb"] - rows[2]["pss_kb"]) / 2 / 1024
        ok = extra_rss <= EXTRA_WORKER_LIMIT_MB
        print(f"  each extra worker ((4 - 2) / 2): RSS {extra_rss:.1f} MB (target <= {EXTRA_WORKER_LIMIT_MB:.0f}): "
              f"{'PASS' if ok else 'FAIL'}; PSS {extra_pss:.1f} MB (shared pages counted once)", flush=True)
        out.update(extra_worker_rss_mb=extra_rss, extra_worker_pss_mb=extra_pss, ok=ok)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=30, help="seconds of wrk per throughput run (default 30)")
    p.add_argument("--share-seconds", type=int, default=60, help="seconds of the share run (default 60)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--only", choices=["throughput", "share", "rss"], action="append",
                   help="run only these steps (repeatable)")
    p.add_argument("--smoke", action="store_true", help="2-3 s per step: checks the script, not figures")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if args.smoke:
        args.duration, args.share_seconds = 2, 3
    steps = args.only or ["throughput", "share", "rss"]
    if {"throughput", "share"} & set(steps) and shutil.which("wrk") is None:
        raise SystemExit("workers bench: wrk not found (apt-get install wrk), or use --only rss")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    up_proc, up_port = start_upstream()
    result: dict = {"cpus": len(os.sched_getaffinity(0)), "connections": args.connections}
    ok = True
    try:
        if "throughput" in steps:
            print(f"throughput: wrk -t1 -c{args.connections} -d{args.duration}s, nothing pinned "
                  f"({result['cpus']} CPUs shared by wrk, the upstream and the pod)", flush=True)
            one = throughput(up_port, 1, args.duration, args.connections)
            two = throughput(up_port, 2, args.duration, args.connections)
            gain = two["rps"] / one["rps"] if one["rps"] else None
            cpu_ratio = (two["cpu_us_per_request"] / one["cpu_us_per_request"]
                         if one["cpu_us_per_request"] and two["cpu_us_per_request"] else None)
            print(f"  2 workers / 1: {gain:.2f}x req/s, {cpu_ratio:.2f}x CPU per request", flush=True)
            result["throughput"] = {"1": one, "2": two, "rps_ratio": gain, "cpu_per_request_ratio": cpu_ratio}
            ok = ok and one["errors"] == 0 and two["errors"] == 0
        if "share" in steps:
            print(f"share: --workers 2 under wrk -c{args.connections} for {args.share_seconds}s", flush=True)
            result["share"] = share(up_port, args.share_seconds, args.connections)
            ok = ok and result["share"]["ok"] and result["share"]["errors"] == 0
        if "rss" in steps:
            print("rss: idle pods, 1 s after start and one request through each worker", flush=True)
            result["rss"] = memory(up_port, [1, 2, 4])
            ok = ok and result["rss"].get("ok", True)
    finally:
        up_proc.terminate()
        up_proc.join(5)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
