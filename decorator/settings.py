"""Environment + flags -> one frozen Settings object for `decorator run`.

Owns parsing and checking of every run-time knob (ports, timeouts, limits). Flags win over env.
Imports only errors, units, proxy.limits (the proxy owns its limits; settings fills them) and
workers.count (`--workers auto`); knows nothing of sockets, rules or telemetry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from decorator.errors import UsageError
from decorator.proxy.limits import Limits
from decorator.units import duration_seconds, size_bytes
from decorator.workers.count import parse_workers


def parse_duration(text: str, what: str) -> float:
    seconds = duration_seconds(str(text))
    if seconds is None:
        raise UsageError(f"{what}: expected a duration such as 15s, 500ms or 2m, got {text!r}")
    return seconds


def parse_port(text: str, what: str, allow_zero: bool = False) -> int:
    try:
        n = int(str(text).strip())
    except ValueError:
        raise UsageError(f"{what}: expected a port number, got {text!r}") from None
    if not (0 if allow_zero else 1) <= n <= 65535:
        raise UsageError(f"{what}: port {n} is out of range ({0 if allow_zero else 1}-65535)")
    return n


def parse_target(text: str, what: str) -> tuple[str, int]:
    """'8087' -> ('127.0.0.1', 8087); 'app:8087' -> ('app', 8087); '[::1]:8087' -> ('::1', 8087)."""
    text = str(text).strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            raise UsageError(f"{what}: expected [HOST]:PORT, got {text!r}")
        return host, parse_port(rest[1:], what)
    if ":" in text:
        host, _, port = text.rpartition(":")
        if not host:
            raise UsageError(f"{what}: expected [HOST:]PORT, got {text!r}")
        return host, parse_port(port, what)
    return "127.0.0.1", parse_port(text, what)


def parse_dashboard_url(text: str, what: str) -> str:
    """'dash:8088' -> 'http://dash:8088'; an http(s) URL as given. Anything else is a usage error
    now rather than a push that fails every second for the life of the pod."""
    given = str(text).strip()
    # The seed's MOTHERSHIP/DASHBOARD were often given as a bare host:port.
    url = given if "://" in given else "http://" + given
    expected = f"expected http(s)://HOST[:PORT][/PATH] or HOST:PORT, got {given!r}"
    try:
        u = urlsplit(url)
        port = u.port  # ValueError when not a number in 0-65535
    except ValueError:
        raise UsageError(f"{what}: {expected}") from None
    if u.scheme not in ("http", "https"):
        raise UsageError(f"{what}: only http:// and https:// are supported, got {given!r}")
    # An empty port ("dash:") passes urlsplit; a query would end up before the pushed paths.
    if not u.hostname or port == 0 or u.netloc.endswith(":") or u.query or u.fragment:
        raise UsageError(f"{what}: {expected}")
    return url


def parse_size(text: str, what: str) -> int:
    size = size_bytes(str(text))
    if size is None:
        raise UsageError(f"{what}: expected a size such as 32768, 32k or 1m, got {text!r}")
    return size


def parse_positive(text: str, what: str) -> int:
    try:
        n = int(str(text).strip())
    except ValueError:
        raise UsageError(f"{what}: expected a positive whole number, got {text!r}") from None
    if n < 1:
        raise UsageError(f"{what}: expected a positive whole number, got {n}")
    return n


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    target_host: str = "127.0.0.1"
    target_port: int = 8087
    rules: tuple[str, ...] = ()
    admin_host: str = "0.0.0.0"
    admin_port: int = 9090
    access_log: bool = False
    drain_timeout: float = 15.0
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)
    dashboard: str | None = None           # DASHBOARD (alias MOTHERSHIP): where telemetry is pushed
    dashboard_token: str | None = None     # DASHBOARD_TOKEN: bearer token for the pushes
    pod: str = ""                          # POD_NAME, else HOSTNAME
    reload_poll: float = 5.0               # poll of the rules files besides the watch (seconds; 0 = off)
    watch: bool = True                     # False: no watch and no poll, SIGHUP only (--no-watch)
    # OTEL_* and the Downward API's POD_NAMESPACE / NODE_NAME, as given: telemetry.otel reads them
    # the way the OTel SDKs do (an invalid value is a warning and its default, not a refusal to start).
    otel_env: tuple[tuple[str, str], ...] = ()
    workers: int = 1                       # --workers/WORKERS; 1 = one process, no supervisor
    workers_reason: str = "default 1"      # how `workers` was chosen (logged, on /status)


def from_args(args, env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from argparse's namespace for `run` and the environment (flags win)."""
    env = os.environ if env is None else env

    def pick(flag_value, env_name, default):
        if flag_value is not None:
            return flag_value, f"--{env_name.lower().replace('_', '-')}"
        if env.get(env_name) not in (None, ""):
            return env[env_name], env_name
        return default, env_name

    port_text, port_what = pick(args.port, "PORT", "8080")
    # 0 = any free port (the start-up log line says which): handy for tests and tooling.
    port = parse_port(port_text, port_what if args.port is None else "--port", allow_zero=True)
    target_text, target_what = pick(args.target, "TARGET_PORT", "8087")
    target_host, target_port = parse_target(target_text, "--target" if args.target is not None else target_what)
    if args.rules:
        rules = tuple(args.rules)
    elif env.get("RULES"):
        rules = tuple(p for p in env["RULES"].split(os.pathsep) if p)
    else:
        rules = ()
    admin_text = args.admin_port if args.admin_port is not None else env.get("ADMIN_PORT", "9090")
    admin_port = parse_port(admin_text, "--admin-port" if args.admin_port is not None else "ADMIN_PORT",
                            allow_zero=True)
    if admin_port and port and admin_port == port:
        raise UsageError(f"--admin-port: {admin_port} is also the proxy port; pick another or 0 to turn it off")

    d = Limits()
    limits = Limits(
        max_header_size=parse_size(args.max_header_size, "--max-header-size") if args.max_header_size
        else d.max_header_size,
        max_headers=parse_positive(args.max_headers, "--max-headers") if args.max_headers else d.max_headers,
        max_connections=parse_positive(args.max_connections, "--max-connections") if args.max_connections
        else d.max_connections,
        header_timeout=_dur(args.header_timeout, "--header-timeout", d.header_timeout),
        idle_timeout=_dur(args.idle_timeout, "--idle-timeout", d.idle_timeout),
        body_timeout=_dur(args.body_timeout, "--body-timeout", d.body_timeout),
        connect_timeout=_dur(args.connect_timeout, "--connect-timeout", d.connect_timeout),
        upstream_timeout=_dur(args.upstream_timeout, "--upstream-timeout", d.upstream_timeout),
    )
    if getattr(args, "dashboard", None):
        dashboard = parse_dashboard_url(args.dashboard, "--dashboard")
    elif env.get("DASHBOARD"):
        dashboard = parse_dashboard_url(env["DASHBOARD"], "DASHBOARD")
    elif env.get("MOTHERSHIP"):
        dashboard = parse_dashboard_url(env["MOTHERSHIP"], "MOTHERSHIP")
    else:
        dashboard = None
    watch = not getattr(args, "no_watch", False)
    reload_poll = _dur(getattr(args, "reload_poll", None), "--reload-poll", 5.0 if watch else 0.0)
    if not watch and reload_poll:
        raise UsageError("--reload-poll: --no-watch turns off every automatic reload, the poll too; "
                         "give one or the other (SIGHUP reloads either way)")
    workers_text, workers_what = pick(getattr(args, "workers", None), "WORKERS", None)
    workers, workers_reason = (parse_workers(workers_text, workers_what) if workers_text is not None
                               else (1, "default 1"))
    log_level = (args.log_level or env.get("LOG_LEVEL") or "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise UsageError(f"--log-level: expected debug, info, warning or error, got {log_level!r}")
    return Settings(
        host=args.host or env.get("HOST") or "0.0.0.0",
        port=port,
        target_host=target_host,
        target_port=target_port,
        rules=rules,
        admin_port=admin_port,
        access_log=bool(args.access_log),
        drain_timeout=_dur(args.drain_timeout, "--drain-timeout", 15.0),
        log_level=log_level,
        limits=limits,
        dashboard=dashboard,
        dashboard_token=env.get("DASHBOARD_TOKEN") or None,
        pod=env.get("POD_NAME") or env.get("HOSTNAME") or os.uname().nodename,
        reload_poll=reload_poll,
        watch=watch,
        otel_env=tuple(sorted((k, v) for k, v in env.items()
                              if k.startswith("OTEL_") or k in ("POD_NAME", "POD_NAMESPACE", "NODE_NAME"))),
        workers=workers,
        workers_reason=workers_reason,
    )


def _dur(value, what: str, default: float) -> float:
    return default if value is None else parse_duration(value, what)
