"""The wire format between sidecars and the dashboard: pydantic models for every POST body.

Owns the payload shapes and their limits; the dashboard validates every body with them and tests check
what the sidecar builds against them. The sidecar never imports this at run time (it would load
pydantic): telemetry builds plain dicts from wire.stats. Imports only wire.stats from the package.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

from decorator.wire.stats import (
    LATENCY_BOUNDS_MS,
    MAX_METHOD,
    MAX_SHORT,
    MAX_TEXT,
    N_BUCKETS,
    STATUS_CLASSES,
    bucket_index,
)

# Limits keep one payload from costing the dashboard much; the sidecar's own caps are far lower.
MAX_ENDPOINTS = 5_000
MAX_SAMPLES = 5_000
MAX_CPUS = 1_024
_BIG = 2**62  # stays inside SQLite's signed 64-bit INTEGER even after sums

PodName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=253)]


def _clip(limit: int):
    def clip(v: Any) -> Any:
        return v[:limit] if isinstance(v, str) else v
    return BeforeValidator(clip)


# Free text (error messages, alert text) is cut to length rather than refused: a long message must not
# cost the whole push. Names and ids are refused when too long: they are keys.
FreeText = Annotated[str, _clip(MAX_TEXT)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Short = Annotated[str, StringConstraints(max_length=MAX_SHORT)]
Count = Annotated[int, Field(ge=0, le=_BIG)]
Amount = Annotated[float, Field(ge=0, le=1e15)]
Stamp = Annotated[float, Field(ge=0, le=1e13)]


class _Wire(BaseModel):
    # Unknown fields are ignored so newer sidecars can talk to older dashboards; known ones are checked.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)


# -- POST /resources ---------------------------------------------------------------------------

class CpuTimes(_Wire):
    user: Amount = 0
    nice: Amount = 0
    sys: Amount = 0
    idle: Amount = 0
    irq: Amount = 0


class Cpu(_Wire):
    model: Short = ""
    speed: Amount = 0
    times: CpuTimes = Field(default_factory=CpuTimes)


class NodeResource(_Wire):
    """What the seed sent (node.js `os.freemem/totalmem/cpus`), plus the load averages."""

    free_memory: Count = 0
    total_memory: Count = 0
    cpus: list[Cpu] = Field(default_factory=list, max_length=MAX_CPUS)
    load: list[Annotated[float, Field(ge=0, le=1e6)]] | None = Field(default=None, max_length=3)


class ContainerResource(_Wire):
    """The container's own use and limits from cgroups; null where cgroups give nothing."""

    memory_usage: Count | None = None
    memory_limit: Count | None = None
    cpu_usage_seconds: Amount | None = None
    cpu_limit_cores: Amount | None = None
    cpu_percent: Annotated[float, Field(ge=0, le=1e6)] | None = None  # of one core, over the last interval
    # The CPUs the container may run on (its cpuset): what it can use when it has no CPU limit.
    cpu_cores: Annotated[float, Field(ge=0, le=MAX_CPUS)] | None = None


class ResourcesPayload(_Wire):
    pod: PodName
    time: Stamp | None = None
    resource: NodeResource = Field(default_factory=NodeResource)
    container: ContainerResource | None = None


# -- POST /stats -------------------------------------------------------------------------------

class StatusCounts(_Wire):
    c1xx: Count = Field(0, alias="1xx")
    c2xx: Count = Field(0, alias="2xx")
    c3xx: Count = Field(0, alias="3xx")
    c4xx: Count = Field(0, alias="4xx")
    c5xx: Count = Field(0, alias="5xx")

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.c1xx, self.c2xx, self.c3xx, self.c4xx, self.c5xx)


class EndpointStats(_Wire):
    """Deltas for one (endpoint, method) since the sidecar's previous push."""

    endpoint: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]
    method: Annotated[str, StringConstraints(min_length=1, max_length=MAX_METHOD)]
    count: Count
    status: StatusCounts = Field(default_factory=StatusCounts)
    latency_ms_sum: Amount = 0
    latency_buckets: list[Count] = Field(default_factory=lambda: [0] * N_BUCKETS)
    bytes_in: Count = 0
    bytes_out: Count = 0
    file: bool = False

    @field_validator("latency_buckets")
    @classmethod
    def _fourteen(cls, v: list[int]) -> list[int]:
        if len(v) != N_BUCKETS:
            raise ValueError(f"expected {N_BUCKETS} bucket counts (bounds {LATENCY_BOUNDS_MS} ms and "
                             f"+Inf), got {len(v)}")
        return v


