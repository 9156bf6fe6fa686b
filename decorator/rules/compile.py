"""RuleSet -> one `proxy.hooks.Hooks` object: per-phase dispatch tables built once, matched many times.

Owns phase assignment, the status -> method -> first-segment dispatch tables, route naming, action
isolation (a failing action is logged and counted, never fatal), hit counting and shadow mode (a
shadow rule's actions are replaced by their `would`, see actions.registry).
Imports only `proxy.hooks` from the proxy; never the tunnel.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from decorator.actions.registry import ACTIONS
from decorator.actions.runtime import Runtime
from decorator.proxy.hooks import Exchange, Hooks, Interest, Reply, Retry, first_segment
from decorator.rules.match import HeaderCheck, PathIndex, PathPattern, exchange_view, regex_key
from decorator.rules.ruleset import LoadedRule, RuleSet, plain_ruleset
from decorator.rules.values import status_codes

log = logging.getLogger("decorator.rules")

PHASES = ("request", "response", "complete")
SHADOW = "shadow:"  # prefix of a shadowed action's name in traces and error logs
_STATUS_SLOTS = 1000  # statuses are three digits; 0 means "no response" (errors)
_LOG_EVERY = 60.0  # seconds between two tracebacks for one rule's failing action
_REPLIED = "rules.replied"  # ex.state key: a request-phase rule answered, skip the response phase


def _search(expr: Any, ex: Exchange) -> Any:
    """A `when` on one exchange. A type error there depends on the request (sort_by() given an
    object because of what a client sent): no match, not a failing rule set."""
    from jmespath.exceptions import JMESPathError
    try:
        return expr.search(exchange_view(ex))
    except JMESPathError:
        return None


class CompiledRule:
    """One rule's match, compiled: `matches(ex)` runs the cheap checks first; method and status
    are handled by the dispatch tables and re-checked only by `why_not` (explain)."""

    def __init__(self, loaded: LoadedRule, order: int) -> None:
        rule = loaded.rule
        m = rule.match
        self.loaded = loaded
        self.name = rule.name
        self.order = order
        self.enabled = rule.enabled
        self.mode = getattr(rule, "mode", None) or "enforce"
        self.needs_response = loaded.info.needs_response
        self.methods = frozenset(m.method) if m.method else None
        self.path = PathPattern(m.path) if m.path is not None else None
        self.path_regex = re.compile(m.path_regex) if m.path_regex is not None else None
        # Literal head of the path condition: the dispatch tables bucket rules by it.
        self.index_key = self.path.key if self.path is not None else (
            regex_key(m.path_regex) if m.path_regex is not None else None)
        self.req_headers = tuple(HeaderCheck(k, h.present, h.equals, h.regex) for k, h in (m.headers or {}).items())
        self.resp_headers = tuple(HeaderCheck(k, h.present, h.equals, h.regex)
                                  for k, h in (m.response_headers or {}).items())
        self.status_specs = tuple(m.status) if m.status else None
        self.statuses = frozenset(c for s in m.status for c in status_codes(s)) if m.status else None
        self.when = None
        if m.when:
            import jmespath  # only rule sets with a `when` pay for it
            self.when = jmespath.compile(m.when)
        self.when_text = m.when
        # Method and status are settled by the dispatch tables (Dispatch, _status_table) before a
        # rule is ever a candidate; `checks` holds the rest, cheapest first.
        checks: list[Callable[[Exchange], bool]] = []
        if self.path is not None:
            pm = self.path.match
            checks.append(lambda ex: pm(ex.path))
        if self.path_regex is not None:
            search = self.path_regex.search
            checks.append(lambda ex: search(ex.path) is not None)
        for c in self.req_headers:
            checks.append(lambda ex, f=c.check: f(ex.request_headers))
        for c in self.resp_headers:
            checks.append(lambda ex, f=c.check: f(ex.response_headers))
        if self.when is not None:
            checks.append(self._when)
        self.checks = tuple(checks)
        if not checks:
            self.matches = _always
        elif len(checks) == 1:
            self.matches = checks[0]

    def matches(self, ex: Exchange) -> bool:
        for c in self.checks:  # noqa: SIM110 - a plain loop: no generator per call on the hot path
            if not c(ex):
                return False
        return True

    def _when(self, ex: Exchange) -> bool:
        return bool(_search(self.when, ex))

    def why_not(self, ex: Exchange, phase: str) -> list[str]:
        """Every condition that does not hold for `ex` (empty: the rule matches)."""
        out = []
        if not self.enabled:
            out.append("disabled (enabled: false)")
        if self.methods is not None and ex.method not in self.methods:
            out.append(f"method {ex.method} not in {', '.join(sorted(self.methods))}")
        if self.path is not None and not self.path.match(ex.path):
            out.append(f"path {ex.path} does not match {self.path.pattern}")
        if self.path_regex is not None and not self.path_regex.search(ex.path):
            out.append(f"path {ex.path} does not match /{self.path_regex.pattern}/")
        for c in self.req_headers:
            if not c.check(ex.request_headers):
                out.append(f"request header {c.describe()} does not hold")
        if phase != "request":
            if self.statuses is not None and ex.status not in self.statuses:
                shown = ex.status if ex.status else "(none)"
                out.append(f"status {shown} not in {', '.join(self.status_specs)}")
            for c in self.resp_headers:
                if not c.check(ex.response_headers):
                    out.append(f"response header {c.describe()} does not hold")
        if self.when is not None:
            got = _search(self.when, ex)
            if not got:
                out.append(f"when {self.when_text!r} gives {got!r}")
        return out


def _always(ex: Exchange) -> bool:
    return True


class _Shadowed:
    """An action of a shadow rule: in every phase the action has a handler, a handler that asks
    `would` and reports a would-be effect to `hit` (Runtime.shadow_hit), and never acts. Its
    response handler returns None, so it never chooses a reply."""

    def __init__(self, act: Any, rule: str, action: str, hit: Callable[[str, str, str, Exchange], None]) -> None:
        would = act.would
        self.request = self.response = self.complete = None
        if act.request is not None:
            def request(ex: Exchange) -> None:
                what = would(ex, "request")
                if what is not None:
                    hit(rule, action, what, ex)
            self.request = request
        if act.response is not None:
            def response(ex: Exchange, reply: Reply | None) -> None:
                what = would(ex, "response")
                if what is not None:
                    hit(rule, action, what, ex)
            self.response = response
        if act.complete is not None:
            def complete(ex: Exchange) -> None:
                what = would(ex, "complete")
                if what is not None:
                    hit(rule, action, what, ex)
            self.complete = complete


class _Entry:
    """A rule's handlers in one phase."""

    __slots__ = ("always", "count_hit", "editors", "fns", "matches", "name", "order", "repliers", "rule")

    def __init__(self, rule: CompiledRule) -> None:
        self.order = rule.order
        self.rule = rule
        self.name = rule.name
        self.matches = rule.matches
        self.always = rule.matches is _always  # no condition left after the dispatch tables
        self.fns: list[tuple[Callable, str]] = []       # request / complete handlers
        self.repliers: list[tuple[Callable, str]] = []  # response phase: may return a Reply
        self.editors: list[tuple[Callable, str]] = []   # response phase: edit headers
        self.count_hit = False


