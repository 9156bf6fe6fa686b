"""Matchers and dispatch: status forms, methods, globs/route templates, path_regex, headers,
`when`, phase assignment, and that unneeded phases stay None."""

from __future__ import annotations

from decorator.proxy.hooks import Interest

import pytest

from decorator.rules import match as match_mod
from decorator.rules.match import PathIndex, PathPattern
from tests.rules.helpers import hooks_for, make_ex


def _respond_rule(match: str, name: str = "r") -> str:
    return f"rules:\n  - name: {name}\n    match: {match}\n    respond: {{status: 299, body: hit}}\n"


def _replies(hooks, ex) -> bool:
    """Run the phases the way the tunnel does; True when the rule answered."""
    if hooks.on_request is not None and hooks.on_request(ex) is not None:
        return True
    return hooks.on_response_head is not None and ex.status and hooks.on_response_head(ex) is not None


@pytest.mark.parametrize("spec, yes, no", [
    ("404", [404], [403, 405, 500]),
    ("[404, 410]", [404, 410], [400, 411]),
    ("5xx", [500, 503, 599], [499, 404, 200]),
    ("500-504", [500, 502, 504], [505, 499]),
    ("[4xx, 503]", [400, 451, 503], [500, 302]),
])
def test_status_forms(write, spec, yes, no):
    h, _ = hooks_for(write("r.yaml", _respond_rule(f"{{status: {spec}}}")))
    assert h.on_request is None and h.on_response_head is not None
    for s in yes:
        assert _replies(h, make_ex("/x", status=s)), s
    for s in no:
        assert not _replies(h, make_ex("/x", status=s)), s


def test_method_single_and_list_case_insensitive(write):
    h, _ = hooks_for(write("r.yaml", _respond_rule("{method: [get, HEAD]}")))
    assert h.on_response_head is None  # request-only match: answered before the app
    assert _replies(h, make_ex("/", "GET")) and _replies(h, make_ex("/", "HEAD"))
    assert not _replies(h, make_ex("/", "POST"))


@pytest.mark.parametrize("pattern, yes, no", [
    ("/exact", ["/exact"], ["/exact/", "/exactly", "/"]),
    ("/api/**", ["/api", "/api/", "/api/a/b/c"], ["/apix", "/ap", "/v1/api"]),
    ("/**", ["/", "/anything/at/all"], []),
    ("/img/*.png", ["/img/a.png", "/img/.png"], ["/img/a/b.png", "/img/a.jpg"]),
    ("/users/{id}", ["/users/42", "/users/abc"], ["/users/", "/users/42/x", "/users"]),
    ("/a/**/z", ["/a/z", "/a/b/z", "/a/b/c/z"], ["/a/zz", "/b/z"]),
    ("/v*/items", ["/v1/items", "/v/items"], ["/x1/items"]),
])
def test_path_globs(pattern, yes, no):
    pat = PathPattern(pattern)
    for p in yes:
        assert pat.match(p), (pattern, p)
    for p in no:
        assert not pat.match(p), (pattern, p)


def test_path_index_finds_only_candidates_in_rule_order():
    class E:
        def __init__(self, order, pattern):
            self.order, self.pat = order, PathPattern(pattern) if pattern else None
    entries = [E(0, "/api/**"), E(1, None), E(2, "/api/v1/users/{id}"), E(3, "/static/*.css"),
               E(4, "/**"), E(5, "/api/v1/users/me")]
    idx = PathIndex((e.pat.key if e.pat else None, e) for e in entries)
    assert [e.order for e in idx.lookup("/api/v1/users/7")] == [0, 1, 2, 4]
    assert [e.order for e in idx.lookup("/api/v1/users/me")] == [0, 1, 2, 4, 5]
    assert [e.order for e in idx.lookup("/nothing")] == [1, 4]
    assert [e.order for e in idx.lookup("/api")] == [0, 1, 4]


