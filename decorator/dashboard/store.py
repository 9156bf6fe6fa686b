"""The dashboard's storage: one SQLite file in WAL mode; raw rows for the last minutes, 1-minute then
10-minute rollups beyond, retention; and the page's queries (series, top endpoints, pods, percentiles
from merged histogram buckets).

Synchronous and thread-safe (one write connection behind a lock, one read connection per thread):
the server calls it from worker threads. Imports only the wire models; never proxy or rules.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from decorator.wire.models import EventPayload, ResourcesPayload, StatsPayload
from decorator.wire.stats import LATENCY_BOUNDS_MS, N_BUCKETS, STATUS_CLASSES

Clock = Callable[[], float]

_B = [f"b{i}" for i in range(N_BUCKETS)]
_S = [f"s{c[0]}" for c in STATUS_CLASSES]                      # s1 .. s5
_STAT_COLS = ["count", *_S, "lat_sum", *_B, "bytes_in", "bytes_out"]
_RES_COLS = ["cpu_sum", "cpu_n", "mem_used_sum", "mem_n", "mem_total", "ccpu_sum", "ccpu_n",
             "cmem_sum", "cmem_n", "cmem_limit", "cshare_sum", "cshare_n"]

_COLS = ", ".join(_STAT_COLS)
_SUMS = ", ".join(f"SUM({c})" for c in _STAT_COLS)
_FLEET_DDL = "ts REAL NOT NULL, " + ", ".join(
    f"{c} {'REAL' if c == 'lat_sum' else 'INTEGER'} NOT NULL DEFAULT 0" for c in _STAT_COLS)
_EP_DDL = _FLEET_DDL.replace("ts REAL NOT NULL, ", "ts REAL NOT NULL, endpoint TEXT NOT NULL, method TEXT NOT NULL, "
                             "file INTEGER NOT NULL DEFAULT 0, ")
BUCKET = 10   # seconds: the fleet-wide tables' finest rows
_SLICE = 5    # seconds of per-push rows rolled up per transaction (minute rows: ten times that)

# Each migration moves the file one user_version up; a newer file than this code refuses to open.
_MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE pods (
        pod TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
        last_resources REAL, last_stats REAL,
        resources_json TEXT, stats_json TEXT, cpus_json TEXT);
    CREATE TABLE stats (
        ts REAL NOT NULL, pod TEXT NOT NULL, endpoint TEXT NOT NULL, method TEXT NOT NULL,
        file INTEGER NOT NULL DEFAULT 0, {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _STAT_COLS
                                                   if c != "lat_sum")},
        lat_sum REAL NOT NULL DEFAULT 0);
    CREATE INDEX stats_ts ON stats(ts);
    CREATE INDEX stats_pod_ts ON stats(pod, ts);
    CREATE TABLE stats_1m (
        ts REAL NOT NULL, pod TEXT NOT NULL, endpoint TEXT NOT NULL, method TEXT NOT NULL,
        file INTEGER NOT NULL DEFAULT 0, {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _STAT_COLS
                                                   if c != "lat_sum")},
        lat_sum REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (ts, pod, endpoint, method));
    CREATE INDEX stats_1m_pod_ts ON stats_1m(pod, ts);
    CREATE TABLE pod_stats (
        ts REAL NOT NULL, pod TEXT NOT NULL, {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _STAT_COLS
                                                        if c != "lat_sum")},
        lat_sum REAL NOT NULL DEFAULT 0);
    CREATE INDEX pod_stats_ts ON pod_stats(ts);
    CREATE TABLE pod_stats_1m (
        ts REAL NOT NULL, pod TEXT NOT NULL, {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _STAT_COLS
                                                        if c != "lat_sum")},
        lat_sum REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (ts, pod));
    CREATE TABLE resources (
        ts REAL NOT NULL, pod TEXT NOT NULL, cpu REAL, mem_used INTEGER, mem_total INTEGER,
        ccpu REAL, cmem INTEGER, cmem_limit INTEGER);
    CREATE INDEX resources_ts ON resources(ts);
    CREATE INDEX resources_pod_ts ON resources(pod, ts);
    CREATE TABLE resources_1m (
        ts REAL NOT NULL, pod TEXT NOT NULL,
        cpu_sum REAL, cpu_n INTEGER, mem_used_sum REAL, mem_n INTEGER, mem_total INTEGER,
        ccpu_sum REAL, ccpu_n INTEGER, cmem_sum REAL, cmem_n INTEGER, cmem_limit INTEGER,
        PRIMARY KEY (ts, pod));
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY, ts REAL NOT NULL, pod TEXT NOT NULL, endpoint TEXT NOT NULL, route TEXT,
        method TEXT, status INTEGER, time_ms REAL, started REAL, request_id TEXT, error TEXT);
    CREATE INDEX samples_ts ON samples(ts);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY, ts REAL NOT NULL, pod TEXT, event TEXT NOT NULL, rule TEXT,
        count INTEGER, status INTEGER, method TEXT, path TEXT, request_id TEXT, duration_ms REAL,
        message TEXT, payload TEXT NOT NULL);
    CREATE INDEX events_ts ON events(ts);
    """,
    # span: the seconds a push's deltas cover (the sidecar's interval), for the current rate.
    # cshare: the container's CPU in % of what it may use (its limit, else the node's cores), so one
    # axis holds every pod whatever its limit; ccpu stays % of one core as sent.
    """
    ALTER TABLE pod_stats ADD COLUMN span REAL;
    ALTER TABLE resources ADD COLUMN cshare REAL;
    ALTER TABLE resources_1m ADD COLUMN cshare_sum REAL NOT NULL DEFAULT 0;
    ALTER TABLE resources_1m ADD COLUMN cshare_n INTEGER NOT NULL DEFAULT 0;
    """,
    # Fleet-wide sums per 10-s bucket (then per minute and 10 minutes), kept up to date on every push:
    # the fleet's page reads a few thousand of these instead of every pod's rows (200 pods x 20
    # endpoints pushing every 10 s is 24,000 per-push rows a minute). Filled from the rows already there.
    f"""
    CREATE TABLE ep_stats ({_EP_DDL}, PRIMARY KEY (ts, endpoint, method));
    CREATE TABLE ep_stats_1m ({_EP_DDL}, PRIMARY KEY (ts, endpoint, method));
    CREATE TABLE fleet_stats ({_FLEET_DDL}, PRIMARY KEY (ts));
    CREATE TABLE fleet_stats_1m ({_FLEET_DDL}, PRIMARY KEY (ts));
    INSERT INTO ep_stats (ts, endpoint, method, file, {_COLS}) SELECT CAST(ts / 10 AS INTEGER) * 10, endpoint,
        method, MAX(file), {_SUMS} FROM stats GROUP BY 1, 2, 3;
    INSERT INTO ep_stats_1m (ts, endpoint, method, file, {_COLS}) SELECT ts, endpoint, method, MAX(file), {_SUMS}
        FROM stats_1m GROUP BY 1, 2, 3;
    INSERT INTO fleet_stats (ts, {_COLS}) SELECT CAST(ts / 10 AS INTEGER) * 10, {_SUMS} FROM pod_stats GROUP BY 1;
    INSERT INTO fleet_stats_1m (ts, {_COLS}) SELECT ts, {_SUMS} FROM pod_stats_1m GROUP BY 1;
    """,
]