class RuleHooks(Hooks):
    """The compiled rule set as the tunnel's hooks. Phases no rule needs stay None, so the tunnel
    skips them entirely."""

    def __init__(self, ruleset: RuleSet, runtime: Runtime) -> None:
        self.ruleset = ruleset
        self.runtime = runtime
        self.rules = [CompiledRule(lr, i) for i, lr in enumerate(ruleset.entries)]
        self.phases: dict[str, dict[str, list[str]]] = {}  # rule -> phase -> action names (explain)
        self._hits = runtime.counters["rule_hits"]
        self._errors = runtime.counters["action_errors"]
        self._trace = runtime.trace
        self._logged: dict[str, float] = {}
        req: list[_Entry] = []
        resp: list[_Entry] = []
        done: list[_Entry] = []
        for cr in self.rules:
            lr = cr.loaded
            entries = {p: _Entry(cr) for p in PHASES}
            names: dict[str, list[str]] = {}
            shadow = cr.mode == "shadow"
            for name, config in lr.rule.actions():
                cls = ACTIONS[name]
                act = cls(config, lr.info, lr.prepared.get(name), runtime)
                if shadow and not cls.observe_only:
                    act = _Shadowed(act, cr.name, name, runtime.shadow_hit)
                    name = SHADOW + name
                elif act.keep_body > self.keep_bodies and cr.enabled:
                    self.keep_bodies = act.keep_body  # the tunnel keeps request bodies this small
                if act.request is not None:
                    entries["request"].fns.append((act.request, name))
                    names.setdefault("request", []).append(name)
                if act.response is not None:
                    (entries["response"].repliers if cls.replies else entries["response"].editors).append(
                        (act.response, name))
                    names.setdefault("response", []).append(name)
                if act.complete is not None:
                    entries["complete"].fns.append((act.complete, name))
                    names.setdefault("complete", []).append(name)
            self.phases[cr.name] = names
            if not cr.enabled:
                continue
            first = True
            for phase, bucket in (("request", req), ("response", resp), ("complete", done)):
                e = entries[phase]
                if e.fns or e.repliers or e.editors:
                    e.count_hit = first
                    first = False
                    bucket.append(e)
        live = [cr for cr in self.rules if cr.enabled]
        routes = PathIndex((c.path.key, c) for c in live if c.path is not None and c.path.template)
        self._routes = routes.lookup if routes else None
        self._req = Dispatch(req)
        self._resp = _status_table(resp)
        self._resp_editors = _status_table([e for e in resp if e.editors])
        self._done = _status_table(done)
        if req or self._routes is not None:
            self.on_request = self._on_request
            # Promise the tunnel which first path segments the request phase can act on, so it
            # skips the call for every other path (no route template starts with a parameter).
            if not routes.always:
                firsts = _firsts(req, routes.firsts)
                self.request_interest = Interest(firsts) if firsts is not None else None
        if resp:
            self.on_response_head = self._on_response_head
            # Only statuses some response-phase rule accepts, and for each only the first path
            # segments its rules are keyed under, reach the hook (the tunnel checks).
            statuses = None
            if all(e.rule.statuses is not None for e in resp):
                statuses = frozenset().union(*(e.rule.statuses for e in resp))
            by_status = {}
            for status in statuses or range(_STATUS_SLOTS):
                h = _firsts([e for e in resp if e.rule.statuses is None or status in e.rule.statuses])
                by_status[status] = None if h is None or "*" not in h or len(h) > 1 else h["*"]
            if statuses is not None or any(v is not None for v in by_status.values()):
                self.response_interest = Interest(by_status)
        if done:
            self.on_complete = CompletePhase(self._done, self._hits, self._trace, self._failed).run

    # -- the three hooks ----------------------------------------------------------------------
    def _on_request(self, ex: Exchange) -> Reply | None:
        path = ex.path
        if self._routes is not None:
            for cr in self._routes(path):
                if cr.path.match(path):
                    ex.route = cr.path.pattern
                    break
        return self._request_rules(self._req.lookup(ex.method, path), ex, path)

    def _request_rules(self, cands: tuple, ex: Exchange, path: str) -> Reply | None:
        for e in cands:
            if not (e.always or e.matches(ex)):
                continue
            if e.count_hit:
                self._hits[e.name] = self._hits.get(e.name, 0) + 1
            for fn, action in e.fns:
                try:
                    r = fn(ex)
                except Exception:  # isolated: _failed logs the traceback and counts
                    self._failed(e.name, action, "request")
                    continue
                if self._trace is not None:
                    self._trace(e.name, action, "request", ex)
                if r is not None:
                    if type(r) is Reply:
                        return self._replied(ex, r)
                    return self._wait(ex, r, e, fn, action, cands, path)
            if ex.path is not path:
                # A rewrite: the rules after this one are the ones keyed under the new path.
                later = tuple(c for c in self._req.lookup(ex.method, ex.path) if c.order > e.order)
                return self._request_rules(later, ex, ex.path)
        return None

    async def _wait(self, ex: Exchange, pending: Any, e: _Entry, fn: Callable, action: str,
                    cands: tuple, path: str) -> Reply | None:
        """An action answered with an awaitable (it waits for a timer or a service): the tunnel
        holds the exchange until it resolves; then the rule's other actions and the later rules
        run, as _request_rules would have run them."""
        r = await self._settle(pending, e.name, action)
        if r is not None:
            return self._replied(ex, r)
        rest = e.fns[e.fns.index((fn, action)) + 1:]
        for fn, action in rest:
            try:
                r = fn(ex)
            except Exception:  # isolated: _failed logs the traceback and counts
                self._failed(e.name, action, "request")
                continue
            if self._trace is not None:
                self._trace(e.name, action, "request")
            if r is not None:
                if type(r) is not Reply:
                    r = await self._settle(r, e.name, action)
                    if r is None:
                        continue
                return self._replied(ex, r)
        if ex.path is not path:  # a rewrite: the later rules are the ones keyed under the new path
            cands = self._req.lookup(ex.method, ex.path)
        r = self._request_rules(tuple(c for c in cands if c.order > e.order), ex, ex.path)
        if r is not None and type(r) is not Reply:
            r = await r
        return r

    async def _settle(self, pending: Any, rule: str, action: str) -> Reply | None:
        try:
            return await pending
        except Exception:  # isolated, as a failing plain action
            self._failed(rule, action, "request")
            return None

    def _replied(self, ex: Exchange, reply: Reply) -> Reply:
        """A request-phase answer still gets the response-phase header edits (security headers on
        a maintenance page), matched against the reply; the app's response phase is skipped."""
        if ex.state is None:
            ex.state = {}
        ex.state[_REPLIED] = True
        ex.status = reply.status
        ex.response_headers = reply.headers
        for e in _lookup(self._resp_editors, reply.status, ex.method, ex.path):
            if e.always or e.matches(ex):
                for fn, action in e.editors:
                    self._call_response(e, fn, action, ex, reply)
        return reply

    def _on_response_head(self, ex: Exchange) -> Reply | None:
        st = ex.state
        if st is not None and st.get(_REPLIED):
            return None
        status = ex.status
        d = self._resp[status if 0 <= status < _STATUS_SLOTS else 0]  # _lookup, inlined
        if d.empty:
            return None
        cands = d.lookup(ex.method, ex.path)
        if not cands:
            return None
        reply = None
        edits = None
        for e in cands:
            if not (e.always or e.matches(ex)):
                continue
            if e.count_hit:
                self._hits[e.name] = self._hits.get(e.name, 0) + 1
            if reply is None:
                for fn, action in e.repliers:
                    reply = self._call_response(e, fn, action, ex, None)
                    if reply is not None:
                        break
            if e.editors:
                if edits is None:
                    edits = []
                edits.append(e)
        # Header edits go last so they apply to what is actually sent (the app's or the reply);
        # none when the request goes to the app again (Retry): this answer is dropped.
        if edits is not None and type(reply) is not Retry:
            for e in edits:
                for fn, action in e.editors:
                    self._call_response(e, fn, action, ex, reply)
        return reply

    def _call_response(self, e: _Entry, fn: Callable, action: str, ex: Exchange, reply: Reply | None) -> Any:
        try:
            r = fn(ex, reply)
        except Exception:  # isolated: _failed logs the traceback and counts
            self._failed(e.name, action, "response")
            return None
        if self._trace is not None:
            self._trace(e.name, action, "response", ex)
        return r

    def _failed(self, rule: str, action: str, phase: str) -> None:
        n = self._errors[rule] = self._errors.get(rule, 0) + 1
        # A traceback per rule per minute: an action failing on every request must not flood the log.
        now = time.monotonic()
        if now - self._logged.get(rule, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[rule] = now
            log.exception("rule %s: action %s failed in the %s phase (%d so far); the exchange goes on",
                          rule, action, phase, n)


class CompletePhase:
    """The complete phase, run for every exchange with a status some complete-phase rule accepts
    (all of them when a rule records timing): compiled with types, called as `run(ex)`."""

    def __init__(self, table: list[Dispatch], hits: dict[str, int], trace: Callable | None,
                 failed: Callable[[str, str, str], None]) -> None:
        self.table = table
        self.hits = hits
        self.trace = trace
        self.failed = failed

    def run(self, ex: Exchange) -> None:
        status = ex.status
        d = self.table[status if 0 <= status < _STATUS_SLOTS else 0]  # _lookup, inlined
        if d.empty:
            return
        # Only path-less rules here (timing on every exchange): found without a lookup call.
        cands = d.lookup(ex.method, ex.path) if d.firsts else d.always_by_method.get(ex.method, d.always_other)
        hits = self.hits
        for e in cands:
            if not (e.always or e.matches(ex)):
                continue
            if e.count_hit:
                hits[e.name] = hits.get(e.name, 0) + 1
            for fn, action in e.fns:
                try:
                    fn(ex)
                except Exception:  # isolated: failed() logs the traceback and counts
                    self.failed(e.name, action, "complete")
                    continue
                if self.trace is not None:
                    self.trace(e.name, action, "complete", ex)


class Dispatch:
    """Entries of one phase by method, then by the path's first segment: a request only meets the
    rules that could match its method and path."""

    __slots__ = ("_by_method", "_other", "always_by_method", "always_other", "empty", "firsts")

    def __init__(self, entries: list[_Entry]) -> None:
        methods = set()
        for e in entries:
            methods.update(e.rule.methods or ())
        other = PathIndex((e.rule.index_key, e) for e in entries if e.rule.methods is None)
        by_method = {m: PathIndex((e.rule.index_key, e) for e in entries
                                  if e.rule.methods is None or m in e.rule.methods)
                     for m in methods}
        self._other = other.lookup
        self._by_method = {m: idx.lookup for m, idx in by_method.items()}
        # The first-segment test of every index at once: most requests stop here, in this frame.
        self.firsts = other.firsts.union(*(idx.firsts for idx in by_method.values()))
        # What a path whose first segment is not in `firsts` gets, by method (else always_other).
        self.always_by_method = {m: idx.always for m, idx in by_method.items()}
        self.always_other = other.always
        self.empty = not entries

    def lookup(self, method: str, path: str) -> tuple:
        i = path.find("/", 1)
        if (path if i < 0 else path[:i]) not in self.firsts:
            return self.always_by_method.get(method, self.always_other)
        return self._by_method.get(method, self._other)(path)


def _firsts(entries: list[_Entry], extra: frozenset[str] = frozenset()) -> dict | None:
    """An Interest's map for one phase's entries: method ("*" for every other) -> first path
    segments some entry is keyed under, or None for a method that has a path-less entry. None
    when a path-less entry takes every method. Sound because a keyed entry only matches paths
    that start with its key at a segment boundary (what PathIndex relies on)."""
    firsts = set(extra)
    pathless: set[str] = set()
    for e in entries:
        key = e.rule.index_key
        if not key:
            if e.rule.methods is None:
                return None
            pathless |= e.rule.methods
        else:
            firsts.add(first_segment(key))
    out: dict[str, frozenset[str] | None] = {"*": frozenset(firsts)}
    out.update(dict.fromkeys(pathless))
    return out


def _status_table(entries: list[_Entry]) -> list[Dispatch] | None:
    """status -> Dispatch of the entries whose status matcher accepts it (shared between
    statuses with the same set), or None when there are no entries at all."""
    if not entries:
        return None
    by_set: dict[tuple, Dispatch] = {}
    table = []
    for s in range(_STATUS_SLOTS):
        subset = [e for e in entries if e.rule.statuses is None or s in e.rule.statuses]
        key = tuple(e.order for e in subset)
        d = by_set.get(key)
        if d is None:
            d = by_set[key] = Dispatch(subset)
        table.append(d)
    return table


_EMPTY: tuple = ()


def _lookup(table: list[Dispatch] | None, status: int, method: str, path: str) -> tuple:
    if table is None:
        return _EMPTY
    d = table[status] if 0 <= status < _STATUS_SLOTS else table[0]
    return _EMPTY if d.empty else d.lookup(method, path)


def compile_rules(ruleset: RuleSet, runtime: Runtime) -> RuleHooks:
    """Build the hooks for `ruleset`; `hooks.ruleset` is the source (a reload compares digests).

    Always from plain data (models are converted first), so `decorator run` (handed plain data by
    its validating child) and `test`/`explain` (loading in-process) build the same handlers."""
    return RuleHooks(plain_ruleset(ruleset), runtime)