def test_route_template_names_the_endpoint(write):
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: users
            match: {path: "/users/{id}"}
            record: {}
          - name: orders
            match: {path: "/users/{id}/orders/{oid}"}
            record: {}
        """))
    ex = make_ex("/users/42/orders/7?x=1")
    assert h.on_request(ex) is None
    assert ex.route == "/users/{id}/orders/{oid}"
    ex = make_ex("/users/42")
    h.on_request(ex)
    assert ex.route == "/users/{id}"
    ex = make_ex("/other")
    h.on_request(ex)
    assert ex.route is None


def test_path_regex_searches(write):
    h, _ = hooks_for(write("r.yaml", _respond_rule(r'{path_regex: "^/v[0-9]+/"}')))
    assert _replies(h, make_ex("/v2/x"))
    assert not _replies(h, make_ex("/vx/x"))


def test_request_header_matchers(write):
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: r
            match:
              headers:
                X-Present: true
                X-Absent: false
                Accept: {regex: "text/html"}
                X-Mode: maintenance
            respond: {body: hit}
        """))
    good = {"x-present": "", "accept": "text/html,*/*", "X-MODE": "maintenance"}
    assert _replies(h, make_ex("/", headers=good))
    assert not _replies(h, make_ex("/", headers={**good, "X-Absent": "1"}))
    assert not _replies(h, make_ex("/", headers={k: v for k, v in good.items() if k != "x-present"}))
    assert not _replies(h, make_ex("/", headers={**good, "accept": "application/json"}))
    assert not _replies(h, make_ex("/", headers={**good, "X-MODE": "Maintenance"}))


def test_response_header_matchers_make_a_response_rule(write):
    h, _ = hooks_for(write("r.yaml", _respond_rule('{response_headers: {Content-Type: {regex: "^text/"}}}')))
    assert h.on_request is None
    assert _replies(h, make_ex("/", status=200, response_headers={"content-type": "text/plain"}))
    assert not _replies(h, make_ex("/", status=200, response_headers={"content-type": "image/png"}))


def test_when_over_the_view(write):
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: q
            match: {when: "request.query.debug == '1' && request.headers.\\"x-team\\" == 'core'"}
            respond: {body: dbg}
          - name: big
            match: {when: "response.status >= `500` && response.headers.\\"retry-after\\" != `null`"}
            respond: {body: later}
        """))
    assert h.on_request is not None and h.on_response_head is not None
    assert h.on_request(make_ex("/x?debug=1", headers={"X-Team": "core"})).body == b"dbg"
    assert h.on_request(make_ex("/x?debug=0", headers={"X-Team": "core"})) is None
    ex = make_ex("/", status=503, response_headers={"Retry-After": "5"})
    assert h.on_response_head(ex).body == b"later"
    assert h.on_response_head(make_ex("/", status=503)) is None


def test_when_is_not_evaluated_for_requests_the_index_rules_out(write, monkeypatch):
    calls = []
    real = match_mod.exchange_view
    monkeypatch.setattr("decorator.rules.compile.exchange_view", lambda ex: calls.append(1) or real(ex))
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: q
            match: {path: /admin/**, when: "request.method == 'DELETE'"}
            respond: {status: 403, body: no}
        """))
    assert h.on_request(make_ex("/public/page", "DELETE")) is None
    assert calls == []
    assert h.on_request(make_ex("/admin/x", "DELETE")).status == 403
    assert calls == [1]


def test_phases_nobody_needs_stay_none(write):
    h, _ = hooks_for(write("r.yaml", "rules: [{name: t, record: {}}]\n"))
    assert (h.on_request, h.on_response_head) == (None, None) and h.on_complete is not None
    h, _ = hooks_for(write("r.yaml", "rules: [{name: t, match: {path: /x}, respond: {body: x}}]\n"))
    assert h.on_request is not None and (h.on_response_head, h.on_complete) == (None, None)
    h, _ = hooks_for(write("r.yaml", "rules: [{name: t, enabled: false, record: {}}]\n"))
    assert (h.on_request, h.on_response_head, h.on_complete) == (None, None, None)


