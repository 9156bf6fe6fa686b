"""`cors`: answer CORS preflights (OPTIONS with Origin and Access-Control-Request-Method) from the
sidecar, and give other requests from an allowed Origin the Access-Control-* response headers.
`Vary: Origin` is always set; `*` with credentials is refused at load.

Imports proxy.hooks only; never pydantic (the config model lives in actions.configs_traffic).
"""

from __future__ import annotations

import re
from typing import Any

from decorator.actions.registry import Action, LoadContext, RuleInfo, register, request_only
from decorator.proxy.hooks import Exchange, Headers, Reply

_ORIGIN = re.compile(r"^([a-z][a-z0-9+.-]*)://(\*\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$")
_ALWAYS_METHODS = frozenset({"GET", "HEAD", "POST"})  # CORS-safelisted: no preflight asks for them
_SAFE_HEADERS = frozenset({"accept", "accept-language", "content-language"})
_OWN = frozenset({b"access-control-allow-origin", b"access-control-allow-credentials",
                  b"access-control-expose-headers"})
_PREFLIGHT_VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def origin_problem(v: str) -> str | None:
    """Why `v` is not an allowed-origin entry, or None ('*', 'https://a.example', 'https://*.example')."""
    if v == "*":
        return None
    low = v.lower()
    if _ORIGIN.match(low):
        return None
    fixed = re.sub(r"^([a-z][a-z0-9+.-]*://[^/]+)/.*$", r"\1", low)
    if fixed != low and _ORIGIN.match(fixed):
        return f"an origin is scheme://host[:port] without a path (did you mean {fixed!r}?), found {v!r}"
    if "://" not in v:
        return f"an origin starts with a scheme (did you mean 'https://{v}'?), found {v!r}"
    return f"expected an origin such as https://app.example.com, https://*.example.com or *, found {v!r}"


class Origins:
    """The allowed origins, compiled: exact ones in a set, `scheme://*.domain` ones as suffixes."""

    def __init__(self, entries: list[str]) -> None:
        self.any = "*" in entries
        self.exact = frozenset(e.lower() for e in entries if "*" not in e)
        self.wild = tuple((e[:e.index("*")].lower(), e[e.index("*") + 1:].lower()) for e in entries
                          if "*" in e and e != "*")

    def allows(self, origin: str) -> bool:
        o = origin.lower()
        if self.any or o in self.exact:
            return True
        for prefix, suffix in self.wild:
            middle = o[len(prefix):len(o) - len(suffix)]
            if o.startswith(prefix) and o.endswith(suffix) and middle and "/" not in middle and ":" not in middle:
                return True
        return False


def _has_vary_origin(headers: Headers) -> bool:
    for k, v in headers:
        if k.lower() == b"vary":
            tokens = {t.strip().lower() for t in v.split(b",")}
            if b"origin" in tokens or b"*" in tokens:
                return True
    return False


