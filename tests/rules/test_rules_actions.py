"""Actions on compiled hooks: respond (inline, file, big file, template), headers, record, and
isolation of a failing action."""

from __future__ import annotations

import pytest

from decorator.actions.respond import SMALL_FILE
from decorator.rules import Runtime
from decorator.rules.packtest import simulate
from tests.rules.helpers import hooks_for, make_ex


def test_respond_inline_template_is_html_escaped(write):
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: nope
            match: {path: /gone/**}
            respond:
              status: 410
              content_type: text/html
              body: "<p>{path} ({method}, {status}, {rule}, {request_id}) {{literal}}</p>"
              headers: {X-Rule: "{rule}", Cache-Control: no-store}
        """))
    r = h.on_request(make_ex("/gone/<script>", "GET"))
    assert r.status == 410
    assert r.body == b"<p>/gone/&lt;script&gt; (GET, 410, nope, rid-1) {literal}</p>"
    assert (b"Content-Type", b"text/html") in r.headers
    assert (b"X-Rule", b"nope") in r.headers and (b"Cache-Control", b"no-store") in r.headers


def test_respond_on_response_keeps_the_app_status_by_default(write):
    write("pages/404.html", "<h1>lost</h1>")
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: friendly-404
            match: {status: 404}
            respond: {file: pages/404.html}
        """))
    r = h.on_response_head(make_ex("/x", status=404, response_headers={"Content-Type": "text/plain"}))
    assert r.status == 404 and r.body == b"<h1>lost</h1>" and r.file is None
    assert (b"Content-Type", b"text/html; charset=utf-8") in r.headers


def test_respond_big_file_is_streamed_by_path(write, tmp_path):
    big = write("big.bin", b"x" * (SMALL_FILE + 1))
    h, _ = hooks_for(write("r.yaml", "rules: [{name: b, match: {path: /dl}, respond: {file: big.bin}}]\n"))
    r = h.on_request(make_ex("/dl"))
    assert r.file == big and r.body == b""
    assert (b"Content-Type", b"application/octet-stream") in r.headers


def test_respond_file_template(write):
    write("maint.html", "<p>back soon, ref {request_id} for {path}</p>")
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: m
            respond: {status: 503, file: maint.html, template: true, headers: {Retry-After: "120"}}
        """))
    r = h.on_request(make_ex("/a&b"))
    assert r.status == 503 and r.body == b"<p>back soon, ref rid-1 for /a&amp;b</p>"
    assert (b"Retry-After", b"120") in r.headers


def test_first_reply_wins_and_headers_apply_to_the_reply(write):
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: maintenance
            respond: {status: 503, body: down}
          - name: never
            respond: {status: 200, body: other}
          - name: security
            headers:
              response:
                set: {X-Frame-Options: DENY}
                default: {Content-Security-Policy: "default-src 'self'"}
        """))
    out = simulate(h, "GET", "/", [])
    assert out.status == 503 and out.body == b"down"
    assert (b"X-Frame-Options", b"DENY") in out.headers
    assert (b"Content-Security-Policy", b"default-src 'self'") in out.headers


def test_headers_edit_request_and_response(write):
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: edits
            headers:
              request:
                remove: [Cookie]
                set: {X-Request-Id: "{request_id}"}
                add: {X-Forwarded-By: decorator}
              response:
                remove: [Server]
                default: {Cache-Control: no-cache}
                add: {X-Served-By: "{rule}"}
        """))
    ex = make_ex("/", headers={"Cookie": "a=1", "x-request-id": "client-sent", "X-Forwarded-By": "lb"})
    assert h.on_request(ex) is None
    assert ex.request_headers == [(b"X-Forwarded-By", b"lb"), (b"X-Request-Id", b"rid-1"),
                                  (b"X-Forwarded-By", b"decorator")]
    ex.status = 200
    ex.response_headers = [(b"Server", b"app/1"), (b"cache-control", b"max-age=60")]
    assert h.on_response_head(ex) is None
    assert ex.response_headers == [(b"cache-control", b"max-age=60"), (b"X-Served-By", b"edits")]


def test_header_values_from_templates_cannot_inject(write):
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: e
            headers: {response: {set: {X-Path: "{path}"}}}
        """))
    ex = make_ex("/a\r\nSet-Cookie: x=1", status=200)
    h.on_response_head(ex)
    assert ex.response_headers == [(b"X-Path", b"/aSet-Cookie: x=1")]


class Recorder:
    def __init__(self) -> None:
        self.calls = []

    def record(self, ex, fields):
        self.calls.append((ex.path, ex.status, fields))


def test_record_hands_fields_to_the_recorder(write):
    rec = Recorder()
    h, rt = hooks_for(write("r.yaml", """
        rules:
          - {name: timing, record: {timing: true}}
          - {name: errs, match: {status: 5xx}, record: {}}
          - {name: sizes, record: {size: true, status: false}}
        """), runtime=Runtime(recorder=rec))
    simulate(h, "GET", "/a", [])
    ex = make_ex("/b", status=502)
    h.on_complete(ex)
    assert rec.calls == [
        ("/a", 200, frozenset({"timing"})), ("/a", 200, frozenset({"size"})),
        ("/b", 502, frozenset({"timing"})), ("/b", 502, frozenset({"timing", "status", "size"})),
        ("/b", 502, frozenset({"size"})),
    ]
    assert rt.counters["rule_hits"] == {"timing": 2, "sizes": 2, "errs": 1}


def test_record_without_recorder_counts(write):
    h, rt = hooks_for(write("r.yaml", "rules: [{name: t, record: {}}]\n"))
    for _ in range(3):
        simulate(h, "GET", "/", [])
    assert rt.counters["records"] == {"t": 3}


def test_a_failing_action_is_isolated_and_counted(write, caplog):
    class Broken:
        def record(self, ex, fields):
            raise RuntimeError("telemetry bug")
    h, rt = hooks_for(write("r.yaml", """
        rules:
          - {name: rec, record: {}}
          - {name: after, match: {status: 200}, notify: {url: "http://127.0.0.1:9/x"}}
        """), runtime=Runtime(recorder=Broken()))
    out = simulate(h, "GET", "/", [])
    assert out.status == 200
    assert rt.counters["action_errors"] == {"rec": 1}
    assert rt._queue.qsize() == 1  # the next rule still ran
    assert "rule rec: action record failed in the complete phase (1 so far)" in caplog.text
    simulate(h, "GET", "/", [])
    assert rt.counters["action_errors"] == {"rec": 2}
    assert caplog.text.count("action record failed") == 1  # one traceback per rule per minute


@pytest.mark.parametrize("body", ["{status!r}", "{status:>10}", "{__class__}", "{path.__len__}", "{0}"])
def test_template_rejects_everything_but_plain_fields(write, body):
    from decorator.errors import RulesInvalid
    from decorator.rules import load_rules
    p = write("r.yaml", f"rules: [{{name: t, respond: {{body: '{body}'}}}}]\n")
    with pytest.raises(RulesInvalid, match="unknown template field"):
        load_rules([p])


def test_after_a_request_phase_reply_the_response_phase_is_skipped(write):
    h, rt = hooks_for(write("r.yaml", """
        rules:
          - {name: early, match: {path: /x}, respond: {status: 503, body: early}}
          - {name: late, match: {status: 503}, respond: {status: 500, body: late}}
        """))
    ex = make_ex("/x")
    r = h.on_request(ex)
    assert r.status == 503 and ex.state == {"rules.replied": True}
    assert h.on_response_head(ex) is None  # even if a tunnel called it: the reply stands
    assert rt.counters["rule_hits"] == {"early": 1}


def test_json_body_template_escapes_request_values(tmp_path):
    """{path} and {request_id} come from the client: in a JSON body they cannot break out of the string."""
    import json as _json

    from tests.rules.helpers import hooks_for, make_ex

    f = tmp_path / "r.yaml"
    f.write_text('rules:\n  - name: j\n    match: {status: 404}\n    respond:\n'
                 '      content_type: application/json\n'
                 '      body: \'{{"error": "not found", "path": "{path}", "id": "{request_id}"}}\'\n')
    hooks, _ = hooks_for(str(f))
    ex = make_ex('/a"b\\\\c', status=404)
    ex.request_id = 'x", "admin": true, "y": "'
    reply = hooks.on_response_head(ex)
    doc = _json.loads(reply.body)
    assert doc == {"error": "not found", "path": '/a"b\\\\c', "id": 'x", "admin": true, "y": "'}
