"""Config models of fault, basic_auth, forward_auth, mirror and retry (validation and schema.json only).

Kept apart from the action modules, as configs.py is, so a process running validated rules never
imports pydantic. Imports pydantic, rules.base, units and the action modules' plain helpers; never
rules.models or proxy.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from decorator.actions.configs import HeaderName
from decorator.actions.retry import RETRY_CONDITIONS, parse_condition
from decorator.rules.base import Duration, Strict
from decorator.units import size_bytes

_PERCENT_PATTERN = r"^\s*\d+(\.\d+)?\s*%?\s*$"
_SIZE_PATTERN = r"^\s*\d+\s*([kKmM]i?[bB]?)?\s*$"


def _percent(v: Any) -> Any:
    """20, 2.5, "20%" -> a float in [0, 100] (the range is the field's check)."""
    if isinstance(v, str) and re.match(_PERCENT_PATTERN, v):
        return float(v.strip().rstrip("%").strip())
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


Percent = Annotated[float, BeforeValidator(_percent, json_schema_input_type=(
    Annotated[float, Field(ge=0, le=100)] | Annotated[str, Field(pattern=_PERCENT_PATTERN)])),
    Field(ge=0, le=100)]
"""A share of requests: 5, 0.5 or "5%"."""


def _size(v: Any) -> Any:
    if isinstance(v, str):
        n = size_bytes(v)
        if n is None:
            raise ValueError(f"expected a size such as 65536, 64k or 1m, found {v!r}")
        return n
    return v


Size = Annotated[int, BeforeValidator(_size, json_schema_input_type=(
    Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=_SIZE_PATTERN)])), Field(ge=0)]
"""Bytes: 65536, 64k, 1m (k and m are binary)."""


def _http_url(v: str) -> str:
    if not re.match(r"^https?://[^/\s?#]+[^\s]*$", v):
        raise ValueError(f"expected an http:// or https:// URL, found {v!r}")
    return v


# -- fault -------------------------------------------------------------------------------------
class FaultConfig(Strict):
    """Inject faults for chaos testing: delay some requests, answer some with an error instead of
    the app. The two are decided independently per request (a request may be delayed, then
    aborted). Delays are timers: the event loop goes on serving other requests meanwhile."""

    delay: Duration | None = Field(None, description="How long to hold the request before it goes on: 200ms, 2s.")
    delay_percent: Percent = Field(100.0, description="Share of matched requests delayed (0-100). Default 100.")
    abort: int | None = Field(None, ge=400, le=599, description=(
        "Status to answer with instead of calling the app (400-599)."))
    abort_percent: Percent = Field(100.0, description="Share of matched requests aborted (0-100). Default 100.")

    @model_validator(mode="after")
    def _something(self) -> FaultConfig:
        if self.delay is None and self.abort is None:
            raise ValueError("fault needs `delay`, `abort` or both")
        return self


# -- basic_auth --------------------------------------------------------------------------------
class BasicAuthConfig(Strict):
    """HTTP Basic authentication: a request without valid credentials gets 401 with
    WWW-Authenticate and never reaches the app. Passwords are bcrypt hashes (`htpasswd -B`),
    compared in constant time, off the event loop."""

    realm: str = Field("restricted", pattern=r'^[^"\\\r\n]*$', max_length=200, description=(
        "Shown by browsers in the login prompt."))
    users_file: str | None = Field(None, description=(
        "htpasswd file of user:bcrypt-hash lines (`htpasswd -B -c FILE USER`), relative to the rules "
        "file. Read at load and on every reload."))
    users: dict[Annotated[str, Field(pattern=r"^[^:\s]+$")], str] | None = Field(None, description=(
        "Inline user -> bcrypt hash, e.g. `admin: ${ADMIN_HASH}`; with `users_file`, both count."))
    forward_credentials: bool = Field(False, description=(
        "Send the Authorization header on to the app. Default: removed once checked."))
    user_header: HeaderName | None = Field(None, description=(
        "Request header that tells the app the authenticated user (e.g. X-Remote-User); a copy "
        "the client sent is always removed."))

    @model_validator(mode="after")
    def _some_users(self) -> BasicAuthConfig:
        if self.users_file is None and self.users is None:
            raise ValueError("basic_auth needs `users_file`, `users` or both")
        return self


# -- forward_auth ------------------------------------------------------------------------------
class ForwardAuthConfig(Strict):
    """Ask an auth service before the app (nginx auth_request, Traefik ForwardAuth): the service
    gets a GET with the request's headers (no body) and X-Forwarded-Method/-Uri/-Host/-For/-Proto.
    A 2xx answer lets the request through with `copy_headers` copied from it; any other answer is
    sent to the client as it is (a 401, a redirect to a login page); a timeout or an unreachable
    service answers 503 unless `on_error: allow`."""

    url: str = Field(description="The auth service's http(s) URL.")
    copy_headers: list[HeaderName] = Field(default_factory=list, description=(
        "Headers of the service's 2xx answer put on the request to the app (e.g. X-User); copies "
        "the client sent are always removed."))
    request_headers: list[HeaderName] | None = Field(None, description=(
        "Only these request headers are sent to the service. Default: all but hop-by-hop ones."))
    timeout: Duration = Field(2.0, description="How long to wait for the service: 2s, 500ms.")
    on_error: Literal["deny", "allow"] = Field("deny", description=(
        "When the service times out or cannot be reached: deny (503, the default) or allow."))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)

    @field_validator("timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("expected a timeout longer than 0s")
        return v


# -- mirror ------------------------------------------------------------------------------------
class MirrorConfig(Strict):
    """Send a copy of matched requests to another service, fire and forget: its answers are
    discarded, and a slow or down target never delays or changes the real response (copies are
    sent after the exchange, from a bounded queue; what does not fit is dropped and counted)."""

    url: str = Field(description=(
        "Where copies go: scheme, host and port (and an optional path prefix); the request's path "
        "and query are appended."))
    percent: Percent = Field(100.0, description="Share of matched requests copied (0-100). Default 100.")
    max_body: Size = Field(64 * 1024, le=1024 * 1024, description=(
        "Bodies up to this size are copied (at most 1m); a request with a bigger body, or whose body "
        "had not fully arrived when the app was asked, is not mirrored (counted)."))
    timeout: Duration = Field(5.0, description="Per copy sent.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)


# -- retry -------------------------------------------------------------------------------------
def _condition(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str):
        parse_condition(v)
        return str(v).strip().lower() if isinstance(v, str) else v
    return v


Condition = Annotated[int | str, BeforeValidator(_condition, json_schema_input_type=(
    Annotated[int, Field(ge=500, le=599)] | Literal[RETRY_CONDITIONS]))]


class RetryConfig(Strict):
    """Send an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE) to the app again when it
    answers with one of the listed statuses or cannot be reached. Only requests whose body is
    small and had fully arrived when the app was asked; never after a byte of the answer went to
    the client. The budget keeps retries a bounded share of traffic, so a failing app is not hammered."""

    attempts: int = Field(2, ge=1, le=5, description="Retries after the first try (1-5). Default 2.")
    on: list[Condition] = Field(default_factory=lambda: [502, 503, "connect-failure"], min_length=1,
                                description=(
        "What is retried: 5xx statuses the app answers, connect-failure (the app cannot be reached) "
        "and reset (the app closed the connection without answering). Default [502, 503, connect-failure]."))
    budget: Percent = Field(20.0, description=(
        "Retries over the last 10 s may be at most this share of the requests the rule matched "
        "(plus a floor of 3 retries per window). Default 20%."))
