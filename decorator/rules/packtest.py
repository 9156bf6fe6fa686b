"""Pack tests without a network: drive compiled hooks with a synthetic Exchange and a fake app.

Owns the capturing runtime and the checks of `expect:`; the exchange's order is the tunnel's own
(proxy.driver). Imports proxy.hooks and proxy.driver only from the proxy; never sockets or httpx.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from decorator.actions.runtime import NotifyTarget, Runtime, ServiceError
from decorator.errors import RulesInvalid
from decorator.proxy import driver
from decorator.proxy.driver import Outcome
from decorator.proxy.hooks import Exchange, Hooks, header_get
from decorator.rules.compile import SHADOW, compile_rules
from decorator.rules.load import LoadedTest, load_rules, pack_units
from decorator.rules.models import Expect, FakeUpstream, TestCase, shadow_ref


class CaptureRuntime(Runtime):
    """A Runtime that keeps notify events and mirror copies instead of sending them, answers
    forward_auth from the test case, traces every action run and keeps every shadow hit (rule,
    action, what it would have done)."""

    def __init__(self, pod: str = "test", auth_answer: FakeUpstream | None = None) -> None:
        super().__init__(recorder=None, pod=pod)
        self.events: list[tuple[str, dict, NotifyTarget]] = []
        self.mirrored: list[tuple[str, str, str]] = []
        self.auth_answer = auth_answer
        self.auth_asked: list[str] = []
        self.fired: list[tuple[str, str, str]] = []
        self.shadowed: list[tuple[str, str, str]] = []
        # A shadow rule's actions are traced as "shadow:<action>": they ran, but did not act.
        self.trace = lambda rule, action, phase, ex=None: (
            None if action.startswith(SHADOW) else self.fired.append((rule, action, phase)))

    def shadow_hit(self, rule: str, action: str, what: str, ex: Exchange) -> None:
        super().shadow_hit(rule, action, what, ex)
        self.shadowed.append((rule, action, what))

    def submit(self, rule: str, event: dict, target: NotifyTarget, key: str = "", cooldown: float = 0.0) -> bool:
        self.events.append((rule, event, target))
        return True

    def mirror(self, rule: str, method: str, url: str, headers: list, body: bytes, timeout: float) -> bool:
        self.mirrored.append((rule, method, url))
        return True

    async def auth_request(self, url: str, headers: list, timeout: float) -> tuple[int, list, bytes]:
        self.auth_asked.append(url)
        a = self.auth_answer
        if a is None:
            raise ServiceError("no forward_auth answer in this test case (add `forward_auth:` to it)")
        return (a.status, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in a.headers.items()],
                a.body.encode())


_seq = 0
UPSTREAM_TARGET = "packtest.upstream_target"


def simulate(hooks: Hooks | None, method: str, target: str, headers: list[tuple[bytes, bytes]],
             upstream: FakeUpstream | None = None) -> Outcome:
    """One exchange through `hooks` by the tunnel's own driver, with `upstream` as the app."""
    global _seq
    _seq += 1
    upstream = upstream or FakeUpstream()
    ex = Exchange(method, target, "1.1", list(headers), "127.0.0.1", request_id=f"test-{_seq}")

    def app(sent: Exchange) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        sent.state = {**(sent.state or {}), UPSTREAM_TARGET: sent.target}  # what the app was asked for
        return (upstream.status, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers.items()],
                upstream.body.encode())

    return driver.simulate(hooks, ex, app)


def _header(headers: list[tuple[bytes, bytes]] | None, name: str) -> str | None:
    v = header_get(headers or [], name.lower().encode("latin-1"))
    return None if v is None else v.decode("latin-1")


