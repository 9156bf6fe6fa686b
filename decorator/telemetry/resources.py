"""Pod resources: what the seed sent (node memory, per-CPU times, load) and the container's cgroup numbers.

Owns reading /proc and cgroup v2 (v1 fallback) files under an injectable root, and the ResourcesPayload
dict. Must not import rules or proxy; it reads files only, never the network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# A v1 limit this large means "no limit" (the kernel reports PAGE_COUNTER_MAX rounded to pages).
_UNLIMITED = 1 << 60
_CPUINFO_EVERY = 30.0   # seconds: models don't change and reading cpuinfo can be slow on big nodes


def pod_name(env: Mapping[str, str] | None = None) -> str:
    """POD_NAME (the downward API), else HOSTNAME (the pod's name in Kubernetes), else the node name."""
    env = os.environ if env is None else env
    return env.get("POD_NAME") or env.get("HOSTNAME") or os.uname().nodename


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _keyed(text: str | None) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.stat) as a dict; lines that don't parse are skipped."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


def parse_cpu_list(text: str | None) -> int | None:
    """How many CPUs a cpuset list names (`0-3,8,10-11` -> 7); None when empty or malformed."""
    n = 0
    for part in (text or "").strip().split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            return None
        n += int(hi) - int(lo) + 1 if dash else 1
    return n or None