class Sample(_Wire):
    """One exchange kept for "recent errors" (status >= 500 or a proxy error)."""

    endpoint: Text
    route: Text | None = None
    method: Annotated[str, StringConstraints(max_length=MAX_METHOD)] = ""
    status: Annotated[int, Field(ge=0, le=999)] | None = None
    time_ms: Amount = 0
    started: Stamp | None = None
    request_id: Short | None = None
    error: FreeText | None = None


class StatsPayload(_Wire):
    pod: PodName
    time: Stamp | None = None
    interval: Annotated[float, Field(gt=0, le=86400)] | None = None
    endpoints: list[EndpointStats] = Field(default_factory=list, max_length=MAX_ENDPOINTS)
    samples: list[Sample] = Field(default_factory=list, max_length=MAX_SAMPLES)


# -- the seed's POST /stats: {"pod", "stats": [{endpoint, method, response: {status}, time, started, file}]}

class SeedResponse(_Wire):
    status: int | str | None = None
    message: Short | None = None
    state: Short | None = None


class SeedSample(_Wire):
    endpoint: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]
    method: Annotated[str, StringConstraints(max_length=MAX_METHOD)] = "GET"
    response: SeedResponse | None = None
    time: float | Short | None = None     # node sent a number of ms; part 2.5 sent "9ms"
    started: Stamp | None = None          # Date.getTime(): epoch milliseconds
    file: bool = False

    def status_code(self) -> int | None:
        raw = self.response.status if self.response else None
        try:
            code = int(raw) if raw is not None else None
        except ValueError:
            return None
        return code if code is not None and 100 <= code <= 999 else None

    def latency_ms(self) -> float | None:
        t = self.time
        if isinstance(t, str):
            t = t.strip().removesuffix("ms").strip()
            try:
                t = float(t)
            except ValueError:
                return None
        if t is None or not math.isfinite(t) or t < 0:
            return None
        return float(t)


class SeedStatsPayload(_Wire):
    pod: PodName
    stats: list[SeedSample] = Field(max_length=MAX_SAMPLES * 4)

    def to_stats(self) -> StatsPayload:
        """The seed's per-exchange list as per-endpoint deltas (and its 5xx as error samples)."""
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        samples: list[Sample] = []
        for s in self.stats:
            g = groups.get((s.endpoint, s.method))
            if g is None:
                g = groups[(s.endpoint, s.method)] = {
                    "endpoint": s.endpoint, "method": s.method or "GET", "count": 0,
                    "status": dict.fromkeys(STATUS_CLASSES, 0), "latency_ms_sum": 0.0,
                    "latency_buckets": [0] * N_BUCKETS, "file": s.file}
            g["count"] += 1
            code = s.status_code()
            if code is not None and code < 600:
                g["status"][f"{code // 100}xx"] += 1
            ms = s.latency_ms()
            if ms is not None:
                g["latency_ms_sum"] += ms
                g["latency_buckets"][bucket_index(ms)] += 1
            if code is not None and code >= 500:
                samples.append(Sample(endpoint=s.endpoint, method=s.method, status=code, time_ms=ms or 0,
                                      started=s.started / 1000 if s.started else None))
        return StatsPayload(pod=self.pod, endpoints=[EndpointStats.model_validate(g) for g in groups.values()],
                            samples=samples[-MAX_SAMPLES:])


def is_seed_stats(data: Any) -> bool:
    """The seed's shape has a `stats` list and none of the new fields."""
    return isinstance(data, dict) and "stats" in data and "endpoints" not in data


# -- POST /events ------------------------------------------------------------------------------

class EventRequest(_Wire):
    method: Short | None = None
    path: Text | None = None
    request_id: Short | None = None


class EventResponse(_Wire):
    status: Annotated[int, Field(ge=0, le=999)] | None = None


class EventPayload(_Wire):
    """A notify webhook: a rule fired (alone or counted over a window)."""

    event: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SHORT)]
    rule: Short | None = None
    pod: Annotated[str, StringConstraints(strip_whitespace=True, max_length=253)] | None = None
    time: Stamp | None = None
    count: Count | None = None
    window_s: Amount | None = None
    request: EventRequest | None = None
    response: EventResponse | None = None
    duration_ms: Amount | None = None
    message: Annotated[str, _clip(4096)] | None = None
