"""`forward_auth`: ask an auth service before the app (the nginx auth_request / Traefik ForwardAuth contract).

The service gets a GET with the request's headers and X-Forwarded-*; 2xx lets the request through
with `copy_headers` copied from the answer (the client's own copies removed first), any other
answer goes to the client, and a timeout or error fails closed (503) unless `on_error: allow`.
The call is awaited by the exchange (the request phase returns an awaitable) through
runtime.auth_request. Imports proxy.hooks and actions.runtime.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from decorator.actions.registry import Action, RuleInfo, register, request_only
from decorator.actions.runtime import ServiceError
from decorator.proxy.hooks import Exchange, Reply

log = logging.getLogger("decorator.actions")

# Never sent to the service: hop-by-hop fields, the body's framing, and Host (it is the service's
# own; the client's goes as X-Forwarded-Host).
_NOT_SENT = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
                       b"transfer-encoding", b"content-length", b"expect", b"host", b"proxy-authorization",
                       b"x-forwarded-method", b"x-forwarded-uri", b"x-forwarded-host"})
_WARN_EVERY = 60.0


@register
class ForwardAuth(Action):
    name = "forward_auth"
    Config = "decorator.actions.configs_edge:ForwardAuthConfig"
    summary = "Ask an auth service first: 2xx lets the request through (copy_headers), anything else is the answer."
    replies = True

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        return request_only("forward_auth", rule)

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self._url = config.url
        self._copy = [h.encode("latin-1") for h in config.copy_headers]
        self._copy_low = frozenset(h.lower() for h in self._copy)
        self._only = (frozenset(h.lower().encode("latin-1") for h in config.request_headers)
                      if config.request_headers is not None else None)
        self._timeout = config.timeout
        self._allow_on_error = config.on_error == "allow"
        self._warned = -_WARN_EVERY
        self.request = self._ask

    def would(self, ex: Exchange, phase: str) -> str | None:
        """Shadow mode sends nothing, so the service is not asked: say that it would be."""
        return f"ask {self._url} (its non-2xx answer would be the client's)"

    def _ask(self, ex: Exchange) -> Any:
        only = self._only
        headers = [(k, v) for k, v in ex.request_headers
                   if k.lower() not in _NOT_SENT and (only is None or k.lower() in only)]
        host = ex.request_header(b"host")
        headers += [(b"X-Forwarded-Method", ex.method.encode("latin-1")),
                    (b"X-Forwarded-Uri", ex.target.encode("latin-1")),
                    (b"X-Forwarded-Proto", ex.scheme.encode("latin-1"))]
        if host is not None:
            headers.append((b"X-Forwarded-Host", host))
        if ex.request_header(b"x-forwarded-for") is None:
            headers.append((b"X-Forwarded-For", ex.client.encode("latin-1")))
        return self._decide(ex, headers)

    async def _decide(self, ex: Exchange, headers: list[tuple[bytes, bytes]]) -> Reply | None:
        rule = self.rule.name
        try:
            status, answer_headers, body = await self.runtime.auth_request(self._url, headers, self._timeout)
        except ServiceError as e:
            self.runtime.count("auth_errors", rule)
            now = time.monotonic()
            if now - self._warned >= _WARN_EVERY:  # one line a minute: a dead service must not flood the log
                self._warned = now
                log.warning("forward_auth %s: %s unavailable (%s); %s (request %s)", rule, self._url, e,
                            "allowing" if self._allow_on_error else "answering 503", ex.request_id)
            if self._allow_on_error:
                return None
            return Reply(503, [(b"Content-Type", b"text/plain; charset=utf-8")],
                         b"503 Service Unavailable (authentication service unavailable)\n")
        if 200 <= status < 300:
            self.runtime.count("auth_allowed", rule)
            if self._copy:
                low = self._copy_low
                out = [f for f in ex.request_headers if f[0].lower() not in low]
                for k, v in answer_headers:
                    if k.lower() in low:
                        out.append((k, v))
                ex.request_headers = out
            return None
        self.runtime.count("auth_denied", rule)
        # The service's answer is the client's (framing fields are the tunnel's to set).
        return Reply(status, list(answer_headers), body)
