"""The alert-5xx pack beyond what `tests:` cases can say: how many events, their shape, the
cooldown over (fake) time, and its parameters. Drives the pack's compiled hooks with
decorator.rules.packtest (no network); imports nothing from the proxy but its hooks contract."""

from __future__ import annotations

from pathlib import Path

from decorator.rules import compile_rules, load_rules
from decorator.rules.models import FakeUpstream
from decorator.rules.packtest import CaptureRuntime, simulate

PACK = str(Path(__file__).resolve().parent)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(env: dict[str, str] | None = None):
    """(hooks, runtime, clock) for the pack with exactly `env` as the environment."""
    rt = CaptureRuntime(pod="web-1")
    clock = rt.clock = Clock()
    return compile_rules(load_rules([PACK], env=env or {}), rt), rt, clock


def _send(hooks, status: int, n: int = 1, path: str = "/api/orders") -> None:
    for _ in range(n):
        simulate(hooks, "GET", path, [], FakeUpstream(status=status))


def test_defaults_one_event_at_the_fifth_5xx_then_quiet_for_the_cooldown():
    hooks, rt, clock = _run()
    _send(hooks, 503, 4)
    assert rt.events == []
    _send(hooks, 503)
    assert len(rt.events) == 1
    rule, event, target = rt.events[0]
    assert rule == "alert-5xx/alert-5xx"  # qualified by its pack
    assert target.url == "http://127.0.0.1:8088/events"
    assert dict(target.headers) == {"Authorization": "Bearer none"}
    assert event["event"] == "rule.matched" and event["pod"] == "web-1"
    assert (event["count"], event["window_s"]) == (5, 60.0)
    assert event["request"]["path"] == "/api/orders" and event["response"] == {"status": 503}
    assert event["message"].startswith("503 on GET /api/orders (last request test-")
    # Within the 5 minute cooldown nothing more is sent, however many errors.
    clock.now += 60
    _send(hooks, 500, 50)
    assert len(rt.events) == 1
    assert rt.counters["notify_suppressed"]["alert-5xx/alert-5xx"] == 4 + 50


def test_errors_spread_wider_than_the_window_never_alert():
    hooks, rt, clock = _run()
    for _ in range(20):
        _send(hooks, 500)
        clock.now += 16.0  # any 5 in a row span 64 s: never 5 within 60 s
    assert rt.events == []


def test_after_the_cooldown_the_next_burst_alerts_again():
    hooks, rt, clock = _run()
    _send(hooks, 502, 5)
    clock.now += 301.0
    _send(hooks, 502, 5)
    assert len(rt.events) == 2


def test_parameters_url_token_threshold_cooldown_and_key():
    hooks, rt, clock = _run({"ALERT_URL": "https://alerts.example/hook", "DASHBOARD_TOKEN": "s3cret",
                             "ALERT_THRESHOLD": "2 in 10s", "ALERT_COOLDOWN": "1s", "ALERT_KEY": "{route}"})
    _send(hooks, 500, 2, "/a")
    _send(hooks, 500, 2, "/b")  # another key: its own threshold and cooldown
    assert [e["request"]["path"] for _, e, _ in rt.events] == ["/a", "/b"]
    _, event, target = rt.events[0]
    assert target.url == "https://alerts.example/hook"
    assert dict(target.headers) == {"Authorization": "Bearer s3cret"}
    assert event["window_s"] == 10.0
    clock.now += 2.0
    _send(hooks, 500, 2, "/a")
    assert len(rt.events) == 3


def test_4xx_and_successes_are_not_counted_towards_the_threshold():
    hooks, rt, _ = _run({"ALERT_THRESHOLD": "2 in 60s"})
    _send(hooks, 500)
    _send(hooks, 404, 10)
    _send(hooks, 200, 10)
    assert rt.events == []
    _send(hooks, 500)
    assert len(rt.events) == 1
