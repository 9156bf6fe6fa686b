"""Telemetry: per-endpoint aggregation, pod resources, traces, and the exporters that send or serve them.

The request path only ever calls `Aggregator.record` and `Metrics.observe` (through TelemetryHooks),
and, with tracing on, the trace hooks (telemetry.tracing); everything that waits runs in the exporters'
tasks. Imports proxy.hooks, wire.stats and decorator.delivery; must not import rules, settings,
dashboard, other proxy modules or pydantic (idle RSS: payloads are plain dicts).

The exporter seam: `Metrics.observe` (and `Aggregator.record`) measure once; each exporter reads what it
needs. Prometheus renders Metrics at each scrape (admin /metrics); the dashboard pusher sends the
aggregator's deltas; OTLP sends spans and Metrics snapshots. An exporter is one module with a class
that has `name`, `counters`, `status()`, `start()`, `close()`, added to `Telemetry.exporters`
(OTLP's traces also see each exchange, through TracingHooks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from decorator.proxy.hooks import Hooks, chain
from decorator.telemetry.aggregate import ALL_FIELDS, Aggregator, Endpoints, collapse_path
from decorator.telemetry.metrics import Metrics, Source, TelemetryHooks
from decorator.telemetry.otel import OtelConfig
from decorator.telemetry.push import Pusher
from decorator.telemetry.resources import Resources, pod_name

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["ALL_FIELDS", "Aggregator", "Endpoints", "Exporter", "Metrics", "OtelConfig", "Pusher", "Resources",
           "Telemetry", "TelemetryHooks", "collapse_path", "pod_name", "status_info"]


class Exporter(Protocol):
    """What Telemetry asks of an exporter (Pusher, OtlpExporter; Prometheus is served by Metrics.render)."""

    name: str

    @property
    def counters(self) -> dict[str, int]: ...

    def status(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def status_info(aggregator: Aggregator | None = None, metrics: Metrics | None = None,
                pusher: Pusher | None = None, resources: Resources | None = None) -> dict[str, Any]:
    """The `telemetry` part of /status: aggregator totals, in-flight requests, push counters, cgroup."""
    out: dict[str, Any] = {}
    if aggregator is not None:
        out["aggregator"] = aggregator.totals()
    if metrics is not None:
        out["metrics"] = metrics.status()
    out["push"] = pusher.status() if pusher is not None else None
    if resources is not None:
        out["resources"] = {"pod": resources.pod, "cgroup": resources.cgroup.version,
                            "samples": resources.samples}
    return out


class Telemetry:
    """Everything `decorator run` needs from telemetry, built from plain values (the app passes Settings').

        tel = Telemetry(dashboard=s.dashboard, token=s.dashboard_token, pod=s.pod)
        runtime = Runtime(recorder=tel.aggregator, pod=s.pod)     # rules' `record` feeds the aggregator
        server.hooks = chain(tel.hooks, rules_hooks)               # telemetry first: sees every exchange
        tel.add_source(lambda: runtime.counters)                    # and reload / tunnel counters
        await tel.start(); ...; await tel.close()
        admin: tel.metrics.render(accept_header), tel.status()

    `record_all` records every exchange for the dashboard, as the seed did; with it off only the rules'
    `record` actions do. Either way an exchange is counted once. The pusher exists only with a dashboard;
    `push_options` go to it (intervals, timeout, max_buffer, backoff). The OTLP exporter exists only
    when `otel` names an endpoint (OtelConfig.from_env); with traces on, `wrap(rules_hooks)` puts the
    trace hooks first and last in the chain and `rule_event` is what the rules runtime calls per action.
    """

    def __init__(self, dashboard: str | None = None, token: str | None = None, pod: str | None = None,
                 record_all: bool = True, max_endpoints: int = 200,
                 registry: CollectorRegistry | None = None, in_flight: Callable[[], int] | None = None,
                 otel: OtelConfig | None = None, **push_options: Any) -> None:
        self.pod = pod or pod_name()
        self.aggregator = Aggregator(max_endpoints=max_endpoints)
        self.metrics = Metrics(registry, endpoints=self.aggregator.endpoints, in_flight=in_flight)
        self.hooks = TelemetryHooks(self.metrics, self.aggregator if record_all else None)
        self.resources = Resources(pod=self.pod)
        self.pusher = (Pusher(dashboard, token, self.pod, self.aggregator, self.resources, **push_options)
                       if dashboard else None)
        self.exporters: list[Exporter] = []
        if self.pusher is not None:
            self.exporters.append(self.pusher)
        self.otlp = None
        self._tracing: Hooks | None = None
        self.rule_event: Callable | None = None
        if otel is not None and otel.enabled:
            from decorator.telemetry.otlp import OtlpExporter  # protobuf loads only with an endpoint
            self.otlp = OtlpExporter(otel, self.metrics)
            self.exporters.append(self.otlp)
            if self.otlp.sampler is not None:
                from decorator.telemetry.tracing import rule_event
                self.rule_event = rule_event
        for exporter in self.exporters:
            self.metrics.add_source(lambda e=exporter: e.counters)

    def wrap(self, rules_hooks: Hooks | None) -> Hooks | None:
        """The hooks the proxy runs: telemetry's (with tracing: TracingHooks, which also does
        telemetry's completion work), then the rules'. Tracing goes first so the rules see the
        traceparent the app will get; the rules' completion actions run after the span was queued
        and still land on it as events (it is encoded later)."""
        otlp = self.otlp
        if otlp is None or otlp.sampler is None or otlp.traces is None:
            return chain(self.hooks, rules_hooks)
        if self._tracing is None:
            from decorator.telemetry.tracing import TracingHooks
            self._tracing = TracingHooks(otlp.sampler, otlp.traces.submit, self.hooks.on_complete,
                                         self.hooks.on_request)
        return chain(self._tracing, rules_hooks)

    def add_source(self, fn: Source, label: str | None = None) -> None:
        self.metrics.add_source(fn, label)

    async def start(self) -> None:
        for exporter in self.exporters:
            await exporter.start()

    async def close(self) -> None:
        for exporter in self.exporters:
            await exporter.close()

    def status(self) -> dict[str, Any]:
        out = status_info(self.aggregator, self.metrics, self.pusher, self.resources)
        out["otlp"] = self.otlp.status() if self.otlp is not None else None
        return out