def test_hundred_non_matching_path_rules_check_nothing(write, monkeypatch):
    rules = ["rules:"]
    for i in range(100):
        rules.append(f"  - {{name: p{i}, match: {{path: /svc{i}/**}}, respond: {{status: 410}}}}")
    rules.append("  - {name: timing, record: {timing: true}}")
    h, rt = hooks_for(write("r.yaml", "\n".join(rules) + "\n"))
    assert len(h._req.lookup("GET", "/api/users/1")) == 0  # the index rules them all out unmatched
    assert h.on_request(make_ex("/api/users/1")) is None
    ex = make_ex("/svc7/x")
    assert h.on_request(ex).status == 410
    assert rt.counters["rule_hits"] == {"p7": 1}


def test_status_zero_reaches_complete_rules_without_status(write):
    h, rt = hooks_for(write("r.yaml", """
        rules:
          - {name: all, record: {}}
          - {name: errors, match: {status: 5xx}, record: {}}
        """))
    ex = make_ex("/")
    ex.error = "upstream_refused"
    h.on_complete(ex)  # status 0: the exchange failed before any response
    assert rt.counters["records"] == {"all": 1}


@pytest.mark.parametrize("regex, key", [
    ("^/api/v[0-9]+/", "/api"), ("^/api/v1(/.*)?$", "/api"), ("^/exact", None), ("^/a/b/c", "/a/b"),
    ("^/apis?/x", None), ("/anywhere", None), ("^/a|^/b", None), ("^/x/y\\.json$", "/x"),
])
def test_regex_key_is_a_safe_literal_head(regex, key):
    from decorator.rules.match import regex_key
    assert regex_key(regex) == key


def test_regex_rules_are_found_through_their_key(write):
    h, _ = hooks_for(write("r.yaml", _respond_rule(r'{path_regex: "^/api/v[0-9]+/x"}')))
    assert h._req.lookup("GET", "/other") == ()
    assert _replies(h, make_ex("/api/v2/x")) and _replies(h, make_ex("/api/v2/xyz"))
    assert not _replies(h, make_ex("/api/vv/x"))


