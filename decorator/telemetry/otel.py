"""OpenTelemetry configuration from the standard environment variables: endpoints, headers, resource, sampler.

Owns reading `OTEL_*` (and the Downward API's POD_NAME / POD_NAMESPACE / NODE_NAME) into one frozen
OtelConfig, as the OTel SDKs do: an invalid value is logged and its default used. Standard library only;
must not import rules, settings or pydantic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from decorator import __version__

log = logging.getLogger("decorator.telemetry")

SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
DEFAULT_SAMPLER = "parentbased_always_on"  # the specification's default
# Environment variables the sidecar reads besides OTEL_*: the Downward API's, for resource attributes.
K8S_ENV = {"POD_NAME": "k8s.pod.name", "POD_NAMESPACE": "k8s.namespace.name", "NODE_NAME": "k8s.node.name"}


@dataclass(frozen=True)
class Signal:
    """Where one signal (traces or metrics) goes: the full URL, headers, timeout (s), gzip or not."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0
    gzip: bool = False


@dataclass(frozen=True)
class OtelConfig:
    traces: Signal | None = None           # None: no tracing at all (no per-request work)
    metrics: Signal | None = None          # None: no OTLP metrics
    resource: tuple[tuple[str, str], ...] = ()
    sampler: str = DEFAULT_SAMPLER
    ratio: float = 1.0                     # OTEL_TRACES_SAMPLER_ARG for the traceidratio samplers
    schedule_delay: float = 5.0            # OTEL_BSP_SCHEDULE_DELAY (s): a partial batch waits this long
    export_timeout: float = 30.0           # OTEL_BSP_EXPORT_TIMEOUT (s): bounds one flush at shutdown
    max_queue: int = 2048                  # OTEL_BSP_MAX_QUEUE_SIZE: spans waiting; past it new ones are dropped
    max_batch: int = 512                   # OTEL_BSP_MAX_EXPORT_BATCH_SIZE
    metric_interval: float = 60.0          # OTEL_METRIC_EXPORT_INTERVAL (s)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def enabled(self) -> bool:
        return self.traces is not None or self.metrics is not None

    @property
    def service_name(self) -> str:
        return dict(self.resource).get("service.name", "")

    @classmethod
    def from_env(cls, env: Mapping[str, str], pod: str = "") -> OtelConfig:
        """Read the standard variables. No endpoint (or OTEL_SDK_DISABLED=true): nothing is exported.

        OTEL_EXPORTER_OTLP_ENDPOINT is a base URL (`/v1/traces`, `/v1/metrics` are appended); the
        `_TRACES_` / `_METRICS_` variants are used as given. Only http/protobuf is spoken.
        """
        warnings: list[str] = []

        def warn(msg: str) -> None:
            warnings.append(msg)
            log.warning("%s", msg)

        def get(name: str) -> str:
            return (env.get(name) or "").strip()

        if get("OTEL_SDK_DISABLED").lower() == "true":
            return cls()
        resource = _resource(env, pod, warn)
        traces = _signal(env, "TRACES", "/v1/traces", warn)
        metrics = _signal(env, "METRICS", "/v1/metrics", warn)
        sampler = get("OTEL_TRACES_SAMPLER").lower() or DEFAULT_SAMPLER
        if sampler not in SAMPLERS:
            warn(f"OTEL_TRACES_SAMPLER: {sampler!r} is not supported ({', '.join(SAMPLERS)}); "
                 f"using {DEFAULT_SAMPLER}")
            sampler = DEFAULT_SAMPLER
        ratio = 1.0
        arg = get("OTEL_TRACES_SAMPLER_ARG")
        if arg and sampler.endswith("traceidratio"):
            try:
                ratio = float(arg)
                if not 0.0 <= ratio <= 1.0:
                    raise ValueError
            except ValueError:
                warn(f"OTEL_TRACES_SAMPLER_ARG: expected a ratio between 0 and 1, got {arg!r}; using 1.0")
                ratio = 1.0
        return cls(
            traces=traces, metrics=metrics, resource=resource, sampler=sampler, ratio=ratio,
            schedule_delay=_ms(env, "OTEL_BSP_SCHEDULE_DELAY", 5000, warn) / 1000.0,
            export_timeout=_ms(env, "OTEL_BSP_EXPORT_TIMEOUT", 30000, warn) / 1000.0,
            max_queue=max(1, int(_ms(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, warn))),
            max_batch=max(1, int(_ms(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, warn))),
            metric_interval=max(0.05, _ms(env, "OTEL_METRIC_EXPORT_INTERVAL", 60000, warn) / 1000.0),
            warnings=tuple(warnings))


