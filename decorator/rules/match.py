"""Matching primitives, compiled once: path globs and route templates, the path index, header
checks, the JMESPath exchange view and its phase analysis.

Pure functions over strings and `proxy.hooks.Exchange`; must not import pydantic models or actions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from operator import attrgetter
from typing import Any
from urllib.parse import parse_qsl

from decorator.proxy.hooks import Exchange

_PARAM = re.compile(r"\{([^{}]*)\}")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PathPattern:
    """A path glob: `*` is any run of characters within one segment, `**` any number of whole
    segments (so `/api/**` matches `/api` and `/api/a/b`), `{name}` one non-empty segment (a
    route template: it names the endpoint). Anything else is literal; matching is on the raw
    path (no query), case-sensitive."""

    __slots__ = ("key", "literal", "pattern", "regex", "template")

    def __init__(self, pattern: str) -> None:
        problem = glob_problem(pattern)
        if problem:
            raise ValueError(problem)
        self.pattern = pattern
        self.template = "{" in pattern
        wild = min((i for i in (pattern.find("*"), pattern.find("{")) if i >= 0), default=-1)
        if wild < 0:
            self.literal: str | None = pattern
            self.regex = None
            self.key = pattern
            return
        self.literal = None
        # Index key: the literal part up to the last '/' before the first wildcard.
        self.key = pattern[:pattern.rfind("/", 0, wild)]
        out = []
        segs = pattern.split("/")[1:]
        for i, seg in enumerate(segs):
            last = i == len(segs) - 1
            if seg == "**":
                out.append("(?:/.*)?" if last else "(?:/[^/]*)*")
                continue
            piece = []
            pos = 0
            for m in re.finditer(r"\*|\{([^{}]*)\}", seg):
                piece.append(re.escape(seg[pos:m.start()]))
                piece.append("[^/]*" if m.group(0) == "*" else f"(?P<{m.group(1)}>[^/]+)")
                pos = m.end()
            piece.append(re.escape(seg[pos:]))
            out.append("/" + "".join(piece))
        self.regex = re.compile("".join(out))

    def match(self, path: str) -> bool:
        if self.literal is not None:
            return path == self.literal
        return self.regex.fullmatch(path) is not None


def glob_problem(pattern: str) -> str | None:
    """Why `pattern` is not a valid path glob, or None."""
    if not pattern.startswith("/"):
        return f"a path pattern starts with '/', found {pattern!r}"
    if any(c.isspace() for c in pattern):
        return f"a path pattern cannot contain spaces, found {pattern!r}"
    if "?" in pattern or "#" in pattern:
        return f"a path pattern matches the path only, without '?query' or '#fragment': {pattern!r}"
    names = []
    for seg in pattern.split("/")[1:]:
        if "**" in seg and seg != "**":
            return f"'**' must be a whole path segment, as in /api/**; found {seg!r} in {pattern!r}"
        stripped = _PARAM.sub("", seg)
        if "{" in stripped or "}" in stripped:
            return f"unbalanced '{{' or '}}' in {pattern!r}; a route parameter looks like {{id}}"
        for m in _PARAM.finditer(seg):
            name = m.group(1)
            if not _IDENT.match(name):
                return f"route parameter {{{name}}} in {pattern!r} must be a name such as {{id}}"
            if name in names:
                return f"route parameter {{{name}}} appears twice in {pattern!r}"
            names.append(name)
        if re.search(r"\}\{|\*\{|\}\*", seg):
            return f"two wildcards side by side in {pattern!r} cannot be told apart"
    return None


_REGEX_META = frozenset(".^$*+?{}[]\\|()")


def regex_key(pattern: str) -> str | None:
    """Index key for a `path_regex` anchored on a literal head (`^/api/v[0-9]+/` -> '/api'), or
    None when the regex could match paths outside any one prefix."""
    if not pattern.startswith("^/") or "|" in pattern:
        return None
    lit = []
    for ch in pattern[1:]:
        if ch in _REGEX_META:
            if ch in "?*{" and lit:
                lit.pop()  # the char before a quantifier is optional
            break
        lit.append(ch)
    head = "".join(lit)
    # A matching path starts with `head`; its '/' boundaries inside `head` are what lookups probe.
    return head[:head.rfind("/")] or None


class PathIndex:
    """Entries (objects with `.order`) bucketed by the literal head of their path pattern (the
    `key`: '' or None = could match any path), so a lookup costs one dict probe per path
    segment, not one match per rule."""

    __slots__ = ("_always", "_by_key", "_firsts", "_maxlen")

    @property
    def always(self) -> tuple:
        """The entries that could match any path."""
        return self._always

    @property
    def firsts(self) -> frozenset[str]:
        """First segments ('/api') of every key: a path whose first segment is not here gets `always`."""
        return self._firsts

    def __init__(self, entries: Iterable[tuple[str | None, Any]]) -> None:
        always: list = []
        by_key: dict[str, list] = {}
        for key, item in entries:
            if not key:
                always.append(item)
            else:
                by_key.setdefault(key, []).append(item)
        self._always = tuple(always)
        self._by_key = {k: tuple(v) for k, v in by_key.items()}
        self._maxlen = max((len(k) for k in by_key), default=-1)
        # First segments of all keys: most paths are ruled out by this one set probe.
        self._firsts = frozenset(k if k.find("/", 1) < 0 else k[:k.find("/", 1)] for k in by_key)

    def __bool__(self) -> bool:
        return bool(self._always or self._by_key)

    def lookup(self, path: str) -> tuple:
        """Candidates for `path` in rule order (each still has to match in full)."""
        if self._maxlen < 0:
            return self._always
        i = path.find("/", 1)
        if (path if i < 0 else path[:i]) not in self._firsts:
            return self._always
        get = self._by_key.get
        maxlen = self._maxlen
        hits = None
        while 0 < i <= maxlen:
            h = get(path[:i])
            if h is not None:
                hits = h if hits is None else hits + h
            i = path.find("/", i + 1)
        if len(path) <= maxlen:
            h = get(path)
            if h is not None:
                hits = h if hits is None else hits + h
        if hits is None:
            return self._always
        if self._always:
            hits = self._always + hits
        elif len(hits) == 1:
            return hits
        return tuple(sorted(hits, key=attrgetter("order")))


class HeaderCheck:
    """One header matcher: present (or absent), equals (exact), or regex (search) on any value."""

    __slots__ = ("kind", "name", "regex", "shown", "value")

    def __init__(self, name: str, present: bool | None, equals: str | None, regex: str | None) -> None:
        self.name = name.lower().encode("latin-1")
        self.shown = name
        if regex is not None:
            self.kind, self.value, self.regex = "regex", regex, re.compile(regex)
        elif equals is not None:
            self.kind, self.value, self.regex = "equals", equals.encode("latin-1", "replace"), None
        else:
            self.kind, self.value, self.regex = ("present" if present else "absent"), None, None

    def check(self, headers: list | None) -> bool:
        name = self.name
        n = len(name)
        kind = self.kind
        found = False
        for k, v in headers or ():
            if len(k) == n and k.lower() == name:
                found = True
                if kind == "equals":
                    if v == self.value:
                        return True
                elif kind == "regex":
                    if self.regex.search(v.decode("latin-1")):
                        return True
                else:
                    break
        if kind == "present":
            return found
        if kind == "absent":
            return not found
        return False

    def describe(self) -> str:
        if self.kind == "equals":
            return f"{self.shown} == {self.value.decode('latin-1')!r}"
        if self.kind == "regex":
            return f"{self.shown} ~ /{self.value}/"
        return f"{self.shown} {self.kind}"


# ----------------------------------------------------------------------------------------------
# The JMESPath view of an exchange (documented in docs/rules.md). Built only when a `when` runs.

VIEW_KEYS = ("request", "response", "timing", "route", "error", "replied_by")


def _headers_dict(headers: list | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers or ():
        name = k.decode("latin-1").lower()
        val = v.decode("latin-1")
        out[name] = f"{out[name]}, {val}" if name in out else val
    return out


def _query_dict(query: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        out.setdefault(k, v)  # the first value of a repeated name, as documented
    return out


def exchange_view(ex: Exchange) -> dict:
    response = None
    if ex.status:
        response = {"status": ex.status, "headers": _headers_dict(ex.response_headers)}
    return {
        "request": {"method": ex.method, "path": ex.path, "query": _query_dict(ex.query),
                    "headers": _headers_dict(ex.request_headers), "client": ex.client},
        "response": response,
        "timing": {"duration_ms": round(ex.duration * 1000.0, 3) if ex.t_end else None,
                   "upstream_ms": round(ex.upstream_latency * 1000.0, 3) if ex.t_response else None},
        "route": ex.route,
        # Why the proxy answered or the exchange failed (upstream_connect, upstream_timeout,
        # client_closed...): null when the app answered.
        "error": ex.error,
        "replied_by": replied_by(ex),
    }


def replied_by(ex: Exchange) -> str | None:
    """Who made the response the client gets: 'app', 'sidecar' (a rule's or hook's reply, or the
    sidecar's own 502/504/4xx), None while there is none. A status with no response head time is the
    sidecar's own error answer offered to the response phase before it is sent."""
    if not ex.status:
        return None
    return "sidecar" if ex.replaced or not ex.t_response else "app"


_CONTEXT_KEEPING = {"and_expression", "or_expression", "not_expression", "comparator",
                    "function_expression", "multi_select_list", "multi_select_dict", "key_val_pair",
                    "current"}


def root_fields(node: dict) -> set[str]:
    """Names a JMESPath AST reads from the top of the view (e.g. {'request', 'response'})."""
    out: set[str] = set()
    _root_fields(node, out)
    return out


def _root_fields(node: dict, out: set[str]) -> None:
    t = node.get("type")
    children = node.get("children") or []
    if t == "field":
        out.add(node["value"])
    elif t in ("subexpression", "pipe", "index_expression", "projection", "value_projection",
               "flatten", "filter_projection"):
        # Only the left-most child is evaluated against the view itself; the rest against its result.
        if children:
            _root_fields(children[0], out)
    elif t in _CONTEXT_KEEPING:
        for c in children:
            if isinstance(c, dict):
                _root_fields(c, out)
