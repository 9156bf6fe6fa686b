"""`decorator validate | test | explain`: the rule tools behind the CLI. Return exit codes, print results.

Owns output formats only; loading, compiling and simulating live in load/compile/packtest.
Must not import the tunnel or open sockets.
"""

from __future__ import annotations

import json
import os
import sys

from decorator.errors import RulesInvalid, UsageError
from decorator.proxy.driver import simulate
from decorator.proxy.hooks import Exchange
from decorator.rules.compile import PHASES, SHADOW, compile_rules
from decorator.rules.load import YAML_SUFFIXES, load_rules
from decorator.rules.models import FakeUpstream
from decorator.rules.packtest import CaptureRuntime, run_paths


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def validate(paths: list[str], fmt: str = "text") -> int:
    """Print every error as file:line:col: message (or a JSON list); 1 on any error, else 0."""
    try:
        rs = load_rules(paths)
    except RulesInvalid as e:
        if fmt == "json":
            print(json.dumps([err.as_dict() for err in e.errors], indent=2))
        else:
            for err in e.errors:
                print(str(err))
            print(f"invalid: {_plural(len(e.errors), 'error')}", file=sys.stderr)
        return 1
    for note in rs.notes:  # stderr in both formats: the JSON on stdout stays the list of errors
        print(f"note: {note}", file=sys.stderr)
    if fmt == "json":
        print("[]")
        return 0
    yaml_files = [f for f in rs.files if f.endswith(YAML_SUFFIXES)]
    extra = f", {_plural(len(rs.tests), 'test')}" if rs.tests else ""
    print(f"ok: {_plural(len(rs.rules), 'rule')} in {_plural(len(yaml_files), 'file')}{extra}")
    return 0


def run_tests(paths: list[str]) -> int:
    """Run the `tests:` cases of the packs/files under `paths` without network; 1 on any failure."""
    for p in paths:
        if not os.path.exists(p):
            raise UsageError(f"no such file or directory: {p}")
    passed, failed, broken = run_paths(list(paths))
    summary = f"{passed} passed, {failed} failed"
    if broken:
        summary += f", {_plural(broken, 'pack')} with invalid rules"
    print(summary)
    if passed + failed + broken == 0:
        print("no tests found (add `tests:` cases to the rules files)", file=sys.stderr)
        return 1
    return 1 if failed or broken else 0


def _parse_header(text: str, flag: str) -> tuple[bytes, bytes]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise UsageError(f"{flag}: expected NAME:VALUE, found {text!r}")
    return name.strip().encode("latin-1"), value.strip().encode("latin-1")


def _host(headers: list[tuple[bytes, bytes]]) -> str | None:
    for k, v in headers:
        if k.lower() == b"host":
            return v.decode("latin-1")
    return None


def explain(rules_paths: list[str], request: str, status: int | None = None,
            headers: list[str] | None = None, response_headers: list[str] | None = None) -> int:
    """Print, for every rule and each phase it acts in, MATCH or every reason it does not; for a
    shadow rule, also what its actions would have done (nothing of it is applied)."""
    method, _, target = request.strip().partition(" ")
    target = target.strip()
    if not method.isalpha() or not target.startswith("/"):
        raise UsageError(f'request: expected "METHOD /path", found {request!r}')
    req_headers = [_parse_header(h, "--header") for h in headers or []]
    resp_headers = [_parse_header(h, "--response-header") for h in response_headers or []]
    rs = load_rules(rules_paths)
    # forward_auth services are not called: explain assumes they let the request through (said below).
    runtime = CaptureRuntime(auth_answer=FakeUpstream(status=200))
    hooks = compile_rules(rs, runtime)
    # The exchange runs first, by the tunnel's own driver: a rule that answers in the request phase
    # decides the status the later phases see (a maintenance 503 does fire the 5xx alert).
    app_status = status if status is not None else 0
    outcome = simulate(hooks, Exchange(method.upper(), target, "1.1", list(req_headers), "127.0.0.1",
                                       request_id="explain"),
                       lambda _: (app_status, list(resp_headers), b""))
    by_sidecar = outcome.upstream_headers is None
    ex = Exchange(method.upper(), target, "1.1", req_headers, "127.0.0.1", request_id="explain")
    ex.route = outcome.route
    if by_sidecar:
        shown_status = f"{outcome.status} (answered by the sidecar: the app is not called)"
    elif status is not None:
        shown_status = str(status)
    else:
        shown_status = "none given (rules on the response see no status)"
    print(f"request: {ex.method} {ex.target}   status: {shown_status}"
          + (f"   route: {ex.route}" if ex.route else ""))
    sent = outcome.exchange
    if not by_sidecar:
        host, sent_host = _host(req_headers), _host(outcome.upstream_headers or [])
        if sent.target != target or host != sent_host:  # a rewrite: what the app is asked for instead
            print(f"the app is sent: {sent.method} {sent.target}" + (f"   Host: {sent_host}" if host != sent_host else ""))
    else:
        shown = "; ".join(f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in outcome.headers)
        print(f"the sidecar answers: {outcome.status}" + (f"   {shown}" if shown else ""))
    width = max((len(cr.name) for cr in hooks.rules), default=4)
    matched = 0
    for cr in hooks.rules:
        phases = hooks.phases.get(cr.name, {})
        for phase in PHASES:
            actions = phases.get(phase)
            if not actions:
                continue
            if phase == "request":
                ex.status, ex.response_headers = 0, None
            else:
                ex.status, ex.response_headers = outcome.status, list(outcome.headers)
                # For `replied_by`: the response phase looks at the app's answer (when there is one),
                # complete at what the client got.
                ex.replaced = by_sidecar or (phase == "complete" and outcome.replaced)
                ex.t_response = ex.t_start
            reasons = cr.why_not(ex, phase)
            if not reasons and phase == "response" and by_sidecar:
                reasons = ["the request phase answered: the app's response phase does not run"]
            verdict = "MATCH" if not reasons else "no: " + "; ".join(reasons)
            matched += not reasons
            print(f"{cr.name:<{width}}  {phase:<8}  {','.join(actions):<14}  {verdict}   ({cr.loaded.location})")
        if cr.mode == "shadow":
            # What the exchange above made the shadow rule's actions say they would have done.
            whats = [f"{a} would {w}" for r, a, w in runtime.shadowed if r == cr.name]
            if not whats:
                shadowed = any(a.startswith(SHADOW) for acts in phases.values() for a in acts)
                whats = ["its actions would do nothing here" if shadowed else
                         "observe-only actions (record) run as usual"]
            print(f"{'':<{width}}  shadow    {'; '.join(whats)}")
    for url in runtime.auth_asked:
        print(f"note: forward_auth would ask {url}; explain does not call it and assumes a 2xx")
    for rule, m, url in runtime.mirrored:
        print(f"note: {rule} would send a copy: {m} {url}")
    retries = sum(runtime.counters["retries"].values())
    if retries:
        print(f"note: retry rules would send the request again {_plural(retries, 'time')} "
              f"(the app answers {app_status} every time here)")
    print(f"{matched} {'match' if matched == 1 else 'matches'}, {_plural(len(hooks.rules), 'rule')}")
    return 0