def _ms(env: Mapping[str, str], name: str, default: float, warn) -> float:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    try:
        value = float(text)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        warn(f"{name}: expected a non-negative number, got {text!r}; using {default:g}")
        return default


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """`k1=v1,k2=v2` with percent-encoded values (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS);
    a member without `=` or with an empty key is skipped."""
    out = []
    for member in text.split(","):
        key, sep, value = member.partition("=")
        key = key.strip()
        if sep and key:
            out.append((key, unquote(value.strip())))
    return out


def _signal(env: Mapping[str, str], kind: str, path: str, warn) -> Signal | None:
    def get(suffix: str) -> str:
        return (env.get(f"OTEL_EXPORTER_OTLP_{kind}_{suffix}") or env.get(f"OTEL_EXPORTER_OTLP_{suffix}")
                or "").strip()

    if (env.get(f"OTEL_{kind}_EXPORTER") or "otlp").strip().lower() == "none":
        return None
    url = (env.get(f"OTEL_EXPORTER_OTLP_{kind}_ENDPOINT") or "").strip()
    if not url:
        base = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
        if not base:
            return None  # no endpoint, no export: the sidecar does no tracing work at all
        url = base.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        warn(f"OTEL_EXPORTER_OTLP_{kind}_ENDPOINT: expected an http(s):// URL, got {url!r}; "
             f"{kind.lower()} are not exported")
        return None
    protocol = get("PROTOCOL") or "http/protobuf"
    if protocol != "http/protobuf":
        warn(f"OTEL_EXPORTER_OTLP_{kind}_PROTOCOL: only http/protobuf is spoken, got {protocol!r}; "
             f"{kind.lower()} are not exported")
        return None
    headers = parse_pairs(get("HEADERS"))
    timeout = _ms(env, f"OTEL_EXPORTER_OTLP_{kind}_TIMEOUT", 0, warn) or _ms(env, "OTEL_EXPORTER_OTLP_TIMEOUT",
                                                                             10000, warn)
    compression = get("COMPRESSION").lower()
    if compression not in ("", "none", "gzip"):
        warn(f"OTEL_EXPORTER_OTLP_COMPRESSION: expected gzip or none, got {compression!r}; not compressing")
    return Signal(url=url, headers=tuple(headers), timeout=timeout / 1000.0, gzip=compression == "gzip")


def _resource(env: Mapping[str, str], pod: str, warn) -> tuple[tuple[str, str], ...]:
    """service.name, the Downward API's k8s.* names, the SDK's own; OTEL_RESOURCE_ATTRIBUTES wins over
    what is detected, OTEL_SERVICE_NAME over both for service.name."""
    attrs: dict[str, str] = {"service.name": "decorator"}
    if pod:
        attrs["service.instance.id"] = pod
    for var, key in K8S_ENV.items():
        value = (env.get(var) or "").strip()
        if value:
            attrs[key] = value
    attrs.update({"telemetry.sdk.name": "decorator", "telemetry.sdk.language": "python",
                  "telemetry.sdk.version": __version__})
    attrs.update(parse_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES") or ""))
    name = (env.get("OTEL_SERVICE_NAME") or "").strip()
    if name:
        attrs["service.name"] = name
    return tuple(attrs.items())