def parse_proc_cgroup(text: str | None) -> tuple[str | None, dict[str, str]]:
    """/proc/self/cgroup -> (v2 path or None, {v1 controller: path})."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "":
            v2 = path
        else:
            for c in ctrls.split(","):
                if c:
                    v1[c] = path
    return v2, v1


class Cgroup:
    """Where this process's cgroup files are, found once; `read()` then reads only those files.

    For each value the v2 file is tried first and the v1 file second, which also covers hybrid hosts
    (v1 controllers with an empty v2 tree). A path from /proc/self/cgroup is tried under the mount
    first, then the mount itself, because inside a cgroup namespace the container sees its own
    cgroup at the mount root while /proc/self/cgroup may still show the host's path.
    """

    def __init__(self, root: str | os.PathLike = "/") -> None:
        base = Path(root) / "sys/fs/cgroup"
        v2path, v1paths = parse_proc_cgroup(_read(Path(root) / "proc/self/cgroup"))
        self.version: int | None = None
        self.memory_current = self.memory_max = self.memory_stat = None
        self.cpu_usage: Path | None = None
        self.cpu_usage_unit = 1e-6
        self.cpu_max = self.cfs_quota = self.cfs_period = None
        self.cpuset: Path | None = None
        if (base / "cgroup.controllers").exists():
            d = _first(_under(base, v2path), lambda p: (p / "memory.current").exists() or
                       (p / "cpu.stat").exists())
            if d is not None:
                self.version = 2
                if (d / "memory.current").exists():
                    self.memory_current, self.memory_max = d / "memory.current", d / "memory.max"
                    self.memory_stat = d / "memory.stat"
                if (d / "cpu.stat").exists():
                    self.cpu_usage = d / "cpu.stat"
                if (d / "cpu.max").exists():
                    self.cpu_max = d / "cpu.max"
                if (d / "cpuset.cpus.effective").exists():
                    self.cpuset = d / "cpuset.cpus.effective"
        if self.memory_current is None:
            d = _first(_under(base / "memory", v1paths.get("memory")),
                       lambda p: (p / "memory.usage_in_bytes").exists())
            if d is not None:
                self.version = self.version or 1
                self.memory_current, self.memory_max = d / "memory.usage_in_bytes", d / "memory.limit_in_bytes"
                self.memory_stat = d / "memory.stat"
        if self.cpu_usage is None:
            cands = [c for m in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")
                     for c in _under(base / m, v1paths.get("cpuacct"))]
            d = _first(cands, lambda p: (p / "cpuacct.usage").exists())
            if d is not None:
                self.version = self.version or 1
                self.cpu_usage, self.cpu_usage_unit = d / "cpuacct.usage", 1e-9
        if self.cpu_max is None:
            cands = [c for m in ("cpu", "cpu,cpuacct", "cpuacct,cpu") for c in _under(base / m, v1paths.get("cpu"))]
            d = _first(cands, lambda p: (p / "cpu.cfs_quota_us").exists())
            if d is not None:
                self.cfs_quota, self.cfs_period = d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us"
        if self.cpuset is None:
            for d in _under(base / "cpuset", v1paths.get("cpuset")):
                f = _first([d / "cpuset.effective_cpus", d / "cpuset.cpus"], Path.exists)
                if f is not None:
                    self.cpuset = f
                    break

    def read(self) -> dict[str, Any]:
        """memory_usage (working set), memory_limit, cpu_usage_seconds, cpu_limit_cores, cpu_cores (the
        cpuset's size); None when unknown."""
        usage = _int(_read(self.memory_current))
        if usage is not None and self.memory_stat is not None:
            # The working set, as kubectl top and the kubelet's eviction count it: page cache that
            # can be dropped is not memory the container is short of.
            st = _keyed(_read(self.memory_stat))
            inactive = st.get("total_inactive_file", st.get("inactive_file", 0))
            usage = max(usage - inactive, 0)
        limit = _int(_read(self.memory_max))
        if limit is not None and limit >= _UNLIMITED:
            limit = None
        cpu_seconds = None
        if self.cpu_usage is not None:
            text = _read(self.cpu_usage)
            raw = _keyed(text).get("usage_usec") if self.cpu_usage.name == "cpu.stat" else _int(text)
            if raw is not None:
                cpu_seconds = raw * self.cpu_usage_unit
        return {"memory_usage": usage, "memory_limit": limit, "cpu_usage_seconds": cpu_seconds,
                "cpu_limit_cores": self._cpu_limit(), "cpu_cores": parse_cpu_list(_read(self.cpuset))}

    def _cpu_limit(self) -> float | None:
        if self.cpu_max is not None:
            text = _read(self.cpu_max)
            if text is None:
                return None
            quota, _, period = text.strip().partition(" ")
            q, p = _int(quota), _int(period or "100000")
        else:
            q, p = _int(_read(self.cfs_quota)), _int(_read(self.cfs_period))
        if q is None or q <= 0 or not p:
            return None
        return round(q / p, 4)


def _under(mount: Path, path: str | None) -> list[Path]:
    cands = []
    if path and path != "/":
        cands.append(mount / path.lstrip("/"))
    cands.append(mount)
    return cands


def _first(cands: list[Path], ok) -> Path | None:
    for c in cands:
        if ok(c):
            return c
    return None


def parse_meminfo(text: str | None) -> tuple[int, int]:
    """(free, total) bytes; free is MemAvailable (what libuv's os.freemem reports), else MemFree."""
    kb: dict[str, int] = {}
    for line in (text or "").splitlines():
        k, _, rest = line.partition(":")
        f = rest.split()
        if f and f[0].isdigit():
            kb[k] = int(f[0])
    free = kb.get("MemAvailable", kb.get("MemFree", 0))
    return free * 1024, kb.get("MemTotal", 0) * 1024


def parse_cpuinfo(text: str | None) -> list[tuple[str, float]]:
    """[(model, MHz)] per processor, in order."""
    cpus: list[tuple[str, float]] = []
    model, speed = "", 0.0
    seen = False
    for line in (text or "").splitlines() + [""]:
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if not k:
            if seen:
                cpus.append((model, speed))
            model, speed, seen = "", 0.0, False
        elif k == "processor":
            seen = True
        elif k in ("model name", "Processor", "cpu model") and not model:
            model = v
        elif k == "cpu MHz":
            try:
                speed = float(v)
            except ValueError:
                pass
    return cpus


def parse_stat_cpus(text: str | None, tick_ms: float) -> list[dict[str, float]]:
    """Per-CPU times in ms like node's os.cpus(): user, nice, sys, idle, irq."""
    out = []
    for line in (text or "").splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            f = line.split()
            try:
                user, nice, system, idle = (int(x) for x in f[1:5])
                irq = int(f[6]) if len(f) > 6 else 0
            except ValueError:
                continue
            out.append({"user": user * tick_ms, "nice": nice * tick_ms, "sys": system * tick_ms,
                        "idle": idle * tick_ms, "irq": irq * tick_ms})
    return out


class Resources:
    """Samples node and container resources; call `sample()` about once a second.

    `root` is where /proc and /sys/fs/cgroup are looked up (tests point it at sample trees).
    cpu_percent is the container's CPU time over the wall time since the previous sample, in
    percent of one core; None on the first sample or without cgroup CPU accounting. cpu_cores is how
    many CPUs the container may run on, which the dashboard measures it against when there is no limit.
    """

    def __init__(self, root: str | os.PathLike = "/", pod: str | None = None,
                 env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.clock = clock
        self.pod = pod or pod_name(env)
        self.cgroup = Cgroup(root)
        try:
            self._tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
        except (ValueError, OSError, AttributeError):
            self._tick_ms = 10.0
        self._cpuinfo: list[tuple[str, float]] = []
        self._cpuinfo_at = float("-inf")
        self._prev: tuple[float, float] | None = None   # (monotonic, cpu seconds)
        self.samples = 0

    def node(self) -> dict[str, Any]:
        free, total = parse_meminfo(_read(self.root / "proc/meminfo"))
        now = time.monotonic()
        if now - self._cpuinfo_at >= _CPUINFO_EVERY:
            self._cpuinfo = parse_cpuinfo(_read(self.root / "proc/cpuinfo"))
            self._cpuinfo_at = now
        times = parse_stat_cpus(_read(self.root / "proc/stat"), self._tick_ms)
        cpus = []
        for i, t in enumerate(times):
            model, speed = self._cpuinfo[i] if i < len(self._cpuinfo) else ("", 0.0)
            cpus.append({"model": model, "speed": round(speed), "times": t})
        return {"free_memory": free, "total_memory": total, "cpus": cpus, "load": self._load()}

    def _load(self) -> list[float] | None:
        text = _read(self.root / "proc/loadavg")
        if text:
            try:
                return [float(x) for x in text.split()[:3]]
            except ValueError:
                pass
        if str(self.root) == "/":
            try:
                return list(os.getloadavg())
            except OSError:
                pass
        return None

    def container(self) -> dict[str, Any]:
        c = self.cgroup.read()
        if c["cpu_cores"] is None and str(self.root) == "/" and hasattr(os, "sched_getaffinity"):
            # Without a cpuset file, the CPUs this process may run on: the container's share of the
            # node when it has no CPU limit (what the dashboard measures cpu_percent against).
            c["cpu_cores"] = len(os.sched_getaffinity(0))
        now = self.clock()
        cpu = c["cpu_usage_seconds"]
        c["cpu_percent"] = None
        if cpu is not None:
            if self._prev is not None and now > self._prev[0] and cpu >= self._prev[1]:
                c["cpu_percent"] = round((cpu - self._prev[1]) / (now - self._prev[0]) * 100.0, 2)
            self._prev = (now, cpu)
        return c

    def sample(self) -> dict[str, Any]:
        """A ResourcesPayload dict: {pod, time, resource, container}."""
        self.samples += 1
        return {"pod": self.pod, "time": time.time(), "resource": self.node(), "container": self.container()}
