"""`notify`: POST a JSON event to a URL when the rule matches, at completion, never waiting.

Decides here (synchronously: threshold, cooldown/dedupe) and hands the event to the runtime's
bounded queue; delivery, retries and backoff live in actions.runtime. Imports proxy.hooks and
rules (values, match).
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from typing import Any

from decorator.actions.registry import Action, RuleInfo, register, template_values
from decorator.actions.runtime import NotifyTarget
from decorator.proxy.hooks import Exchange
from decorator.rules.match import replied_by
from decorator.rules.values import Template, header_safe, parse_seconds

_THRESHOLD = re.compile(r"^\s*(\d+)\s+in\s+(\S+)\s*$")
MAX_KEYS = 1000  # distinct dedupe keys remembered per rule; the oldest is forgotten past this


def parse_threshold(text: str) -> tuple[int, float]:
    m = _THRESHOLD.match(text)
    if not m:
        raise ValueError(f"expected a threshold such as '5 in 60s', found {text!r}")
    n = int(m.group(1))
    window = parse_seconds(m.group(2))
    if n < 1 or window <= 0:
        raise ValueError(f"expected at least 1 match in a window longer than 0s, found {text!r}")
    return n, window


class _KeyState:
    __slots__ = ("last_sent", "pending", "times")

    def __init__(self, n: int) -> None:
        self.pending = 0
        self.last_sent = float("-inf")
        self.times: deque[float] | None = deque(maxlen=n) if n else None


@register
class Notify(Action):
    name = "notify"
    Config = "decorator.actions.configs:NotifyConfig"
    summary = "POST a JSON event to a URL (async, bounded queue, retries, cooldown, threshold)."

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self._n, self._window = parse_threshold(config.threshold) if config.threshold else (0, 0.0)
        self._cooldown = config.cooldown
        self._key = Template(config.key) if config.key else None
        self._message = Template(config.message) if config.message else None
        self._target = NotifyTarget(
            url=config.url, timeout=config.timeout, retries=config.retries,
            headers=tuple(config.headers.items()))
        # Cooldown/threshold state outlives a reload as long as this rule's notify is unchanged.
        self._states: dict[str, _KeyState] = runtime.state_for(("notify", rule.name, json.dumps(config.dump(), sort_keys=True)))
        self._clock = runtime.clock
        self.complete = self._notify

    def would(self, ex: Exchange, phase: str) -> str:
        # Cooldown and threshold are not simulated: a shadow rule counts every match it would report.
        return f"POST a rule.matched event to {self._target.url}"

    def _notify(self, ex: Exchange) -> None:
        now = self._clock()
        values = None
        key = ""
        if self._key is not None:
            values = template_values(ex, self.rule.name, ex.status)
            key = header_safe(self._key.render(values))
        st = self._states.get(key)
        if st is None:
            if len(self._states) >= MAX_KEYS:
                del self._states[next(iter(self._states))]
            st = self._states[key] = _KeyState(self._n)
        st.pending += 1
        count = st.pending
        if st.times is not None:
            st.times.append(now)
            if len(st.times) < self._n or now - st.times[0] > self._window:
                self.runtime.count("notify_suppressed", self.rule.name)
                return
            count = len(st.times)
        if now - st.last_sent < self._cooldown:
            self.runtime.count("notify_suppressed", self.rule.name)
            return
        st.pending = 0
        st.last_sent = now
        if st.times is not None:
            st.times.clear()
        event = {
            "event": "rule.matched", "rule": self.rule.name, "pod": self.runtime.pod,
            "time": time.time(), "count": count,
            "window_s": self._window or self._cooldown,
            "request": {"method": ex.method, "path": ex.path, "request_id": ex.request_id},
            "response": {"status": ex.status},
            "duration_ms": round(ex.duration * 1000.0, 3),
        }
        if ex.route:
            event["route"] = ex.route
        if ex.error:
            event["error"] = ex.error
        who = replied_by(ex)
        if who is not None:
            event["replied_by"] = who
        if self._message is not None:
            if values is None:
                values = template_values(ex, self.rule.name, ex.status)
            event["message"] = self._message.render(values)
        self.runtime.submit(self.rule.name, event, self._target, key, self._cooldown)