def check(expect: Expect, out: Outcome, runtime: CaptureRuntime) -> list[str]:
    """Every way `out` differs from `expect` (empty: the case passes)."""
    problems = []
    if expect.status is not None and out.status != expect.status:
        problems.append(f"status: expected {expect.status}, got {out.status}")
    for name, want in expect.headers.items():
        got = _header(out.headers, name)
        if want != got:
            problems.append(f"header {name}: expected {'absent' if want is None else repr(want)}, "
                            f"got {'absent' if got is None else repr(got)}")
    for name, want in expect.upstream_headers.items():
        got = _header(out.upstream_headers, name) if out.upstream_headers is not None else None
        if out.upstream_headers is None:
            problems.append(f"upstream header {name}: the app was never called (a rule answered)")
        elif want != got:
            problems.append(f"upstream header {name}: expected {'absent' if want is None else repr(want)}, "
                            f"got {'absent' if got is None else repr(got)}")
    if expect.upstream_target is not None:
        got_t = (out.exchange.state or {}).get(UPSTREAM_TARGET)
        if got_t is None:
            problems.append("upstream target: the app was never called (a rule answered)")
        elif got_t != expect.upstream_target:
            problems.append(f"upstream target: expected {expect.upstream_target!r}, got {got_t!r}")
    text = out.body.decode("utf-8", "replace")
    if expect.body is not None and text != expect.body:
        problems.append(f"body: expected {_short(expect.body)}, got {_short(text)}")
    if expect.body_contains is not None and expect.body_contains not in text:
        problems.append(f"body: expected it to contain {_short(expect.body_contains)}, got {_short(text)}")
    if expect.route is not None and out.route != expect.route:
        problems.append(f"route: expected {expect.route!r}, got {out.route!r}")
    fired = {r for r, _, _ in runtime.fired}
    for r in expect.fired:
        if r not in fired:
            problems.append(f"rule {r}: expected it to fire, it did not")
    for r in expect.not_fired:
        if r in fired:
            problems.append(f"rule {r}: expected it not to fire, it did")
    if expect.notify is not None:
        got_n = sorted({r for r, _, _ in runtime.events})
        if got_n != sorted(set(expect.notify)):
            problems.append(f"notify: expected events from {sorted(set(expect.notify))}, got {got_n}")
    if expect.mirror is not None:
        got_m = sorted({r for r, _, _ in runtime.mirrored})
        if got_m != sorted(set(expect.mirror)):
            problems.append(f"mirror: expected copies from {sorted(set(expect.mirror))}, got {got_m}")
    if expect.retries is not None:
        got_n = sum(runtime.counters["retries"].values())
        if got_n != expect.retries:
            problems.append(f"retries: expected {expect.retries}, got {got_n}")
    if expect.record is not None:
        got_r = sorted({r for r, a, _ in runtime.fired if a == "record"})
        if got_r != sorted(set(expect.record)):
            problems.append(f"record: expected {sorted(set(expect.record))}, got {got_r}")
    if expect.shadow is not None:
        want_rules = sorted({shadow_ref(e)[0] for e in expect.shadow})
        got_s = sorted({r for r, _, _ in runtime.shadowed})
        if got_s != want_rules:
            problems.append(f"shadow: expected would-be actions from {want_rules}, got {got_s}")
        hit = {(r, a) for r, a, _ in runtime.shadowed}
        for e in expect.shadow:
            rule, action = shadow_ref(e)
            if action is not None and (rule, action) not in hit:
                problems.append(f"shadow: expected {rule}'s {action} to be a would-be action, it was not")
    return problems


def _short(s: str) -> str:
    return repr(s if len(s) <= 80 else s[:77] + "...")


def run_case(paths: list[str], lt: LoadedTest, base_rules, env: Mapping[str, str] | None = None) -> list[str]:
    """Run one case against the rule set it came with (reloaded with the case's env when it has one)."""
    case: TestCase = lt.case
    rules = base_rules
    if case.env:
        try:
            rules = load_rules(paths, env={**(os.environ if env is None else env), **case.env})
        except RulesInvalid as e:
            return [f"rules invalid with this case's env: {err}" for err in e.errors]
    runtime = CaptureRuntime(auth_answer=case.forward_auth)
    hooks = compile_rules(rules, runtime)
    req = case.request
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in req.headers.items()]
    out = None
    for _ in range(case.repeat):
        out = simulate(hooks, req.method, req.path, headers, case.upstream)
    return check(case.expect, out, runtime)


def run_paths(paths: list[str], out=print) -> tuple[int, int, int]:
    """Run the tests of every pack/file under `paths`; returns (passed, failed, broken packs)."""
    passed = failed = broken = 0
    for p in paths:
        for unit in pack_units(p):
            try:
                rules = load_rules([unit])
            except RulesInvalid as e:
                broken += 1
                for err in e.errors:
                    out(f"ERROR {err}")
                continue
            for lt in rules.tests:
                problems = run_case([unit], lt, rules)
                if problems:
                    failed += 1
                    out(f"FAIL {lt.location}: {lt.case.name}")
                    for pr in problems:
                        out(f"     {pr}")
                else:
                    passed += 1
                    out(f"ok   {lt.location}: {lt.case.name}")
    return passed, failed, broken
