"""Plain building blocks of the rules language, shared by validation and the running rules:
safe `{field}` templates, durations, escaping, the framing headers a rule may not touch.

Must not import pydantic (the serving process compiles rules without it), proxy, actions or telemetry.
"""

from __future__ import annotations

import html
import json
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from decorator.units import duration_seconds


# A `${NAME}` or `${NAME:-default}` reference as the loader reads it (a `$` right before `${` makes
# `$${` the escape for a literal `${`). VARIABLE_PATTERN is the JSON-schema pattern of a string
# holding at least one: schema.json lets one stand in for any value.
VARIABLE_REF = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"
VARIABLE_PATTERN = r"(^|[^$])" + VARIABLE_REF


class VarText(str):
    """Text that `${...}` substitution produced. Validation converts it to the field's type (a
    variable can only hold text), where a string written in the file must already be of that type."""

    __slots__ = ()


def parse_seconds(value: Any) -> float:
    """'60s', '500ms', '2m', '1h', 15 -> seconds; ValueError with what was expected otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 60s, 500ms or 2m, found {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a duration of 0 or more, found {value!r}")
        return float(value)
    if isinstance(value, str):
        seconds = duration_seconds(value)
        if seconds is not None:
            return seconds
    raise ValueError(f"expected a duration such as 60s, 500ms or 2m, found {value!r}")


def status_codes(spec: str) -> range:
    """A validated status spec ('404', '5xx', '500-599') -> the codes it stands for."""
    if spec.endswith("xx"):
        base = int(spec[0]) * 100
        return range(base, base + 100)
    if "-" in spec:
        lo, hi = spec.split("-")
        return range(int(lo), int(hi) + 1)
    return range(int(spec), int(spec) + 1)


def as_list(value: Any) -> Any:
    """Shorthand: a single item stands for a one-item list."""
    return value if isinstance(value, list) else [value]


# ----------------------------------------------------------------------------------------------
# Templates: str.format-like `{field}` substitution over a fixed set of names. No attribute or
# index access, no conversions, no format specs: nothing a rule author writes can run code.

TEMPLATE_FIELDS = ("status", "path", "method", "request_id", "rule", "time", "route")


class Template:
    """A compiled `{field}` template; `render(values)` joins literal parts and field values."""

    __slots__ = ("fields", "parts", "source", "text")

    def __init__(self, source: str, allowed: Iterable[str] = TEMPLATE_FIELDS) -> None:
        allowed = tuple(allowed)
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as e:
            raise ValueError(f"bad template {source!r}: {e} (write {{{{ and }}}} for literal braces)") from None
        for literal, name, spec, conv in parsed:
            if literal:
                parts.append((literal, None))
            if name is None:
                continue
            if conv or spec or name not in allowed:
                shown = name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
                raise ValueError(f"unknown template field {{{shown}}}; expected one of "
                                 + ", ".join("{" + f + "}" for f in allowed)
                                 + " (write {{ and }} for literal braces)")
            parts.append(("", name))
        self.source = source
        self.parts = tuple(parts)
        self.fields = frozenset(n for _, n in parts if n)
        # Formatter.parse already turned {{ and }} into single braces in the literal parts.
        self.text = "".join(lit for lit, _ in parts)

    @property
    def static(self) -> bool:
        return not self.fields

    def render(self, values: Mapping[str, str], escape: Callable[[str], str] | None = None) -> str:
        if not self.fields:
            return self.text
        out = []
        for lit, name in self.parts:
            if name is None:
                out.append(lit)
            else:
                v = str(values.get(name, ""))
                out.append(escape(v) if escape else v)
        return "".join(out)


def check_template(value: str) -> str:
    Template(value)
    return value


def html_escape(s: str) -> str:
    return html.escape(s, quote=True)


# Header names a rule may not set: they describe the connection or the framing, which the proxy owns
# (RFC 9110 §7.6.1 hop-by-hop fields plus Content-Length). Lower-case.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
                             "te", "trailer"})


def json_escape(s: str) -> str:
    """A value placed inside a JSON string literal: quotes, backslashes and controls escaped."""
    return json.dumps(s)[1:-1]


def escape_for(content_type: str) -> Callable[[str], str] | None:
    """The escaping a templated body needs for its content type (None for plain text)."""
    ct = content_type.lower()
    if "json" in ct:
        return json_escape
    if "html" in ct or "xml" in ct:
        return html_escape
    return None


def header_safe(s: str) -> str:
    """Values put into header fields lose control characters (no header injection via {path})."""
    return "".join(ch for ch in s if ch >= " " and ch != "\x7f")
