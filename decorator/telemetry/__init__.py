"""Telemetry: per-endpoint aggregation, pod resources, the push to the dashboard and Prometheus metrics.

The request path only ever calls `Aggregator.record` and `Metrics.observe` (through TelemetryHooks);
everything that waits runs in the pusher's tasks. Imports proxy.hooks and wire.stats; must not import
rules, settings, dashboard, other proxy modules or pydantic (idle RSS: payloads are plain dicts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from decorator.telemetry.aggregate import ALL_FIELDS, Aggregator, Endpoints, collapse_path
from decorator.telemetry.metrics import Metrics, Source, TelemetryHooks
from decorator.telemetry.push import Pusher
from decorator.telemetry.resources import Resources, pod_name

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["ALL_FIELDS", "Aggregator", "Endpoints", "Metrics", "Pusher", "Resources", "Telemetry",
           "TelemetryHooks", "collapse_path", "pod_name", "status_info"]


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
    `push_options` go to it (intervals, timeout, max_buffer, backoff).
    """

    def __init__(self, dashboard: str | None = None, token: str | None = None, pod: str | None = None,
                 record_all: bool = True, max_endpoints: int = 200,
                 registry: CollectorRegistry | None = None, in_flight: Callable[[], int] | None = None,
                 **push_options: Any) -> None:
        self.pod = pod or pod_name()
        self.aggregator = Aggregator(max_endpoints=max_endpoints)
        self.metrics = Metrics(registry, endpoints=self.aggregator.endpoints, in_flight=in_flight)
        self.hooks = TelemetryHooks(self.metrics, self.aggregator if record_all else None)
        self.resources = Resources(pod=self.pod)
        self.pusher = (Pusher(dashboard, token, self.pod, self.aggregator, self.resources, **push_options)
                       if dashboard else None)
        if self.pusher is not None:
            pusher = self.pusher
            self.metrics.add_source(lambda: pusher.counters)

    def add_source(self, fn: Source, label: str | None = None) -> None:
        self.metrics.add_source(fn, label)

    async def start(self) -> None:
        if self.pusher is not None:
            await self.pusher.start()

    async def close(self) -> None:
        if self.pusher is not None:
            await self.pusher.close()

    def status(self) -> dict[str, Any]:
        return status_info(self.aggregator, self.metrics, self.pusher, self.resources)