# Raw error samples and events are capped by count too, so a flood cannot fill the disk within retention.
MAX_SAMPLE_ROWS = 20_000
MAX_EVENT_ROWS = 20_000


@dataclass(frozen=True)
class StoreConfig:
    retention: float = 24 * 3600.0     # everything older is deleted
    raw_keep: float = 900.0            # raw per-push rows kept this long, then rolled up by minute
    minute_keep: float = 8 * 3600.0    # 1-minute rows kept this long, then rolled up by 10 minutes
    stale_after: float = 10.0          # a pod without resources for longer is stale
    recent: float = 30.0               # the current rate is over the pushes received this long ago


class Store:
    """All reads and writes of the dashboard's SQLite file."""

    def __init__(self, path: str | Path, config: StoreConfig | None = None, clock: Clock = time.time) -> None:
        self.path = str(path)
        self.config = config or StoreConfig()
        self.clock = clock
        self._wlock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._prev_cpu: dict[str, list[tuple[float, float]]] = {}  # pod -> per-CPU (busy, total) times
        self._rolled_to: dict[str, float] = {}   # table -> time up to which prune rolled it up
        self._w = self._connect()
        if self._w.execute("PRAGMA user_version").fetchone()[0] == 0:
            # Only possible on a new file, before WAL and the first table: lets prune give pages back.
            self._w.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._w.execute("PRAGMA journal_mode=WAL")
        self._migrate()

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable across a process crash
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        with self._readers_lock:
            for c in self._readers:
                c.close()
            self._readers.clear()
        with self._wlock:
            self._w.close()

    def _migrate(self) -> None:
        with self._wlock:
            version = self._w.execute("PRAGMA user_version").fetchone()[0]
            if version > len(_MIGRATIONS):
                raise RuntimeError(f"{self.path}: database schema version {version} is newer than this "
                                   f"decorator understands ({len(_MIGRATIONS)})")
            for i, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                self._w.executescript(f"BEGIN; {script}; PRAGMA user_version={i}; COMMIT;")

    # -- writes (one transaction per POST) ----------------------------------------------------

    def add_stats(self, p: StatsPayload, raw: dict | None = None) -> int:
        """Store one push; returns the number of rows written."""
        now = self.clock()
        rows = [(now, p.pod, e.endpoint, e.method, int(e.file), e.count, *e.status.as_tuple(),
                 e.latency_ms_sum, *e.latency_buckets, e.bytes_in, e.bytes_out) for e in p.endpoints]
        samples = [(now, p.pod, s.endpoint, s.route, s.method, s.status, s.time_ms, s.started, s.request_id,
                    s.error) for s in p.samples]
        doc = json.dumps(raw if raw is not None else p.model_dump(by_alias=True, mode="json"))
        # Per-pod sums too: the fleet and pod charts then read one row per push, not one per endpoint.
        pod_row = [sum(col) for col in zip(*(r[5:] for r in rows))] if rows else None
        bucket = math.floor(now / BUCKET) * BUCKET
        with self._wlock, _tx(self._w) as c:
            if rows:
                c.executemany(_INSERT_STATS, rows)
                c.execute(_INSERT_POD_STATS, (now, p.pod, p.interval, *pod_row))
                c.executemany(_UPSERT_EP, [(bucket, *r[2:]) for r in rows])
                c.execute(_UPSERT_FLEET, (bucket, *pod_row))
            if samples:
                c.executemany("INSERT INTO samples (ts, pod, endpoint, route, method, status, time_ms, "
                              "started, request_id, error) VALUES (?,?,?,?,?,?,?,?,?,?)", samples)
            c.execute("INSERT INTO pods (pod, first_seen, last_seen, last_stats, stats_json) "
                      "VALUES (?1, ?2, ?2, ?2, ?3) ON CONFLICT(pod) DO UPDATE SET last_seen=?2, "
                      "last_stats=?2, stats_json=?3", (p.pod, now, doc))
        return len(rows) + len(samples)

    def add_resources(self, p: ResourcesPayload) -> None:
        now = self.clock()
        r, ct = p.resource, p.container
        doc = json.dumps(p.model_dump(mode="json"))
        with self._wlock, _tx(self._w) as c:
            per_cpu = self._cpu_percents(p.pod, r.cpus)
            cpu = sum(per_cpu) / len(per_cpu) if per_cpu else None
            mem_used = max(r.total_memory - r.free_memory, 0) if r.total_memory else None
            share = None
            if ct and ct.cpu_percent is not None:
                cores, _ = cpu_capacity(ct.cpu_limit_cores, ct.cpu_cores, len(r.cpus))
                share = round(ct.cpu_percent / cores, 2) if cores else None
            row = (now, p.pod, cpu, mem_used, r.total_memory or None, ct.cpu_percent if ct else None,
                   ct.memory_usage if ct else None, ct.memory_limit if ct else None, share)
            c.execute("INSERT INTO resources (ts, pod, cpu, mem_used, mem_total, ccpu, cmem, cmem_limit, cshare) "
                      "VALUES (?,?,?,?,?,?,?,?,?)", row)
            c.execute("INSERT INTO pods (pod, first_seen, last_seen, last_resources, resources_json, cpus_json)"
                      " VALUES (?1, ?2, ?2, ?2, ?3, ?4) ON CONFLICT(pod) DO UPDATE SET last_seen=?2, "
                      "last_resources=?2, resources_json=?3, cpus_json=?4",
                      (p.pod, now, doc, json.dumps(per_cpu)))

    def _cpu_percents(self, pod: str, cpus) -> list[float]:
        """Per-CPU busy percent since this pod's previous push (the seed sent cumulative times)."""
        cur = []
        for cpu in cpus:
            t = cpu.times
            busy = t.user + t.nice + t.sys + t.irq
            cur.append((busy, busy + t.idle))
        prev = self._prev_cpu.get(pod)
        self._prev_cpu[pod] = cur
        if not prev or len(prev) != len(cur):
            return []
        out = []
        for (b0, t0), (b1, t1) in zip(prev, cur):
            dt = t1 - t0
            out.append(round(min(max((b1 - b0) / dt * 100, 0.0), 100.0), 2) if dt > 0 else 0.0)
        return out

    def add_event(self, e: EventPayload) -> None:
        now = self.clock()
        req, resp = e.request, e.response
        row = (now, e.pod, e.event, e.rule, e.count, resp.status if resp else None,
               req.method if req else None, req.path if req else None, req.request_id if req else None,
               e.duration_ms, e.message, json.dumps(e.model_dump(mode="json")))
        with self._wlock, _tx(self._w) as c:
            c.execute("INSERT INTO events (ts, pod, event, rule, count, status, method, path, request_id, "
                      "duration_ms, message, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)

    # -- retention and downsampling -------------------------------------------------------------

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Downsample and expire: raw rows older than `raw_keep` become 1-minute rows, 1-minute rows
        older than `minute_keep` become 10-minute rows, and everything older than `retention` goes.

        Cuts fall on bucket boundaries and rows carry the server's receive time (never in the past),
        so a bucket is always complete when it is rolled up; rolling up again changes nothing.
        Each roll-up goes in slices of `_SLICE` seconds, one transaction each, so pushes wait for one
        slice, never for the whole (200 pods x 20 endpoints: 24,000 rows a minute, ~250 ms at once).
        """
        now = self.clock() if now is None else now
        cfg = self.config
        cut = math.floor((now - cfg.raw_keep) / 60) * 60
        cut10 = math.floor((now - max(cfg.minute_keep, cfg.raw_keep)) / 600) * 600
        old = now - cfg.retention
        out: dict[str, int] = {}
        out["stats_rolled"] = self._roll_sliced("stats", "stats_1m", _STATS_KEYS, _STATS_AGG, cut, 60)
        self._roll_sliced("pod_stats", "pod_stats_1m", "pod", _POD_AGG, cut, 60)
        out["resources_rolled"] = self._roll_sliced("resources", "resources_1m", "pod", _RES_AGG_RAW, cut, 60)
        out["minutes_rolled"] = (
            self._roll_sliced("stats_1m", "stats_1m", _STATS_KEYS, _STATS_AGG, cut10, 600)
            + self._roll_sliced("resources_1m", "resources_1m", "pod", _RES_AGG_ROLLED, cut10, 600))
        self._roll_sliced("pod_stats_1m", "pod_stats_1m", "pod", _POD_AGG, cut10, 600)
        self._roll_sliced("ep_stats", "ep_stats_1m", "endpoint, method", _STATS_AGG, cut, 60)
        self._roll_sliced("ep_stats_1m", "ep_stats_1m", "endpoint, method", _STATS_AGG, cut10, 600)
        self._roll_sliced("fleet_stats", "fleet_stats_1m", "", _POD_AGG, cut, 60)
        self._roll_sliced("fleet_stats_1m", "fleet_stats_1m", "", _POD_AGG, cut10, 600)
        with self._wlock, _tx(self._w) as c:
            n = 0
            for table in _TIMED_TABLES:
                n += c.execute(f"DELETE FROM {table} WHERE ts < ?", (old,)).rowcount
            for table, cap in (("samples", MAX_SAMPLE_ROWS), ("events", MAX_EVENT_ROWS)):
                n += c.execute(f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?",
                               (cap,)).rowcount
            out["expired"] = n
            gone = [r[0] for r in c.execute("SELECT pod FROM pods WHERE last_seen < ?", (old,))]
            c.execute("DELETE FROM pods WHERE last_seen < ?", (old,))
            out["pods_forgotten"] = len(gone)
            for pod in gone:
                self._prev_cpu.pop(pod, None)
        with self._wlock:
            # Give freed pages back to the file system (after a burst) and keep the WAL short; PASSIVE
            # never waits for the page's readers.
            self._w.execute("PRAGMA incremental_vacuum(2000)").fetchall()
            self._w.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return out

    def _roll_sliced(self, src: str, dst: str, keys: str, agg: dict[str, str], cut: float, width: int) -> int:
        """_roll up to `cut` in slices of _SLICE seconds, each its own transaction; returns rows consumed.
        A slice may end inside a bucket: the next one merges into the same row (the roll-up adds).
        Each slice starts at the oldest row left (an index seek: every table leads with ts)."""
        lo = self._rolled_to.get(src, -math.inf)
        span = _SLICE * (10 if src == dst else 1)
        n = 0
        while True:
            # Once per process, rolled-up tables look for their first row not yet on a bucket boundary.
            unaligned = f" AND CAST(ts AS INTEGER) % {width} != 0" if src == dst and lo == -math.inf else ""
            with self._wlock:
                first = self._w.execute(f"SELECT MIN(ts) FROM {src} WHERE ts >= ? AND ts < ?{unaligned}",
                                        (lo, cut)).fetchone()[0]
            if first is None:
                break
            start = math.floor(first / width) * width if src == dst else first
            hi = min(max(start, lo) + span, cut)
            with self._wlock, _tx(self._w) as c:
                n += _roll(c, src, dst, keys, agg, hi, width, start)
            lo = hi
        self._rolled_to[src] = max(lo, cut)
        return n

    def granularity(self, since: float) -> int:
        """The coarsest bucket (s) among rows at or after `since`: 1 (raw), 60 or 600. Chart steps
        must be multiples of it, or rolled-up rows would alias into alternating full and empty buckets."""
        age = self.clock() - since
        if age <= self.config.raw_keep:
            return 1
        return 60 if age <= max(self.config.minute_keep, self.config.raw_keep) else 600

    def checkpoint(self) -> None:
        with self._wlock:
            self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def counts(self) -> dict[str, int]:
        """Row counts per table (for tests and /healthz)."""
        c = self._reader()
        return {t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("pods", *_TIMED_TABLES)}

    # -- reads -------------------------------------------------------------------------------

    def latest(self, kind: str) -> list[dict]:
        """The latest payload per pod, as the seed's `Object.values(...)` returned them."""
        col = {"stats": "stats_json", "resources": "resources_json"}[kind]
        rows = self._reader().execute(f"SELECT {col} FROM pods WHERE {col} IS NOT NULL ORDER BY pod")
        return [json.loads(r[0]) for r in rows]

    def pods(self, since: float) -> list[dict]:
        """Every pod seen since `since`, with its latest resources and whether it is stale."""
        now = self.clock()
        out = []
        for pod, first, last, last_res, res_json, cpus_json in self._reader().execute(
                "SELECT pod, first_seen, last_seen, last_resources, resources_json, cpus_json FROM pods "
                "WHERE last_seen >= ? ORDER BY pod", (since,)):
            heartbeat = last_res if last_res is not None else last
            res = json.loads(res_json) if res_json else {}
            node = res.get("resource") or {}
            cpus = json.loads(cpus_json) if cpus_json else []
            total = node.get("total_memory") or 0
            container = res.get("container")
            if container:
                cores, of = cpu_capacity(container.get("cpu_limit_cores"), container.get("cpu_cores"),
                                         len(node.get("cpus") or ()))
                pct = container.get("cpu_percent")
                # What the card shows is what the chart draws: % of the limit, else of the node's cores.
                container = {**container, "cpu_capacity_cores": cores, "cpu_capacity": of,
                             "cpu_share": round(pct / cores, 2) if pct is not None and cores else None}
            out.append({
                "pod": pod, "first_seen": first, "last_seen": last, "last_resources": last_res,
                "age_s": round(max(now - heartbeat, 0.0), 1),
                "stale": now - heartbeat > self.config.stale_after,
                "cpus": cpus, "cpu_percent": round(sum(cpus) / len(cpus), 2) if cpus else None,
                "load": node.get("load"),
                "memory": {"used": max(total - (node.get("free_memory") or 0), 0) if total else None,
                           "total": total or None},
                "container": container,
            })
        return out

    def _stats_union(self, since: float, until: float, pod: str | None, endpoint: str | None,
                     cols: str, step: float | None = None) -> tuple[str, list]:
        """SQL for the stats rows in [since, until] (optionally one pod's or one endpoint's), selecting
        `cols`. A fleet-wide read (no pod) takes the whole 10-s buckets from the fleet-wide tables and
        only the partial buckets at the edges from the per-push rows. A series (`step` given) whose steps
        are not whole buckets reads per-push rows only: a bucket would straddle two steps."""
        per_endpoint = bool(endpoint) or "endpoint" in cols
        raw = "stats" if per_endpoint else "pod_stats"
        if pod or (step is not None and (step % BUCKET or since % BUCKET)):
            return _range(raw, since, until, True, pod, endpoint, cols)
        fleet = "ep_stats" if per_endpoint else "fleet_stats"
        a = math.ceil(since / BUCKET) * BUCKET
        # Up to now (within the second it took to get here), the bucket in progress holds no later rows.
        live = until >= self.clock() - 1.0
        b = until if live else math.floor(until / BUCKET) * BUCKET
        if a > b:
            return _range(raw, since, until, True, None, endpoint, cols)
        parts = [_range(fleet, a, b, live, None, endpoint, cols)]
        if since < a:
            parts.append(_range(raw, since, a, False, None, endpoint, cols))
        if not live:
            parts.append(_range(raw, b, until, True, None, endpoint, cols))
        return " UNION ALL ".join(q for q, _ in parts), [x for _, args in parts for x in args]

    def totals(self, since: float, until: float, pod: str | None = None) -> dict:
        """Requests, status mix and latency percentiles over a window (merged across pods)."""
        cols = ", ".join(_STAT_COLS)
        inner, args = self._stats_union(since, until, pod, None, cols)
        row = self._reader().execute(
            f"SELECT {', '.join(f'TOTAL({c})' for c in _STAT_COLS)} FROM ({inner})", args).fetchone()
        vals = dict(zip(_STAT_COLS, row))
        buckets = [vals[b] for b in _B]
        count = vals["count"]
        span = max(until - since, 1e-9)
        timed = sum(buckets)
        return {
            "requests": int(count), "rps_avg": round(count / span, 3),
            "status": {k: int(vals[s]) for k, s in zip(STATUS_CLASSES, _S)},
            "errors": int(vals["s5"]), "error_rate": round(vals["s5"] / count, 4) if count else 0.0,
            "avg_ms": round(vals["lat_sum"] / timed, 2) if timed else None,
            "p50_ms": quantile(buckets, 0.50), "p95_ms": quantile(buckets, 0.95),
            "p99_ms": quantile(buckets, 0.99),
            "bytes_in": int(vals["bytes_in"]), "bytes_out": int(vals["bytes_out"]),
        }

    def current_rates(self, pod: str | None = None) -> dict[str, float]:
        """Requests/s per pod now: the counts of the pushes received in the last `recent` seconds over
        the time those pushes cover (their `interval`), as Prometheus' rate() divides by the span of
        its samples rather than by the window. A push without an interval (the seed's) is taken to
        cover `recent`. A pod that pushed nothing lately is absent (its rate is 0)."""
        now, recent = self.clock(), self.config.recent
        sql = "SELECT pod, TOTAL(count), TOTAL(span), COUNT(*) - COUNT(span) FROM pod_stats WHERE ts > ?"
        args: list = [now - recent]
        if pod:
            sql += " AND pod = ?"
            args.append(pod)
        out = {}
        for p, count, span, unknown in self._reader().execute(sql + " GROUP BY pod", args):
            out[p] = round(count / (span if not unknown and span > 0 else recent), 3)
        return out

    def per_pod_totals(self, since: float, until: float) -> dict[str, dict]:
        cols = "pod, count, s5, " + ", ".join(_B)
        inner, args = _range("pod_stats", since, until, True, None, None, cols)
        out = {}
        span = max(until - since, 1e-9)
        for row in self._reader().execute(
                f"SELECT pod, TOTAL(count), TOTAL(s5), {', '.join(f'TOTAL({b})' for b in _B)} "
                f"FROM ({inner}) GROUP BY pod", args):
            pod, count, s5, *buckets = row
            out[pod] = {"requests": int(count), "rps_avg": round(count / span, 3), "errors": int(s5),
                        "p95_ms": quantile(buckets, 0.95)}
        return out

    def endpoints(self, since: float, until: float, pod: str | None = None, limit: int = 20) -> list[dict]:
        cols = "endpoint, method, file, count, lat_sum, " + ", ".join(_S + _B)
        inner, args = self._stats_union(since, until, pod, None, cols)
        rows = self._reader().execute(
            f"SELECT endpoint, method, MAX(file), TOTAL(count) AS hits, TOTAL(lat_sum), "
            f"{', '.join(f'TOTAL({c})' for c in _S + _B)} FROM ({inner}) GROUP BY endpoint, method "
            f"ORDER BY hits DESC, endpoint LIMIT ?", [*args, limit])
        out = []
        for endpoint, method, file, hits, lat_sum, *rest in rows:
            status, buckets = rest[:len(_S)], rest[len(_S):]
            timed = sum(buckets)
            out.append({"endpoint": endpoint, "method": method, "file": bool(file), "hits": int(hits),
                        "status": {k: int(v) for k, v in zip(STATUS_CLASSES, status)},
                        "errors": int(status[4]),
                        "avg_ms": round(lat_sum / timed, 2) if timed else None,
                        "p50_ms": quantile(buckets, 0.5), "p95_ms": quantile(buckets, 0.95),
                        "p99_ms": quantile(buckets, 0.99)})
        return out

    def stats_series(self, metric: str, since: float, until: float, step: float, pod: str | None = None,
                     endpoint: str | None = None) -> list[dict]:
        """rps (total and 5xx per second), latency (p50/p95/p99 ms) or status (per class per second)."""
        n = max(round((until - since) / step), 1)
        cols = "ts, " + ", ".join(_STAT_COLS)
        inner, args = self._stats_union(since, until, pod, endpoint, cols, step)
        acc = [[0.0] * len(_STAT_COLS) for _ in range(n)]
        for b, *vals in self._reader().execute(
                f"SELECT CAST((ts - ?) / ? AS INTEGER) AS b, {', '.join(f'TOTAL({c})' for c in _STAT_COLS)} "
                f"FROM ({inner}) GROUP BY b", [since, step, *args]):
            if 0 <= b < n:
                acc[b] = vals
        idx = {c: i for i, c in enumerate(_STAT_COLS)}
        if metric == "rps":
            return [{"name": "requests/s", "values": [round(a[idx["count"]] / step, 3) for a in acc]},
                    {"name": "5xx/s", "values": [round(a[idx["s5"]] / step, 3) for a in acc]}]
        if metric == "status":
            return [{"name": k, "values": [round(a[idx[s]] / step, 3) for a in acc]}
                    for k, s in zip(STATUS_CLASSES, _S) if k != "1xx" or any(a[idx[s]] for a in acc)]
        if metric == "latency":
            bi = [idx[b] for b in _B]
            rows = [[a[i] for i in bi] for a in acc]
            return [{"name": f"p{int(q * 100)}", "values": [quantile(r, q) for r in rows]}
                    for q in (0.5, 0.95, 0.99)]
        raise ValueError(metric)

    def resource_series(self, metric: str, since: float, until: float, step: float,
                        pod: str | None = None) -> list[dict]:
        """Per-pod lines: cpu (node % and container % of its limit, else of the node's cores; one scale)
        or memory (bytes)."""
        n = max(round((until - since) / step), 1)
        where, args = "ts >= ? AND ts <= ?", [since, until]
        if pod:
            where += " AND pod = ?"
            args.append(pod)
        raw = ("SELECT ts, pod, cpu AS cpu_sum, cpu IS NOT NULL AS cpu_n, mem_used AS mem_used_sum, "
               "mem_used IS NOT NULL AS mem_n, cshare AS cshare_sum, cshare IS NOT NULL AS cshare_n, "
               f"cmem AS cmem_sum, cmem IS NOT NULL AS cmem_n FROM resources WHERE {where}")
        rolled = ("SELECT ts, pod, cpu_sum, cpu_n, mem_used_sum, mem_n, cshare_sum, cshare_n, cmem_sum, cmem_n "
                  f"FROM resources_1m WHERE {where}")
        if metric == "cpu":
            # Both in % of a whole: the node's cores, and what the container may use (limit or node).
            pairs = [("cpu_sum", "cpu_n", "node CPU %"), ("cshare_sum", "cshare_n", "container CPU %")]
        elif metric == "memory":
            pairs = [("mem_used_sum", "mem_n", "node memory"), ("cmem_sum", "cmem_n", "container memory")]
        else:
            raise ValueError(metric)
        sel = ", ".join(f"TOTAL({s}), TOTAL({c})" for s, c, _ in pairs)
        # The fleet view draws one line per pod (the container's when it has one, else the node's);
        # the pod view draws both. A node value the fleet view cannot draw is not even computed:
        # with 200 pods this loop is most of the query.
        node: dict[str, list] = {}
        cont: dict[str, list] = {}
        for b, p, n_total, n_cnt, c_total, c_cnt in self._reader().execute(
                f"SELECT CAST((ts - ?) / ? AS INTEGER) AS b, pod, {sel} FROM ({raw} UNION ALL {rolled}) "
                f"GROUP BY b, pod", [since, step, *args, *args]):
            if not 0 <= b < n:
                continue
            if c_cnt:
                line = cont.get(p)
                if line is None:
                    line = cont[p] = [None] * n
                line[b] = round(c_total / c_cnt, 2)
            if n_cnt and (pod or not c_cnt):
                line = node.get(p)
                if line is None:
                    line = node[p] = [None] * n
                line[b] = round(n_total / n_cnt, 2)
        if pod:
            return ([{"name": pairs[0][2], "values": node[pod]}] if pod in node else []) + \
                   ([{"name": pairs[1][2], "values": cont[pod]}] if pod in cont else [])
        return [{"name": p, "values": cont[p] if p in cont else node[p]} for p in sorted(node.keys() | cont.keys())]

    def recent_errors(self, since: float, pod: str | None = None, limit: int = 50) -> list[dict]:
        return self._recent("samples", ("ts", "pod", "endpoint", "route", "method", "status", "time_ms",
                                        "started", "request_id", "error"), since, pod, limit)

    def recent_events(self, since: float, pod: str | None = None, limit: int = 50) -> list[dict]:
        return self._recent("events", ("ts", "pod", "event", "rule", "count", "status", "method", "path",
                                       "request_id", "duration_ms", "message"), since, pod, limit)

    def _recent(self, table: str, cols: tuple[str, ...], since: float, pod: str | None,
                limit: int) -> list[dict]:
        """The newest rows of `table` since `since` (optionally one pod's) as dicts of `cols`."""
        sql = f"SELECT {', '.join(cols)} FROM {table} WHERE ts >= ?"
        args: list = [since]
        if pod:
            sql += " AND pod = ?"
            args.append(pod)
        rows = self._reader().execute(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [dict(zip(cols, r)) for r in rows]


_INSERT_POD_STATS = (f"INSERT INTO pod_stats (ts, pod, span, {', '.join(_STAT_COLS)}) "
                     f"VALUES ({', '.join('?' * (3 + len(_STAT_COLS)))})")
_INSERT_STATS = (f"INSERT INTO stats (ts, pod, endpoint, method, file, {', '.join(_STAT_COLS)}) "
                 f"VALUES ({', '.join('?' * (5 + len(_STAT_COLS)))})")


_ADD = ", ".join(f"{c}={c}+excluded.{c}" for c in _STAT_COLS)
_UPSERT_EP = (f"INSERT INTO ep_stats (ts, endpoint, method, file, {_COLS}) "
              f"VALUES ({', '.join('?' * (4 + len(_STAT_COLS)))}) "
              f"ON CONFLICT (ts, endpoint, method) DO UPDATE SET file=MAX(file, excluded.file), {_ADD}")
_UPSERT_FLEET = (f"INSERT INTO fleet_stats (ts, {_COLS}) VALUES ({', '.join('?' * (1 + len(_STAT_COLS)))}) "
                 f"ON CONFLICT (ts) DO UPDATE SET {_ADD}")

_STATS_KEYS = "pod, endpoint, method"
_STATS_AGG = {"file": "MAX(file)", **{c: f"SUM({c})" for c in _STAT_COLS}}
_POD_AGG = {c: f"SUM({c})" for c in _STAT_COLS}
_TIMED_TABLES = ("stats", "stats_1m", "pod_stats", "pod_stats_1m", "ep_stats", "ep_stats_1m", "fleet_stats",
                 "fleet_stats_1m", "resources", "resources_1m", "samples", "events")
# TOTAL, not SUM: a column that was all NULL in a bucket (no cgroup data) must add as 0, not poison the sum.
_RES_AGG_RAW = {"cpu_sum": "TOTAL(cpu)", "cpu_n": "COUNT(cpu)", "mem_used_sum": "TOTAL(mem_used)",
                "mem_n": "COUNT(mem_used)", "mem_total": "MAX(mem_total)", "ccpu_sum": "TOTAL(ccpu)",
                "ccpu_n": "COUNT(ccpu)", "cmem_sum": "TOTAL(cmem)", "cmem_n": "COUNT(cmem)",
                "cmem_limit": "MAX(cmem_limit)", "cshare_sum": "TOTAL(cshare)", "cshare_n": "COUNT(cshare)"}
_RES_AGG_ROLLED = {c: (f"MAX({c})" if c in ("mem_total", "cmem_limit") else f"TOTAL({c})") for c in _RES_COLS}


def _roll(c: sqlite3.Connection, src: str, dst: str, keys: str, agg: dict[str, str], cut: float,
          width: int, lo: float = -math.inf) -> int:
    """Merge `src` rows in [lo, cut) into `width`-second rows of `dst`; returns rows consumed.
    With src == dst, `lo` must be a bucket boundary.

    With src == dst (1-minute rows into 10-minute rows) only buckets still holding unaligned rows are
    regrouped, so each prune touches just the newly aged part."""
    cols = ", ".join(agg)
    group = f"1, {keys}" if keys else "1"
    keys = f"{keys}, " if keys else ""
    bucket = f"CAST(ts / {width} AS INTEGER) * {width}"
    c.execute("DROP TABLE IF EXISTS temp._roll")
    c.execute(f"CREATE TEMP TABLE _roll AS SELECT ts, {keys}{cols} FROM {dst} WHERE 0")
    if src == dst:
        pick = (f"ts >= ?2 AND ts < ?1 AND {bucket} IN (SELECT DISTINCT {bucket} FROM {src} "
                f"WHERE ts >= ?2 AND ts < ?1 AND CAST(ts AS INTEGER) % {width} != 0)")
    else:
        pick = "ts >= ?2 AND ts < ?1"
    c.execute(f"INSERT INTO _roll (ts, {keys}{cols}) SELECT {bucket}, {keys}{', '.join(agg.values())} "
              f"FROM {src} WHERE {pick} GROUP BY {group}", (cut, lo))
    n = c.execute(f"DELETE FROM {src} WHERE {pick}", (cut, lo)).rowcount
    merge = ", ".join(f"{k}=MAX(COALESCE({k}, excluded.{k}), COALESCE(excluded.{k}, {k}))"
                      if v.startswith("MAX") else f"{k}={k}+excluded.{k}" for k, v in agg.items())
    # WHERE true: SQLite's upsert after INSERT ... SELECT needs it to parse ON CONFLICT unambiguously.
    c.execute(f"INSERT INTO {dst} (ts, {keys}{cols}) SELECT ts, {keys}{cols} FROM _roll WHERE true "
              f"ON CONFLICT DO UPDATE SET {merge}")
    c.execute("DROP TABLE _roll")
    return n


class _tx:
    """BEGIN IMMEDIATE .. COMMIT, ROLLBACK on error (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _range(table: str, lo: float, hi: float, hi_inclusive: bool, pod: str | None, endpoint: str | None,
           cols: str) -> tuple[str, list]:
    """SELECT `cols` from `table` and its rolled-up `table`_1m for ts in [lo, hi] (or [lo, hi))."""
    where, args = ["ts >= ?", "ts <= ?" if hi_inclusive else "ts < ?"], [lo, hi]
    if pod:
        where.append("pod = ?")
        args.append(pod)
    if endpoint:
        where.append("endpoint = ?")
        args.append(endpoint)
    w = " AND ".join(where)
    return f"SELECT {cols} FROM {table} WHERE {w} UNION ALL SELECT {cols} FROM {table}_1m WHERE {w}", args + args


def cpu_capacity(limit: float | None, cores: float | None, node_cpus: int) -> tuple[float | None, str | None]:
    """The cores a container's CPU is measured against, and what they are: its CPU limit ("limit"),
    else the CPUs it may run on ("node": its cpuset as the sidecar saw it, else the node's count)."""
    if limit:
        return float(limit), "limit"
    if cores or node_cpus:
        return float(cores or node_cpus), "node"
    return None, None


def quantile(buckets: Iterable[float], q: float) -> float | None:
    """Estimate the q-quantile (ms) from histogram counts, interpolating inside the bucket that holds it
    (as Prometheus' histogram_quantile does). The overflow bucket answers its lower bound."""
    counts = list(buckets)
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i >= len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            lo = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            hi = LATENCY_BOUNDS_MS[i]
            return round(lo + (hi - lo) * (rank - seen) / c, 2)
        seen += c
    return float(LATENCY_BOUNDS_MS[-1])