@register
class Cors(Action):
    name = "cors"
    Config = "decorator.actions.configs_traffic:CorsConfig"
    summary = "Answer CORS preflights and add Access-Control-* headers for allowed origins (Vary: Origin)."

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        if rule.needs_response:
            return request_only("cors", rule, "answers preflights")
        if rule.methods is not None and "OPTIONS" not in rule.methods:
            return [((), f"the rule's match.method ({', '.join(rule.methods)}) leaves out OPTIONS, so "
                     "preflight requests never reach cors; add OPTIONS or drop match.method")]
        return []

    @classmethod
    def prepare(cls, config: Any, rule: RuleInfo, ctx: LoadContext) -> None:
        if config.credentials:
            for field in ("origins", "headers"):
                for i, v in enumerate(getattr(config, field)):
                    if v == "*":
                        what = "origins" if field == "origins" else "request headers"
                        ctx.error((field, i), f"`*` cannot allow {what} with credentials: true (browsers refuse "
                                  f"a wildcard on credentialed requests); list the {what} instead")
        return None

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self.origins = Origins(list(config.origins))
        self._star = self.origins.any and not config.credentials  # answer `*` rather than echo
        self._credentials = config.credentials
        self._methods = frozenset(config.methods) | _ALWAYS_METHODS
        self._any_header = "*" in config.headers
        self._headers = frozenset(h.lower() for h in config.headers if h != "*") | _SAFE_HEADERS
        fixed = [(b"Access-Control-Allow-Methods", ", ".join(config.methods).encode("latin-1"))]
        if config.headers and not self._any_header:
            fixed.append((b"Access-Control-Allow-Headers", ", ".join(config.headers).encode("latin-1")))
        if config.max_age is not None:
            fixed.append((b"Access-Control-Max-Age", str(int(config.max_age)).encode()))
        self._preflight_fixed = fixed
        self._expose = (b"Access-Control-Expose-Headers", ", ".join(config.expose_headers).encode("latin-1")) \
            if config.expose_headers else None
        self._name = rule.name
        self.request = self._preflight
        self.response = self._simple

    # -- the preflight -----------------------------------------------------------------------
    def _preflight_origin(self, ex: Exchange) -> bytes | None:
        """The Origin of a preflight request, or None for any other request."""
        if ex.method != "OPTIONS":
            return None
        origin = ex.request_header(b"origin")
        if origin is None or ex.request_header(b"access-control-request-method") is None:
            return None
        return origin

    def _preflight_ok(self, ex: Exchange, origin: bytes) -> bool:
        if not self.origins.allows(origin.decode("latin-1")):
            return False
        method = ex.request_header(b"access-control-request-method").decode("latin-1").strip()  # type: ignore[union-attr]
        if method.upper() not in self._methods:
            return False
        asked = ex.request_header(b"access-control-request-headers")
        if asked and not self._any_header:
            for h in asked.decode("latin-1").split(","):
                if h.strip() and h.strip().lower() not in self._headers:
                    return False
        return True

    def _preflight(self, ex: Exchange) -> Reply | None:
        origin = self._preflight_origin(ex)
        if origin is None:
            return None
        self.runtime.count("cors_preflights", self._name)
        headers = [(b"Vary", _PREFLIGHT_VARY)]
        if self._preflight_ok(ex, origin):
            headers += self._allow_origin(origin)
            headers += self._preflight_fixed
            if self._any_header:
                asked = ex.request_header(b"access-control-request-headers")
                if asked:
                    headers.append((b"Access-Control-Allow-Headers", asked))
        # A refused preflight is answered too, without Access-Control-Allow-*: the browser then
        # refuses the request itself (and the app never sees the OPTIONS).
        if ex.state is None:
            ex.state = {}
        ex.state[self] = True  # the response phase leaves this answer alone
        return Reply(204, headers)

    def _allow_origin(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        out = [(b"Access-Control-Allow-Origin", b"*" if self._star else origin)]
        if self._credentials:
            out.append((b"Access-Control-Allow-Credentials", b"true"))
        return out

    # -- other requests ----------------------------------------------------------------------
    def _simple(self, ex: Exchange, reply: Reply | None) -> None:
        if ex.state is not None and ex.state.get(self):
            return
        headers = reply.headers if reply is not None else ex.response_headers
        if headers is None:
            return
        # On the rule's paths the sidecar's CORS answer replaces whatever the app said.
        headers = [(k, v) for k, v in headers if k.lower() not in _OWN]
        origin = ex.request_header(b"origin")
        if origin is not None and self.origins.allows(origin.decode("latin-1")):
            headers += self._allow_origin(origin)
            if self._expose is not None:
                headers.append(self._expose)
        if not _has_vary_origin(headers):
            headers.append((b"Vary", b"Origin"))
        if reply is not None:
            reply.headers = headers
        ex.response_headers = headers

    def would(self, ex: Exchange, phase: str) -> str | None:
        if phase == "request":
            origin = self._preflight_origin(ex)
            if origin is None:
                return None
            verdict = "allowed" if self._preflight_ok(ex, origin) else "refused"
            return f"answer the preflight from {origin.decode('latin-1')} with 204 ({verdict})"
        if ex.state is not None and ex.state.get(self):
            return None
        origin = ex.request_header(b"origin")
        if origin is None or self._preflight_origin(ex) is not None or \
                not self.origins.allows(origin.decode("latin-1")):
            return None
        return f"add Access-Control-Allow-Origin for {origin.decode('latin-1')}"
