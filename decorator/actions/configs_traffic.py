"""What redirect, rewrite, ratelimit and cors accept: their pydantic config models (validation and
schema.json only), kept apart from the action modules as configs.py is, so a serving process never
imports pydantic. Checks that need the rule (path parameters) live in each action's `prepare`.
Imports pydantic, rules.base and the action modules' plain helpers; never rules.models or proxy.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from decorator.actions.cors import origin_problem
from decorator.actions.ratelimit import key_problem, parse_rate
from decorator.actions.redirect import REDIRECT_STATUSES
from decorator.rules.base import Duration, Strict
from decorator.rules.values import FRAMING_HEADERS

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def _url_template(v: str) -> str:
    if any(c.isspace() or ord(c) < 0x20 for c in v):
        raise ValueError(f"a URL cannot contain spaces or control characters, found {v!r}")
    return v


UrlTemplate = Annotated[str, AfterValidator(_url_template)]


# -- redirect ----------------------------------------------------------------------------------
class RedirectConfig(Strict):
    """Answer with a redirect before the app is called."""

    to: UrlTemplate = Field(description=(
        "Where to: an absolute URL or a path. May use the match's path parameters ({page} from "
        "`path: /docs/{page}`, named groups of `path_regex`) and {path} {query} {method} {route} "
        "{request_id} {rule}."))
    status: int = Field(302, json_schema_extra={"enum": list(REDIRECT_STATUSES)}, description=(
        "301 or 308 (permanent), 302, 303 or 307 (temporary); 307 and 308 keep the method and body."))
    query: bool = Field(True, description=(
        "Keep the request's query string (appended, after `&` when `to` has one)."))

    @field_validator("status")
    @classmethod
    def _status(cls, v: int) -> int:
        if v not in REDIRECT_STATUSES:
            raise ValueError(f"expected a redirect status ({', '.join(map(str, REDIRECT_STATUSES))}), found {v}")
        return v


# -- rewrite -----------------------------------------------------------------------------------
def _host(v: str) -> str:
    if not _HOST.match(v):
        raise ValueError(f"expected a host name with an optional :port (no scheme or path), found {v!r}")
    return v


class RewriteConfig(Strict):
    """Change what the app is asked for, before it sees the request (the client is not told)."""

    path: UrlTemplate | None = Field(None, description=(
        "New path, e.g. /api/v2/{rest} (path parameters and {path} {query} {method} {route} {rule}); "
        "starts with '/'."))
    query: UrlTemplate | None = Field(None, description=(
        "New query string, without '?': \"\" removes it, \"{query}&v=2\" adds to it. Default: kept."))
    host: Annotated[str, AfterValidator(_host)] | None = Field(None, description=(
        "New Host header, e.g. api.internal:8080."))

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("/", "{")):
            raise ValueError(f"a rewritten path starts with '/', found {v!r}")
        return v

    @model_validator(mode="after")
    def _some(self) -> RewriteConfig:
        if self.path is None and self.query is None and self.host is None:
            raise ValueError("rewrite needs at least one of path, query, host")
        return self


# -- ratelimit ---------------------------------------------------------------------------------
def _rate(v: Any) -> Any:
    if isinstance(v, str):
        parse_rate(v)
    return v


def _key(v: Any) -> Any:
    if isinstance(v, str):
        problem = key_problem(v)
        if problem:
            raise ValueError(problem)
    return v


class RateLimitConfig(Strict):
    """Limit requests per key with a token bucket (GCRA: one timestamp per key). Over the limit the
    sidecar answers 429 with Retry-After and the IETF RateLimit-Policy / RateLimit headers; the app
    never sees a rejected request."""

    rate: Annotated[str, AfterValidator(_rate)] = Field(
        json_schema_extra={"pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*/\s*([0-9]+(\.[0-9]+)?\s*)?(ms|s|m|h|d)\s*$"},
        description="Sustained rate: 100/s, 600/m, 5000/h, or per a span such as 10/30s.")
    burst: int | None = Field(None, ge=1, le=1_000_000, description=(
        "Requests a key may make at once from idle (the bucket's size). Default: the rate's count "
        "(100 for 100/s), at least 1."))
    key: Annotated[str, AfterValidator(_key)] = Field("client", description=(
        "What shares a bucket: client (the peer address), header:NAME (that header's value; absent "
        "is one shared key), route (the endpoint), or a JMESPath expression over the request view "
        "(request.*, route), e.g. request.headers.\"x-api-key\"."))
    max_keys: int = Field(10_000, ge=1, le=10_000_000, description=(
        "Keys remembered (least recently used forgotten first), so a scan of client addresses "
        "cannot grow memory without limit. A forgotten key starts with a full bucket."))
    headers: bool = Field(False, description=(
        "Also send RateLimit-Policy / RateLimit on responses that were let through (they are always "
        "on a 429)."))


# -- cors --------------------------------------------------------------------------------------
def _origin(v: Any) -> Any:
    if isinstance(v, str):
        problem = origin_problem(v)
        if problem:
            raise ValueError(problem)
    return v


def _method(v: Any) -> Any:
    if isinstance(v, str):
        if not re.fullmatch(r"[A-Za-z]+", v.strip()):
            raise ValueError(f"expected an HTTP method such as GET, found {v!r}")
        return v.strip().upper()
    return v


def _header_or_star(v: Any) -> Any:
    if isinstance(v, str) and v != "*":
        if not _TOKEN.match(v):
            raise ValueError(f"expected a header name (letters, digits, -) or *, found {v!r}")
        if v.lower() in FRAMING_HEADERS:
            raise ValueError(f"header {v!r} is the proxy's own framing")
    return v


Origin = Annotated[str, AfterValidator(_origin)]
CorsMethod = Annotated[str, BeforeValidator(_method, json_schema_input_type=Annotated[str, Field(
    pattern=r"^[A-Za-z]+$")])]
CorsHeader = Annotated[str, AfterValidator(_header_or_star)]


class CorsConfig(Strict):
    """Cross-origin resource sharing: preflight OPTIONS requests are answered by the sidecar (the app
    never sees them); other requests from an allowed Origin get the Access-Control-* headers.
    `Vary: Origin` is always set."""

    origins: list[Origin] = Field(min_length=1, description=(
        "Allowed origins, e.g. https://app.example.com; https://*.example.com for its subdomains; "
        "* for any (not with credentials)."))
    methods: list[CorsMethod] = Field(default_factory=lambda: ["GET", "HEAD", "POST"], min_length=1,
                                      description="Methods a preflight may ask for.")
    headers: list[CorsHeader] = Field(default_factory=list, description=(
        "Request headers a preflight may ask for (besides the CORS-safelisted ones); * for any "
        "(not with credentials)."))
    expose_headers: list[CorsHeader] = Field(default_factory=list, description=(
        "Response headers the browser's script may read (Access-Control-Expose-Headers)."))
    credentials: bool = Field(False, description=(
        "Allow cookies and Authorization (Access-Control-Allow-Credentials: true); needs listed "
        "origins, not *."))
    max_age: Duration | None = Field(None, description=(
        "How long a browser may cache a preflight answer, e.g. 10m (Access-Control-Max-Age)."))
