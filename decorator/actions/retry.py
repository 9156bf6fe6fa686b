"""`retry`: send an idempotent request to the app again when it answers 502/503 or cannot be reached.

Decides on the response head (the app's, or the sidecar's own 502 after a connect failure) and
returns proxy.hooks.Retry; the tunnel re-sends only what it can (see Exchange.can_resend). A budget
per rule keeps retries a bounded share of the traffic the rule matches. Imports proxy.hooks only.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from decorator.actions.registry import Action, RuleInfo, register
from decorator.proxy.hooks import Exchange, Reply, Retry

# What `on:` may name besides 5xx statuses, and the exchange error each stands for.
RETRY_CONDITIONS = ("connect-failure", "reset")
_ERRORS = {"connect-failure": "upstream_connect", "reset": "upstream_closed"}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
BODY_MAX = 64 * 1024     # request bodies up to this size can be sent again ("a small buffer")
WINDOW = 10              # seconds the budget looks back
FLOOR = 3                # retries allowed per window whatever the traffic (a quiet service still retries)
_KEY = "retry.n"         # ex.state: retries so far for this exchange


def parse_condition(v: Any) -> tuple[int | None, str | None]:
    """503 / "503" -> (503, None); "connect-failure" -> (None, "upstream_connect"); ValueError else."""
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if isinstance(v, int) and not isinstance(v, bool):
        if 500 <= v <= 599:
            return v, None
        raise ValueError(f"only 5xx answers are retried, found {v}")
    if isinstance(v, str) and v.strip().lower() in _ERRORS:
        return None, _ERRORS[v.strip().lower()]
    close = difflib.get_close_matches(str(v).strip().lower(), RETRY_CONDITIONS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"expected a 5xx status, {' or '.join(RETRY_CONDITIONS)}, found {v!r}{hint}")


class Budget:
    """Retries over the last WINDOW seconds may be at most `ratio` of the requests seen in them,
    plus FLOOR. Kept in one-second buckets: O(WINDOW) per retry, O(1) per request."""

    def __init__(self, ratio: float, clock: Any) -> None:
        self.ratio = ratio
        self.clock = clock
        self.epochs = [-1] * WINDOW
        self.requests = [0] * WINDOW
        self.retries = [0] * WINDOW

    def _slot(self) -> int:
        sec = int(self.clock())
        i = sec % WINDOW
        if self.epochs[i] != sec:
            self.epochs[i] = sec
            self.requests[i] = 0
            self.retries[i] = 0
        return i

    def request(self) -> None:
        self.requests[self._slot()] += 1

    def try_retry(self) -> bool:
        i = self._slot()
        oldest = self.epochs[i] - WINDOW
        reqs = rets = 0
        for j in range(WINDOW):
            if self.epochs[j] > oldest:
                reqs += self.requests[j]
                rets += self.retries[j]
        if rets + 1 > self.ratio * reqs + FLOOR:
            return False
        self.retries[i] += 1
        return True


@register
class RetryAction(Action):
    name = "retry"
    Config = "decorator.actions.configs_edge:RetryConfig"
    summary = ("Send idempotent requests to the app again on 502/503/connect failures (attempts, "
               "budget as a share of traffic).")
    replies = True

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        if rule.needs_response:
            return [((), "retry decides on the response itself (`on:`); the rule's match must use request "
                         "fields only (method, path, headers), or the budget would count failures only")]
        return []

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        statuses, errors = set(), set()
        for c in config.on:
            status, error = parse_condition(c)
            if status is not None:
                statuses.add(status)
            else:
                errors.add(error)
        self._statuses = frozenset(statuses)
        self._errors = frozenset(errors)
        self._attempts = config.attempts
        self._reason = f"rule {rule.name}"
        # The budget outlives a reload as long as this rule's retry is unchanged.
        state = runtime.state_for(("retry", rule.name, json.dumps(config.dump(), sort_keys=True)))
        self._budget = state.get("budget")
        if self._budget is None:
            self._budget = state["budget"] = Budget(config.budget / 100.0, runtime.clock)
        self.keep_body = BODY_MAX
        self.response = self._decide

    def would(self, ex: Exchange, phase: str) -> str | None:
        """Shadow mode: whether the first answer would be retried. The budget is spent as if it
        were (so switching to enforce starts from what shadow mode measured); nothing is re-sent."""
        self._budget.request()
        err = ex.error
        if (ex.status not in self._statuses) if err is None else (err not in self._errors):
            return None
        if ex.method not in IDEMPOTENT or not ex.can_resend() or not self._budget.try_retry():
            return None
        return f"send the request again (after {err or ex.status})"

    def _decide(self, ex: Exchange, reply: Reply | None) -> Retry | None:
        st = ex.state
        n = 0 if st is None else st.get(_KEY, 0)
        if n == 0:
            self._budget.request()  # each matched request counts once, on its first answer
        if reply is not None:
            return None  # an earlier rule answers instead
        err = ex.error
        if err is None:
            if ex.status not in self._statuses:
                return None
        elif err not in self._errors:
            return None
        if n >= self._attempts or ex.method not in IDEMPOTENT:
            return None
        rule = self.rule.name
        if not ex.can_resend():
            self.runtime.count("retry_not_resendable", rule)
            return None
        if not self._budget.try_retry():
            self.runtime.count("retry_budget_exhausted", rule)
            return None
        if st is None:
            ex.state = st = {}
        st[_KEY] = n + 1
        self.runtime.count("retries", rule)
        return Retry(self._reason)