def test_method_prefilter_drops_rules_for_other_methods(write):
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - {name: post-only, match: {method: POST, path_regex: "-[0-9]+$"}, respond: {status: 403}}
          - {name: any, match: {path_regex: "^/z"}, respond: {status: 404}}
        """))
    assert [e.name for e in h._req.lookup("GET", "/a-1")] == ["any"]
    assert [e.name for e in h._req.lookup("POST", "/a-1")] == ["post-only", "any"]
    assert [e.name for e in h._req.lookup("BREW", "/a-1")] == ["any"]
    assert h.on_request(make_ex("/a-1", "POST")).status == 403
    assert h.on_request(make_ex("/a-1", "GET")) is None


def test_view_shape():
    from decorator.rules.match import exchange_view
    ex = make_ex("/p?a=1&a=2&b=", headers={"X-A": "1", "x-a": "2"}, status=503,
                 response_headers={"Retry-After": "5"})
    ex.route = "/p"
    v = exchange_view(ex)
    assert v["request"] == {"method": "GET", "path": "/p", "query": {"a": "1", "b": ""},
                            "headers": {"x-a": "1, 2"}, "client": ex.client}
    assert v["response"] == {"status": 503, "headers": {"retry-after": "5"}}
    assert v["timing"] == {"duration_ms": None, "upstream_ms": None} and v["route"] == "/p"
    assert exchange_view(make_ex("/"))["response"] is None
    assert v["error"] is None
    ex.error = "upstream_timeout"
    assert exchange_view(ex)["error"] == "upstream_timeout"


def test_view_replied_by_follows_the_exchange():
    from decorator.rules.match import exchange_view
    ex = make_ex("/")
    assert exchange_view(ex)["replied_by"] is None  # no response yet (request phase, or a failure)
    # The sidecar's own 502 as the response phase sees it: a status, but no app response head.
    ex.status, ex.error = 502, "upstream"
    assert exchange_view(ex)["replied_by"] == "sidecar"
    ex = make_ex("/", status=503)
    ex.t_response = ex.t_start + 0.01  # the app's response head arrived
    assert exchange_view(ex)["replied_by"] == "app"
    ex.replaced = True  # a rule's reply went out instead
    assert exchange_view(ex)["replied_by"] == "sidecar"


def test_response_interest_by_status_only_when_every_response_rule_names_statuses(tmp_path):
    from tests.rules.helpers import hooks_for

    card = tmp_path / "card.yaml"
    card.write_text("rules:\n  - name: nf\n    match: {status: 404}\n    respond: {body: x}\n"
                    "  - name: t\n    record: {timing: true}\n  - name: s\n    match: {status: 5xx}\n"
                    "    headers: {response: {set: {X-Err: '1'}}}\n")
    hooks, _ = hooks_for(str(card))
    assert hooks.response_interest == Interest(dict.fromkeys({404, *range(500, 600)}))
    anyst = tmp_path / "any.yaml"
    anyst.write_text("rules:\n  - name: h\n    headers: {response: {set: {X-Frame-Options: DENY}}}\n")
    hooks, _ = hooks_for(str(anyst))
    assert hooks.on_response_head is not None and hooks.response_interest is None


def test_interest_by_first_segment(tmp_path):
    """The compiled rules tell the tunnel the first path segments each phase can act on."""
    keyed = tmp_path / "keyed.yaml"
    keyed.write_text(
        "rules:\n"
        "  - {name: gone, match: {path: /old/**}, respond: {status: 410}}\n"
        "  - {name: users, match: {path: '/api/v1/users/{id}', status: 200}, headers: {response: {set: {X-U: '1'}}}}\n"
        "  - {name: posts, match: {path_regex: '^/p-[0-9]+$', method: POST}, respond: {status: 403}}\n"
        "  - {name: nf, match: {status: 404, method: [GET]}, respond: {body: x}}\n")
    hooks, _ = hooks_for(str(keyed))
    # Request phase: /old and the /api route template for every method; POST has a path-less regex rule.
    assert hooks.request_interest == Interest({"*": frozenset({"/old", "/api"}), "POST": None})
    # Response phase: 200 only for /api; 404 has a path-less rule (method-specific: no promise).
    assert hooks.response_interest == Interest({200: frozenset({"/api"}), 404: None})  # no other status

    everywhere = tmp_path / "everywhere.yaml"
    everywhere.write_text("rules:\n  - {name: m, match: {path: /**}, respond: {status: 503}}\n"
                          "  - {name: h, headers: {response: {set: {X-A: '1'}}}}\n")
    hooks, _ = hooks_for(str(everywhere))
    assert hooks.request_interest is None and hooks.response_interest is None  # path-less, every method

    param = tmp_path / "param.yaml"
    param.write_text("rules:\n  - {name: t, match: {path: '/{tenant}/items'}, record: {timing: true}}\n"
                     "  - {name: g, match: {path: /old/**}, respond: {status: 410}}\n")
    hooks, _ = hooks_for(str(param))
    assert hooks.request_interest is None  # a route template starting with a parameter names any path


def test_a_when_reading_replied_by_runs_on_the_response(tmp_path):
    """`replied_by` is only known once there is a response: a rule whose `when` reads it must not
    run in the request phase (where it is always null)."""
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - name: only-app\n    match: {when: \"replied_by == 'app'\"}\n"
                 "    respond: {status: 503, body: replaced}\n")
    hooks, _ = hooks_for(str(f))
    assert set(hooks.phases["only-app"]) == {"response"}
