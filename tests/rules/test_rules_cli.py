"""`decorator validate | test | explain` as real subprocesses, and an action added through the
plugin entry point with the same contract as the built-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "ALERT_URL"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "decorator", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=60, check=False)


PACK = """\
rules:
  - name: friendly-404
    match: { status: 404, path: "/**", method: [GET, HEAD] }
    respond: { file: pages/404.html, content_type: text/html }
  - name: timing
    record: { timing: true }
  - name: page-on-5xx
    match: { status: 5xx }
    notify:
      url: ${ALERT_URL:-http://127.0.0.1:9/events}
      cooldown: 60s
"""

TESTS = """\
tests:
  - name: a 404 gets the page
    request: GET /missing
    upstream: {status: 404, headers: {Content-Type: text/plain}, body: "raw"}
    expect:
      status: 404
      headers: {Content-Type: text/html}
      body_contains: "<h1>not here</h1>"
      fired: [friendly-404, timing]
      notify: []
  - name: a POST 404 passes through
    request: {method: POST, path: /missing}
    upstream: {status: 404, body: "raw"}
    expect: {status: 404, body: raw, not_fired: [friendly-404]}
  - name: 5xx pages once within the cooldown
    request: GET /api
    upstream: {status: 503}
    repeat: 3
    expect: {status: 503, notify: [page-on-5xx], record: [timing]}
"""


def make_pack(tmp_path: Path, extra_tests: str = "") -> Path:
    pack = tmp_path / "packs" / "card"
    (pack / "pages").mkdir(parents=True)
    (pack / "pages" / "404.html").write_text("<h1>not here</h1>")
    (pack / "rules.yaml").write_text(PACK)
    (pack / "tests.yaml").write_text(TESTS + extra_tests)
    return pack


def test_validate_ok_prints_one_line_summary(tmp_path):
    pack = make_pack(tmp_path)
    r = run("validate", str(pack))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok: 3 rules in 2 files, 3 tests\n"


def test_validate_errors_text_and_json(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    match: {stauts: 500}\n    notify: {url: '${HOOK}'}\n")
    r = run("validate", str(bad))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        (f"{bad}:3:13: rules[0].match: unknown key 'stauts' (did you mean 'status'?); expected one of: "
         "status, method, path, path_regex, headers, response_headers, when"),
        (f"{bad}:4:20: variable HOOK is not set (not in vars, not in the environment) and has no default; "
         "set it or write ${HOOK:-default}"),
    ]
    r = run("validate", "--format", "json", str(bad))
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert [(d["line"], d["col"]) for d in data] == [(3, 13), (4, 20)]
    assert all(d["file"] == str(bad) for d in data)
    r = run("validate", "--format", "json", str(make_pack(tmp_path)))
    assert (r.returncode, json.loads(r.stdout)) == (0, [])


def test_test_command_passes_and_fails(tmp_path):
    make_pack(tmp_path)
    r = run("test", str(tmp_path / "packs"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "3 passed, 0 failed"
    broken = make_pack(tmp_path / "two", """\
  - name: wrong on purpose
    request: GET /nope
    upstream: {status: 500}
    expect: {status: 200, notify: []}
""")
    r = run("test", str(broken))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[-1] == "3 passed, 1 failed"
    fail = lines.index(next(ln for ln in lines if ln.startswith("FAIL")))
    assert lines[fail] == f"FAIL {broken / 'tests.yaml'}:20:5: wrong on purpose"
    assert lines[fail + 1:fail + 3] == ["     status: expected 200, got 500",
                                        "     notify: expected events from [], got ['page-on-5xx']"]


def test_test_command_with_env_and_upstream_headers(tmp_path):
    (tmp_path / "m.yaml").write_text(textwrap.dedent("""\
        rules:
          - name: maintenance
            enabled: ${MAINTENANCE:-false}
            respond: {status: 503, body: "back soon", headers: {Retry-After: "300"}}
          - name: tag
            headers: {request: {set: {X-From: sidecar}}}
        tests:
          - name: off by default
            request: GET /
            expect: {status: 200, upstream_headers: {X-From: sidecar}, not_fired: [maintenance]}
          - name: switched on
            env: {MAINTENANCE: "true"}
            request: GET /
            expect: {status: 503, headers: {Retry-After: "300"}, body: back soon}
        """))
    r = run("test", str(tmp_path / "m.yaml"))
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1] == "2 passed, 0 failed"


def test_test_command_reports_invalid_rules(tmp_path):
    (tmp_path / "x.yaml").write_text("rules:\n  - name: x\n    record: {timin: true}\n")
    r = run("test", str(tmp_path / "x.yaml"))
    assert r.returncode == 1
    assert r.stdout.splitlines()[0].startswith(f"ERROR {tmp_path / 'x.yaml'}:3:14: rules[0].record: unknown key")


def test_explain_says_which_phase_and_why_not(tmp_path):
    pack = make_pack(tmp_path)
    r = run("explain", "GET /a/b", "--rules", str(pack), "--status", "404", "--header", "Accept: text/html")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "request: GET /a/b   status: 404"
    assert lines[1].split()[:4] == ["friendly-404", "response", "respond", "MATCH"]
    assert lines[2].split()[:4] == ["timing", "complete", "record", "MATCH"]
    assert "no: status 404 not in 5xx" in lines[3] and lines[3].startswith("page-on-5xx")
    assert lines[-1] == "2 matches, 3 rules"
    r = run("explain", "POST /a/b", "--rules", str(pack))
    assert "no: method POST not in GET, HEAD; status (none) not in 404" in r.stdout


def test_an_added_action_follows_the_same_contract(tmp_path):
    site = tmp_path / "site"
    (site / "stamp_action-1.0.dist-info").mkdir(parents=True)
    (site / "stamp_action-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: stamp-action\n"
                                                                   "Version: 1.0\n")
    (site / "stamp_action-1.0.dist-info" / "entry_points.txt").write_text(
        "[decorator.actions]\nstamp = stamp_action\n")
    (site / "stamp_action.py").write_text(textwrap.dedent('''\
        from decorator.actions.registry import Action, register
        from decorator.rules.base import Strict


        class StampConfig(Strict):
            """Add X-Stamp to the response."""
            value: str


        @register
        class Stamp(Action):
            name = "stamp"
            Config = StampConfig
            summary = "Stamp the response."

            def __init__(self, config, rule, prepared, runtime):
                super().__init__(config, rule, prepared, runtime)
                self.response = self._stamp

            def _stamp(self, ex, reply):
                target = reply.headers if reply is not None else ex.response_headers
                target.append((b"X-Stamp", self.config.value.encode()))
        '''))
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""\
        rules:
          - name: s
            stamp: {value: hello}
        tests:
          - name: stamped
            request: GET /
            expect: {headers: {X-Stamp: hello}, fired: [s]}
        """))
    env = {"PYTHONPATH": str(site)}
    r = run("test", str(tmp_path / "r.yaml"), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "1 passed, 0 failed"
    r = run("schema", env=env)
    assert '"stamp"' in r.stdout
    (tmp_path / "r.yaml").write_text("rules:\n  - name: s\n    stamp: {valu: hello}\n")
    r = run("validate", str(tmp_path / "r.yaml"), env=env)
    assert r.stdout.startswith(f"{tmp_path / 'r.yaml'}:3:13: rules[0].stamp: unknown key 'valu' (did you mean "
                               "'value'?)")


def test_run_refuses_to_start_on_invalid_rules_with_the_same_messages(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: x\n    natch: {status: 404}\n    record: {timing: true}\n")
    validate = run("validate", str(bad))
    started = run("run", "--port", "0", "--admin-port", "0", "--rules", str(bad))
    assert validate.returncode == 1 and started.returncode == 1
    assert f"{bad}:3:5:" in started.stderr and "did you mean 'match'" in started.stderr
    error_lines = [ln for ln in validate.stdout.splitlines() + validate.stderr.splitlines() if f"{bad}:" in ln]
    assert error_lines and all(ln in started.stderr for ln in error_lines)
    assert "listening" not in started.stderr


def test_explain_follows_a_request_phase_reply_into_the_later_phases(tmp_path):
    """A maintenance 503 made in the request phase is the status the complete phase sees: the
    5xx alert shows as matching (it really fires), and the app's response phase is skipped."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent("""\
        rules:
          - name: maintenance
            match: { path: "/**" }
            respond: { status: 503, body: down }
          - name: errors-page
            match: { status: 5xx }
            respond: { body: sorry }
          - name: alert
            match: { status: 5xx }
            notify: { url: "http://127.0.0.1:9/events" }
        """))
    r = run("explain", "GET /shop", "--rules", str(rules))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("request: GET /shop   status: 503 (answered by the sidecar")
    by_rule = {ln.split()[0]: ln for ln in lines[1:-1]}
    assert " MATCH " in by_rule["maintenance"] and " MATCH " in by_rule["alert"]
    assert "the request phase answered" in by_rule["errors-page"]
    assert lines[-1] == "2 matches, 3 rules"


def test_replied_by_keeps_a_maintenance_503_from_paging_in_decorator_test(tmp_path):
    """The same 5xx alert, keyed on `replied_by == 'app'`: quiet for the sidecar's maintenance 503,
    fires for the app's 503 (`decorator test` drives the tunnel's own order, no network)."""
    (tmp_path / "rules.yaml").write_text(textwrap.dedent("""\
        rules:
          - name: maintenance
            enabled: ${MAINTENANCE:-false}
            match: { path: "/shop/**" }
            respond: { status: 503, body: down }
          - name: page-on-call
            match: { status: 5xx, when: "replied_by == 'app'" }
            notify: { url: "http://127.0.0.1:9/events" }
        """))
    (tmp_path / "rules.tests.yaml").write_text(textwrap.dedent("""\
        tests:
          - name: the maintenance 503 does not page
            env: { MAINTENANCE: "true" }
            request: GET /shop/cart
            expect: { status: 503, body: down, notify: [], not_fired: [page-on-call] }
          - name: the app's 503 pages
            request: GET /shop/cart
            upstream: { status: 503 }
            expect: { status: 503, notify: [page-on-call] }
        """))
    r = run("test", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "2 passed, 0 failed"
