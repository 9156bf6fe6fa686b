"""`headers`: add/set/remove headers on the request (before the app) or the response.

Edits run in rule order after any `respond` of the same phase chose its reply, so they apply to
what is actually sent. Imports proxy.hooks and rules.base only.
"""

from __future__ import annotations

from typing import Any

from decorator.actions.registry import Action, RuleInfo, register, template_values
from decorator.proxy.hooks import Exchange, Headers, Reply
from decorator.rules.values import Template, header_safe


class _Compiled:
    __slots__ = ("add", "default", "dynamic", "remove", "set")

    def __init__(self, e: Any) -> None:
        self.remove = tuple(n.lower().encode("latin-1") for n in e.remove)

        def pairs(d: dict) -> tuple:
            return tuple((k.encode("latin-1"), k.lower().encode("latin-1"), Template(v)) for k, v in d.items())
        self.set = pairs(e.set)
        self.default = pairs(e.default)
        self.add = pairs(e.add)
        self.dynamic = any(not t.static for _, _, t in self.set + self.default + self.add)

    def apply(self, headers: Headers, ex: Exchange, rule: str, status: int) -> Headers:
        """The edited copy of `headers` (a new list: the tunnel sees an edit by the list's identity)."""
        values = template_values(ex, rule, status) if self.dynamic else None
        if self.remove or self.set:
            drop = set(self.remove)
            drop.update(low for _, low, _ in self.set)
            headers = [(k, v) for k, v in headers if k.lower() not in drop]
        else:
            headers = list(headers)
        for name, _, t in self.set:
            headers.append((name, _value(t, values)))
        if self.default:
            have = {k.lower() for k, _ in headers}
            for name, low, t in self.default:
                if low not in have:
                    headers.append((name, _value(t, values)))
        for name, _, t in self.add:
            headers.append((name, _value(t, values)))
        return headers


def _value(t: Template, values: dict | None) -> bytes:
    if values is None:
        return t.text.encode("latin-1", "replace")
    return header_safe(t.render(values)).encode("latin-1", "replace")


@register
class HeadersAction(Action):
    name = "headers"
    Config = "decorator.actions.configs:HeadersConfig"
    summary = "Add/set/remove headers on the request or the response."

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        if config.request is not None and rule.needs_response:
            return [(("request",), ("request headers cannot be edited by a rule that matches on the "
                     "response (status, response_headers, response.* or timing.*): the request has "
                     "already been sent"))]
        if config.request is None and config.response is None:
            return [((), "headers needs `request` and/or `response` edits")]
        return []

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        if config.request is not None:
            self._req = _Compiled(config.request)
            self.request = self._edit_request
        if config.response is not None:
            self._resp = _Compiled(config.response)
            self.response = self._edit_response

    def would(self, ex: Exchange, phase: str) -> str:
        return "edit the request headers" if phase == "request" else "edit the response headers"

    def _edit_request(self, ex: Exchange) -> None:
        ex.request_headers = self._req.apply(ex.request_headers, ex, self.rule.name, 0)

    def _edit_response(self, ex: Exchange, reply: Reply | None) -> None:
        if reply is not None:
            edited = self._resp.apply(reply.headers, ex, self.rule.name, reply.status)
            if ex.response_headers is reply.headers:
                ex.response_headers = edited  # the exchange shows the reply's headers: keep showing them
            reply.headers = edited
        elif ex.response_headers is not None:
            ex.response_headers = self._resp.apply(ex.response_headers, ex, self.rule.name, ex.status)
