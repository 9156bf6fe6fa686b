"""Shadow mode (`mode: shadow`) for the round-1 actions: nothing applied, every would-be action
counted, logged with the request id, exported as a metric and in /status, asserted by `decorator
test`, explained by `decorator explain`, and switched live by editing the rules of a running sidecar.
The new actions' shadow behaviour is tested with each action (test_actions_*.py)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from decorator.rules import compile_rules, load_rules
from decorator.rules.packtest import CaptureRuntime, simulate
from decorator.telemetry.metrics import Metrics
from tests.rules.helpers import errors_of
from tests.support import free_port, threaded_http_server, wait_port

ROOT = Path(__file__).resolve().parents[2]

SHADOWED = """
mode: shadow
rules:
  - name: maint
    match: {path: /shop/**}
    respond: {status: 503, body: down}
  - name: new-404
    match: {status: 404}
    respond: {body: new page}
  - name: hdrs
    headers:
      request: {set: {X-Req: "1"}}
      response: {set: {X-Resp: "1"}}
  - name: alert
    match: {status: 5xx}
    notify: {url: "http://127.0.0.1:9/x"}
  - name: timing
    record: {}
  - name: live
    mode: enforce
    match: {path: /live}
    respond: {body: live}
"""


def _hooks(write, text):
    rt = CaptureRuntime()
    return compile_rules(load_rules([write("r.yaml", text)], env={}), rt), rt


def test_a_shadow_rule_applies_nothing_and_counts_what_it_would_do(write):
    hooks, rt = _hooks(write, SHADOWED)
    out = simulate(hooks, "GET", "/shop/cart", [])
    assert out.status == 200 and out.upstream_headers is not None      # the app answered
    assert ("x-req", "1") not in [(k.decode().lower(), v.decode()) for k, v in out.upstream_headers]
    assert b"X-Resp" not in b"".join(k for k, _ in out.headers)
    assert rt.counters["shadow_hits"] == {"maint": {"respond": 1}, "hdrs": {"headers": 2}}
    assert ("maint", "respond", "answer 503 with an inline body") in rt.shadowed
    # record is observe-only: it runs (traced as fired) in a shadow rule
    assert {r for r, _, _ in rt.fired} == {"timing"}

    out = simulate(hooks, "GET", "/x", [], _upstream(503))
    assert out.status == 503 and out.body == b"app"
    assert rt.events == []                                               # no webhook
    assert rt.counters["shadow_hits"]["alert"] == {"notify": 1}
    out = simulate(hooks, "GET", "/gone", [], _upstream(404))
    assert (out.status, out.body) == (404, b"app")
    assert rt.counters["shadow_hits"]["new-404"] == {"respond": 1}
    # the rule's own mode wins over the file's default
    assert simulate(hooks, "GET", "/live", []).body == b"live"
    assert "live" not in rt.counters["shadow_hits"]


def _upstream(status):
    from decorator.rules.models import FakeUpstream
    return FakeUpstream(status=status, body="app")


def test_mode_is_validated_with_a_location(write):
    p = write("r.yaml", "rules:\n  - name: a\n    mode: dry\n    respond: {}\n")
    [err] = errors_of(p)
    assert err.startswith(f"{p}:3:11: rules[0].mode:") and "enforce" in err and "shadow" in err
    p = write("s.yaml", "mode: 1\nrules: []\n")
    [err] = errors_of(p)
    assert err.startswith(f"{p}:1:7: mode:")


def test_shadow_hits_are_logged_with_the_request_id_once_a_minute_per_rule(write, caplog):
    caplog.set_level(logging.INFO, "decorator.rules.shadow")
    hooks, rt = _hooks(write, SHADOWED)
    for _ in range(3):
        simulate(hooks, "GET", "/shop/a", [])
    lines = [r.getMessage() for r in caplog.records if "maint" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "shadow rule maint: respond would answer 503 with an inline body for GET /shop/a (request test-" in lines[0]
    assert rt.counters["shadow_hits"]["maint"] == {"respond": 3}


def test_shadow_hits_are_a_two_label_metric(write):
    hooks, rt = _hooks(write, SHADOWED)
    simulate(hooks, "GET", "/shop/a", [])
    simulate(hooks, "GET", "/shop/a", [])
    m = Metrics(process=False)
    m.add_source(lambda: rt.counters)
    text = m.render()[0].decode()
    assert 'decorator_rule_shadow_hits_total{action="respond",rule="maint"} 2.0' in text
    assert 'decorator_rule_shadow_hits_total{action="headers",rule="hdrs"} 4.0' in text


def test_decorator_test_asserts_shadow_hits(write, tmp_path):
    p = write("pack.yaml", SHADOWED + """
tests:
  - name: maint would answer, the app does
    request: GET /shop/cart
    expect: {status: 200, shadow: [maint, "maint:respond", hdrs], not_fired: [maint], fired: [timing]}
  - name: wrong expectation fails
    request: GET /shop/cart
    expect: {shadow: [hdrs]}
  - name: naming the wrong action fails
    request: GET /shop/cart
    expect: {shadow: ["maint:headers", hdrs]}
""")
    r = subprocess.run([sys.executable, "-m", "decorator", "test", p], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ok   " in r.stdout and "maint would answer, the app does" in r.stdout
    assert "shadow: expected would-be actions from ['hdrs'], got ['hdrs', 'maint']" in r.stdout
    assert "shadow: expected maint's headers to be a would-be action, it was not" in r.stdout
    assert "1 passed, 2 failed" in r.stdout
    bad = write("bad.yaml", "rules:\n  - {name: a, respond: {}}\ntests:\n  - name: x\n    request: GET /\n"
                "    expect: {shadow: [b]}\n")
    [err] = errors_of(bad)
    assert err.startswith(f"{bad}:6:23:") and "rule 'b'" in err


def test_explain_says_what_a_shadow_rule_would_have_done(write):
    p = write("r.yaml", SHADOWED)
    r = subprocess.run([sys.executable, "-m", "decorator", "explain", "--rules", p, "GET /shop/x"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "maint" in r.stdout and "shadow:respond" in r.stdout
    assert "shadow    respond would answer 503 with an inline body" in r.stdout
    assert "shadow    headers would edit the request headers; headers would edit the response headers" in r.stdout
    assert "observe-only actions (record) run as usual" in r.stdout


# -- a live sidecar: metrics, /status, and switching mode by editing the file --------------------

class _App(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"from the app"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def _get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _wait(pred, what: str, log: Path | None = None, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"; log:\n{log.read_text()}" if log else ""))


RUN_RULES = """
rules:
  - name: maint
    mode: {mode}
    match: {{path: /shop/**}}
    respond: {{status: 503, body: down}}
"""


def _free_port_everywhere() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _start(log: Path, env: dict, app_port: int, rules: Path) -> tuple[subprocess.Popen, int, int]:
    """`decorator run` on two free ports; tried again on other ports when one was taken meanwhile
    (other processes on the machine take ports too)."""
    for _ in range(5):
        port = free_port()
        admin = _free_port_everywhere()  # the admin port listens on every address
        if admin == port:
            continue
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "decorator", "run", "--host", "127.0.0.1", "--port", str(port),
                 "--admin-port", str(admin), "--target", f"127.0.0.1:{app_port}", "--rules", str(rules),
                 "--reload-poll", "0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        try:
            wait_port(port, proc)
            wait_port(admin, proc)
            return proc, port, admin
        except RuntimeError:
            if "address already in use" not in log.read_text():
                raise AssertionError(log.read_text()) from None
    raise AssertionError("no free ports: " + log.read_text())


def test_a_running_sidecar_shadows_then_enforces_after_an_edit(tmp_path):
    import re
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text(RUN_RULES.format(mode="shadow"))
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD", "MOTHERSHIP", "RULES")}
    with threaded_http_server(_App) as app_port:
        proc, port, admin = _start(log, env, app_port, rules)
        try:
            for _ in range(3):
                assert _get(port, "/shop/cart") == (200, b"from the app")
            status = json.loads(_get(admin, "/status")[1])
            assert status["rule_counters"]["shadow_hits"] == {"maint": {"respond": 3}}
            assert status["rules"]["active"]["shadow"] == ["maint"]
            metrics = _get(admin, "/metrics")[1].decode()
            assert 'decorator_rule_shadow_hits_total{action="respond",rule="maint"} 3.0' in metrics
            text = log.read_text()
            assert re.search(r"shadow rule maint: respond would answer 503 with an inline body for GET "
                             r"/shop/cart \(request [0-9a-f-]+\)", text), text
            (rules / "r.yaml").write_text(RUN_RULES.format(mode="enforce"))
            _wait(lambda: _get(port, "/shop/cart") == (503, b"down"), "the edit to take effect")
            status = json.loads(_get(admin, "/status")[1])
            assert status["rules"]["active"]["shadow"] == []
            before = status["rule_counters"]["shadow_hits"]["maint"]["respond"]
            assert _get(port, "/shop/cart") == (503, b"down")
            after = json.loads(_get(admin, "/status")[1])["rule_counters"]["shadow_hits"]["maint"]["respond"]
            assert after == before  # enforced now: no more would-be hits
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
