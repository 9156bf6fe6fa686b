"""What the built-in actions accept: their pydantic config models (validation and schema.json only).

Kept apart from the action modules so that a process running already-validated rules never imports
pydantic: the registry resolves `Action.Config` from here only when the models are built.
Imports pydantic, rules.base and the action modules' plain helpers; never rules.models or proxy.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from decorator.actions.notify import parse_threshold
from decorator.actions.record import record_fields
from decorator.rules.base import Duration, Strict, TemplateStr
from decorator.rules.values import FRAMING_HEADERS


# -- respond -----------------------------------------------------------------------------------
def check_header_names(headers: dict) -> dict:
    for k in headers:
        if k.lower() in FRAMING_HEADERS:
            raise ValueError(f"header {k!r} cannot be set: the proxy frames messages itself")
    return headers


class RespondConfig(Strict):
    """Answer with this instead of the app's response (before the app is called when the rule's
    match uses request fields only; on the response head otherwise)."""

    status: int | None = Field(None, ge=100, le=599, description=(
        "Status to send. Default: the app's status when the rule matches on the response "
        "(so `match: {status: 404}` keeps 404), 200 when it answers before the app."))
    body: TemplateStr | None = Field(None, description=(
        "Inline body; may use {status} {path} {method} {request_id} {rule} {time} {route}."))
    file: str | None = Field(None, description=(
        "File to send, relative to the rules file. Read at load and on every reload."))
    template: bool = Field(False, description="Treat `file` as a template (fields as for `body`).")
    content_type: str | None = Field(None, description=(
        "Content-Type. Default: guessed from the file name, text/plain for `body`."))
    headers: dict[str, TemplateStr] = Field(default_factory=dict, description=(
        "Extra response headers (values may use template fields)."))

    _headers_ok = field_validator("headers")(check_header_names)

    @model_validator(mode="after")
    def _one_source(self) -> RespondConfig:
        if self.body is not None and self.file is not None:
            raise ValueError("give either `body` or `file`, not both")
        if self.template and self.file is None:
            raise ValueError("`template: true` applies to `file`; an inline `body` is always a template")
        return self



# -- headers -----------------------------------------------------------------------------------
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _header_name(v: str) -> str:
    if not _TOKEN.match(v):
        raise ValueError(f"expected a header name (letters, digits, -), found {v!r}")
    if v.lower() in FRAMING_HEADERS:
        raise ValueError(f"header {v!r} cannot be edited: the proxy frames messages itself")
    return v


HeaderName = Annotated[str, AfterValidator(_header_name)]


class HeaderEdits(Strict):
    """Edits to one side's headers, applied in this order: remove, set, default, add."""

    remove: list[HeaderName] = Field(default_factory=list, description="Remove every header of these names.")
    set: dict[HeaderName, TemplateStr] = Field(default_factory=dict, description=(
        "Replace every header of this name with one value."))
    default: dict[HeaderName, TemplateStr] = Field(default_factory=dict, description=(
        "Set only when the message has no header of this name."))
    add: dict[HeaderName, TemplateStr] = Field(default_factory=dict, description=(
        "Append one more header (keeps existing ones)."))


class HeadersConfig(Strict):
    """Edit request headers (before the app sees them) and/or response headers (before the client
    sees them). Values may use {status} {path} {method} {request_id} {rule} {time} {route}."""

    request: HeaderEdits | None = Field(None, description="Edits to the request sent to the app.")
    response: HeaderEdits | None = Field(None, description="Edits to the response sent to the client.")



# -- record ------------------------------------------------------------------------------------
class RecordConfig(Strict):
    """Record the exchange in telemetry at completion. `record: {}` records everything; naming
    fields records just those."""

    timing: bool | None = Field(None, description="Duration and upstream latency.")
    status: bool | None = Field(None, description="Final status (and its class).")
    size: bool | None = Field(None, description="Bytes in and out.")

    @model_validator(mode="after")
    def _some(self) -> RecordConfig:
        if self.fields() == frozenset():
            raise ValueError("record needs at least one of timing, status, size set to true")
        return self

    def fields(self) -> frozenset[str]:
        return record_fields(self)



# -- notify ------------------------------------------------------------------------------------
class NotifyConfig(Strict):
    """POST a JSON event (`rule.matched`, the shape of the dashboard's POST /events) when the rule
    matches. Sent in the background: a down or slow receiver never slows proxied traffic."""

    url: str = Field(description="http(s) URL to POST the event to (often `${ALERT_URL}`).")
    cooldown: Duration = Field(0.0, description=(
        "After an event is sent, matches of the same rule (and key) within this time are counted "
        "into the next event instead of sending one each. E.g. 60s."))
    threshold: str | None = Field(None, description=(
        "Only send once this many matches happen within the window: '5 in 60s'."))
    key: TemplateStr | None = Field(None, description=(
        "Dedupe key: cooldown and threshold apply per distinct value, e.g. '{status} {route}'. "
        "Default: one per rule."))
    message: TemplateStr | None = Field(None, description="Text put in the event's `message`.")
    timeout: Duration = Field(5.0, description="Per attempt.")
    retries: int = Field(3, ge=0, le=10, description=(
        "Retries after the first attempt, on connection errors, timeouts, 5xx and 429 "
        "(exponential backoff; Retry-After honoured, capped)."))
    headers: dict[str, str] = Field(default_factory=dict, description=(
        "Extra request headers, e.g. Authorization: Bearer ${DASHBOARD_TOKEN}."))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"expected an http:// or https:// URL, found {v!r}")
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: str | None) -> str | None:
        if v is not None:
            parse_threshold(v)
        return v


