"""`rewrite`: change the path, query and/or Host the app is asked for, before it sees the request
(through `Exchange.set_target`, which re-checks the target). The client is not told.

Imports proxy.hooks, actions.redirect (URL templates) and actions.params; never pydantic.
"""

from __future__ import annotations

from typing import Any

from decorator.actions.redirect import UrlBuilder, url_template
from decorator.actions.registry import Action, LoadContext, RuleInfo, register, request_only
from decorator.proxy.hooks import Exchange


@register
class Rewrite(Action):
    name = "rewrite"
    Config = "decorator.actions.configs_traffic:RewriteConfig"
    summary = "Rewrite the path, query and/or Host before the app sees the request."

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        return request_only("rewrite", rule)

    @classmethod
    def prepare(cls, config: Any, rule: RuleInfo, ctx: LoadContext) -> dict | None:
        out = {}
        for field in ("path", "query"):
            text = getattr(config, field)
            if text is not None:
                out[field] = url_template(text, rule, (field,), ctx)
        return out

    def __init__(self, config: Any, rule: RuleInfo, prepared: dict, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self._path = UrlBuilder(prepared["path"], rule) if prepared.get("path") else None
        self._query = UrlBuilder(prepared["query"], rule) if prepared.get("query") else None
        self._host = config.host.encode("ascii") if config.host is not None else None
        self.request = self._rewrite

    def target(self, ex: Exchange) -> str:
        """The request target the app will be sent."""
        path = self._path.render(ex) if self._path is not None else ex.path
        query = self._query.render(ex) if self._query is not None else ex.query
        return f"{path}?{query}" if query else path

    def would(self, ex: Exchange, phase: str) -> str:
        what = f"send the app {self.target(ex)}"
        return what + (f" with Host: {self.config.host}" if self._host is not None else "")

    def _rewrite(self, ex: Exchange) -> None:
        if self._path is not None or self._query is not None:
            ex.set_target(self.target(ex))
        if self._host is not None:
            ex.request_headers = [(k, v) for k, v in ex.request_headers if k.lower() != b"host"]
            ex.request_headers.append((b"Host", self._host))
