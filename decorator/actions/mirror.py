"""`mirror`: send a copy of matched requests to another service, fire and forget.

Runs in the complete phase, after the real response went out, and only queues the copy
(runtime.mirror: a bounded queue drained by a few background senders; full means dropped and
counted), so a slow or down target never delays or changes the real response. The body comes from
the tunnel's kept copy (`keep_body`); a request whose body was not kept is not mirrored (counted).
Imports proxy.hooks only.
"""

from __future__ import annotations

import random
from typing import Any

from decorator.actions.registry import Action, RuleInfo, register
from decorator.proxy.hooks import Exchange

_NOT_COPIED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
                         b"transfer-encoding", b"content-length", b"expect", b"host"})


@register
class Mirror(Action):
    name = "mirror"
    Config = "decorator.actions.configs_edge:MirrorConfig"
    summary = "Send a copy of matched requests to another URL (fire and forget, bounded queue, sampled)."

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self._base = config.url.rstrip("/")
        self._p = config.percent / 100.0
        self._max_body = config.max_body
        self._timeout = config.timeout
        self._random = random.random
        self.keep_body = config.max_body
        self.complete = self._copy

    def would(self, ex: Exchange, phase: str) -> str | None:
        """Shadow mode: the same sampling; nothing is sent."""
        if self._p < 1.0 and self._random() >= self._p:
            return None
        return f"copy {ex.method} to {self._base}{ex.target}"

    def _copy(self, ex: Exchange) -> None:
        if self._p < 1.0 and self._random() >= self._p:
            return
        body = ex.kept_body()
        if body is None or len(body) > self._max_body:
            self.runtime.count("mirror_skipped", self.rule.name)
            return
        headers = [(k, v) for k, v in ex.request_headers if k.lower() not in _NOT_COPIED]
        host = ex.request_header(b"host")
        if host is not None:
            headers.append((b"X-Forwarded-Host", host))
        self.runtime.mirror(self.rule.name, ex.method, self._base + ex.target, headers, body, self._timeout)
