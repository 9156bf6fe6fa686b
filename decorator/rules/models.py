"""The rules language as pydantic v2 models: the single source of truth for validation and schema.json.

Owns matchers, the rule (one optional field per registered action), the document (vars, include,
rules, tests) and pack test cases. Must not import proxy internals, compile or load.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, create_model, field_validator, model_validator

from decorator.actions.registry import ACTIONS, config_model, load_plugins
from decorator.rules.base import Strict, as_list
from decorator.rules.match import VIEW_KEYS, glob_problem, root_fields
from decorator.rules.values import status_codes  # noqa: F401 - re-exported

_TOKEN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
_STATUS_PATTERN = r"^\s*([1-5][0-9xX]{2}|[1-5][0-9]{2}\s*-\s*[1-5][0-9]{2})\s*$"


# -- status ------------------------------------------------------------------------------------
def parse_status(v: Any) -> str:
    """404 -> '404'; '5xx' -> '5xx'; '500-599' -> '500-599'; ValueError otherwise."""
    expected = "expected a status such as 404, a class such as 5xx or a range such as 500-599"
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(f"{expected}, found {v!r}")
    s = str(v).strip().lower()
    if re.fullmatch(r"[1-5]xx", s):
        return s
    m = re.fullmatch(r"(\d{3})\s*-\s*(\d{3})", s)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if not (100 <= lo <= hi <= 599):
            raise ValueError(f"status range {s!r} must go from low to high within 100-599")
        return f"{lo}-{hi}"
    if re.fullmatch(r"\d{3}", s) and 100 <= int(s) <= 599:
        return s
    raise ValueError(f"{expected}, found {v!r}")


_StatusInput = Annotated[int, Field(ge=100, le=599)] | Annotated[str, Field(pattern=_STATUS_PATTERN)]
StatusItem = Annotated[str, BeforeValidator(parse_status, json_schema_input_type=_StatusInput)]
StatusList = Annotated[list[StatusItem], BeforeValidator(
    as_list, json_schema_input_type=_StatusInput | Annotated[list[_StatusInput], Field(min_length=1)]),
    Field(min_length=1)]


# -- method ------------------------------------------------------------------------------------
def _method(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z]+", v.strip()):
        raise ValueError(f"expected an HTTP method such as GET, found {_found(v)}")
    return v.strip().upper()


def _found(v: Any) -> str:
    """A wrong value as the loader shows it: 42, true, 'text', a mapping."""
    if isinstance(v, (dict, list)):
        return "a mapping" if isinstance(v, dict) else "a list"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


_MethodInput = Annotated[str, Field(pattern=r"^[A-Za-z]+$")]
Method = Annotated[str, BeforeValidator(_method, json_schema_input_type=_MethodInput)]
MethodList = Annotated[list[Method], BeforeValidator(
    as_list, json_schema_input_type=_MethodInput | Annotated[list[_MethodInput], Field(min_length=1)]),
    Field(min_length=1)]


# -- path, regex, JMESPath -----------------------------------------------------------------------
def _glob(v: str) -> str:
    problem = glob_problem(v)
    if problem:
        raise ValueError(problem)
    return v


class PositionedError(ValueError):
    """A value error that knows the character of the value it is about (the loader points there)."""

    def __init__(self, message: str, pos: int | None) -> None:
        super().__init__(message)
        self.pos = pos


def _regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        raise PositionedError(f"bad regular expression {v!r}: {e.msg} at position {e.pos}", e.pos) from None
    problem = backtracking_problem(v)
    if problem:
        raise ValueError(f"regular expression {v!r} {problem}: a request could make matching take "
                         "exponential time (catastrophic backtracking); repeat one unambiguous item instead, "
                         "e.g. (a+)+ -> a+")
    return v


_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}


def backtracking_problem(pattern: str) -> str | None:
    """Why `pattern` may backtrack exponentially, or None: a repeated group (at most count > 1)
    that itself holds a repeat of more than one (`(a+)+`, `(a*b?)*`) or an alternation
    (`(a|ab)*`). Python's re has no time limit, so such patterns are refused when rules load.
    Polynomial cases (`(\\w+)/(\\w+)z` on a long path) are bounded by the head size limit instead."""
    import re._parser as sre  # the stdlib parser re itself uses: the structure, not a guess from text

    def inner_risk(items: Any) -> str | None:
        for op, av in items:
            name = str(op)
            if name in _REPEATS:
                lo, hi, sub = av
                if hi > 1:
                    return "repeats a repeat"
                found = inner_risk(sub)
                if found:
                    return found
            elif name == "BRANCH":
                if len(av[1]) > 1:
                    return "repeats an alternation"
            elif name == "SUBPATTERN":
                found = inner_risk(av[-1])
                if found:
                    return found
            elif name in ("ASSERT", "ASSERT_NOT"):
                found = inner_risk(av[1])
                if found:
                    return found
        return None

    def walk(items: Any) -> str | None:
        for op, av in items:
            name = str(op)
            if name in _REPEATS:
                lo, hi, sub = av
                if hi > 1 and name != "POSSESSIVE_REPEAT":
                    found = inner_risk(sub)
                    if found:
                        return found
                found = walk(sub)
            elif name == "SUBPATTERN":
                found = walk(av[-1])
            elif name == "BRANCH":
                found = next((f for b in av[1] if (f := walk(b))), None)
            elif name in ("ASSERT", "ASSERT_NOT"):
                found = walk(av[1])
            else:
                found = None
            if found:
                return found
        return None

    return walk(sre.parse(pattern))


def _jmespath(v: str) -> str:
    try:
        parsed = jmespath.compile(v)
    except JMESPathError as e:
        where = getattr(e, "lex_position", None)
        detail = getattr(e, "message", None) or getattr(e, "msg", None) or str(e)
        at = f" at position {where}" if where is not None else ""
        raise PositionedError(f"bad JMESPath expression {v!r}: {detail}{at}", where) from None
    for name in sorted(root_fields(parsed.parsed)):
        if name not in VIEW_KEYS:
            close = difflib.get_close_matches(name, VIEW_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            if name in ("null", "true", "false"):
                hint = f" (a JMESPath literal needs backticks: `{name}`)"
            raise ValueError(f"unknown field '{name}' in JMESPath expression {v!r}{hint}; the exchange "
                             f"view has {', '.join(VIEW_KEYS)}")
    return v


PathGlob = Annotated[str, AfterValidator(_glob)]
Regex = Annotated[str, AfterValidator(_regex)]
JMESPath = Annotated[str, AfterValidator(_jmespath)]
HeaderName = Annotated[str, Field(pattern=_TOKEN)]


# -- headers -----------------------------------------------------------------------------------
class HeaderMatch(Strict):
    """One header test; give exactly one of present, equals, regex. Shorthands: `true`/`false`
    (present/absent) and a plain string (equals)."""

    present: bool | None = Field(None, description="true: the header is there; false: it is not.")
    equals: str | None = Field(None, description="Some value of the header is exactly this.")
    regex: Regex | None = Field(None, description="Some value of the header contains a match (re.search).")

    @model_validator(mode="after")
    def _exactly_one(self) -> HeaderMatch:
        given = [k for k in ("present", "equals", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of present, equals, regex"
                             + (f"; found {', '.join(given)}" if given else ""))
        return self


def _header_shorthand(v: Any) -> Any:
    if isinstance(v, bool):
        return {"present": v}
    if isinstance(v, str):
        return {"equals": v}
    if isinstance(v, (int, float)):  # header values are text: "5", as schema.json says
        raise ValueError(f"expected true, false, a string or {{present|equals|regex}}, found {v!r}")
    return v


HeaderMatcher = Annotated[HeaderMatch, BeforeValidator(
    _header_shorthand, json_schema_input_type=bool | str | HeaderMatch)]


# -- match -------------------------------------------------------------------------------------
class Match(Strict):
    """When a rule applies. Every given condition must hold; an empty or absent match applies to
    every exchange."""

    status: StatusList | None = Field(None, description=(
        "Response status: 404, a list [404, 410], a class 5xx or a range 500-599 (or a list of "
        "those). Makes the rule run on the response."))
    method: MethodList | None = Field(None, description="Request method or list of methods.")
    path: PathGlob | None = Field(None, description=(
        "Path glob: * within a segment, ** across segments, {name} one segment (a route template "
        "that also names the endpoint in telemetry)."))
    path_regex: Regex | None = Field(None, description="Regular expression searched in the path.")
    headers: dict[HeaderName, HeaderMatcher] | None = Field(None, description=(
        "Request headers: name -> true (present), false (absent), \"text\" (equals) or "
        "{present|equals|regex}."))
    response_headers: dict[HeaderName, HeaderMatcher] | None = Field(None, description=(
        "Response headers, as for `headers`. Makes the rule run on the response."))
    when: JMESPath | None = Field(None, description=(
        "JMESPath expression over the exchange view {request: {method, path, query, headers, client}, "
        "response: {status, headers}, timing: {duration_ms, upstream_ms}, route, error, "
        "replied_by (sidecar|app)}; the rule applies when it is truthy."))

    def needs_response(self) -> bool:
        if self.status is not None or self.response_headers is not None:
            return True
        if self.when is not None:
            read = root_fields(jmespath.compile(self.when).parsed)
            return bool(read & {"response", "timing", "error", "replied_by"})
        return False


# -- rule --------------------------------------------------------------------------------------
Mode = Literal["enforce", "shadow"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"


class RuleBase(Strict):
    name: str = Field(pattern=_NAME, max_length=100, description=(
        "Unique name; used in logs, metrics and notify events."))
    description: str | None = Field(None, description="Free text for people.")
    enabled: bool = Field(True, description=(
        "false switches the rule off (e.g. `enabled: ${MAINTENANCE:-false}`)."))
    match: Match = Field(default_factory=Match, description="Conditions; absent = every exchange.")
    mode: Mode | None = Field(None, description=(
        "enforce: the actions act. shadow: conditions are evaluated and what the actions would do is "
        "counted (decorator_rule_shadow_hits_total), logged and shown in /status, but nothing is "
        "applied (observe-only actions such as `record` still run). Default: the file's `mode:`, "
        "else enforce."))

    @model_validator(mode="after")
    def _has_action(self) -> RuleBase:
        if not any(getattr(self, name, None) is not None for name in ACTIONS):
            raise ValueError(f"rule {self.name!r} has no action; expected at least one of "
                             + ", ".join(ACTIONS))
        return self

    def actions(self) -> list[tuple[str, Any]]:
        """(action name, config) for every action the rule has, in registry order."""
        return [(n, c) for n in ACTIONS if (c := getattr(self, n, None)) is not None]


load_plugins()  # added actions become fields of Rule (and keys of schema.json)
Rule = create_model(
    "Rule",
    __base__=RuleBase,
    __doc__="One rule: a name, an optional match and one or more actions.",
    **{name: (config_model(cls) | None, Field(None, description=cls.summary)) for name, cls in ACTIONS.items()},
)


# -- pack tests ----------------------------------------------------------------------------------
class TestRequest(Strict):
    """The request of a test case. Shorthand: "GET /path?query"."""

    __test__ = False  # not a pytest class

    method: Method = Field("GET", description="Request method.")
    path: str = Field(pattern=r"^/", description="Path and optional ?query.")
    headers: dict[HeaderName, str] = Field(default_factory=dict, description="Request headers.")


def _request_shorthand(v: Any) -> Any:
    if isinstance(v, str):
        method, _, path = v.strip().partition(" ")
        if not path:
            raise ValueError(f'expected "METHOD /path", found {v!r}')
        return {"method": method, "path": path.strip()}
    return v


class FakeUpstream(Strict):
    """What the app answers in a test case (when no rule answers before it)."""

    status: int = Field(200, ge=100, le=599)
    headers: dict[HeaderName, str] = Field(default_factory=dict)
    body: str = ""


class Expect(Strict):
    """What the client must get and which rules must (not) have acted."""

    status: int | None = Field(None, description="Status the client gets.")
    headers: dict[HeaderName, str | None] = Field(default_factory=dict, description=(
        "Response headers: a value to equal, or null for 'must be absent'."))
    body: str | None = Field(None, description="Exact body.")
    body_contains: str | None = Field(None, description="Text the body contains.")
    route: str | None = Field(None, description="Endpoint name (route template) set by the rules.")
    upstream_headers: dict[HeaderName, str | None] = Field(default_factory=dict, description=(
        "Request headers the app receives (after request edits); null = absent."))
    upstream_target: str | None = Field(None, description=(
        "The path and ?query the app receives (after rewrites)."))
    fired: list[str] = Field(default_factory=list, description="Rules that must have run an action.")
    not_fired: list[str] = Field(default_factory=list, description="Rules that must not have run.")
    notify: list[str] | None = Field(None, description=(
        "Exactly the rules that sent a notify event (over all repeats); [] = none."))
    record: list[str] | None = Field(None, description="Exactly the rules that recorded.")
    mirror: list[str] | None = Field(None, description=(
        "Exactly the rules that sent a mirror copy (over all repeats); [] = none."))
    retries: int | None = Field(None, ge=0, description=(
        "Times the request was sent to the app again by retry rules (over all repeats)."))
    shadow: list[str] | None = Field(None, description=(
        "Exactly the shadow-mode rules that would have acted (over all repeats); [] = none. "
        "An entry `rule:action` also names the action."))


def shadow_ref(entry: str) -> tuple[str, str | None]:
    """An `expect.shadow` entry -> (rule, action or None): "rule" or "rule:action" (rule names may
    hold ':' themselves; the part after the last one is an action only when it names one)."""
    rule, sep, action = entry.rpartition(":")
    if sep and rule and action in ACTIONS:
        return rule, action
    return entry, None


class TestCase(Strict):
    """A pack test: a request, an optional fake app response, the expected outcome. Run by
    `decorator test` without any network."""

    __test__ = False  # not a pytest class

    name: str = Field(description="Shown in the report.")
    request: Annotated[TestRequest, BeforeValidator(_request_shorthand, json_schema_input_type=(
        Annotated[str, Field(pattern=r"^[A-Za-z]+ /")] | TestRequest))]
    upstream: FakeUpstream = Field(default_factory=FakeUpstream, description="Default: 200, empty body.")
    forward_auth: FakeUpstream | None = Field(None, description=(
        "What the forward_auth service answers in this case. Without it the service counts as "
        "unreachable (503, or the request goes on with `on_error: allow`)."))
    env: dict[str, str] = Field(default_factory=dict, description=(
        "Variables for ${...} in the rules while this case runs (the rules are reloaded with them)."))
    repeat: int = Field(1, ge=1, le=1000, description="Send the request this many times (thresholds).")
    expect: Expect


# -- document ----------------------------------------------------------------------------------
def _scalar(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)):
        return v
    raise ValueError(f"expected a string, number or true/false, found {_found(v)}")


Scalar = Annotated[Any, BeforeValidator(_scalar, json_schema_input_type=str | int | float | bool)]
VarName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Include(Strict):
    """Another rules file or pack directory (`path:`), or a pack by name (`pack:`), loaded before
    this document's own rules."""

    path: str | None = Field(None, description="File or directory, relative to this file.")
    vars: dict[VarName, Scalar] = Field(default_factory=dict, description=(
        "With `path:`: values for the included file's ${NAME} references (win over its own vars)."))
    pack: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]*$", description=(
        "A pack by name, found beside this file, in DECORATOR_PACK_PATH, among the shipped packs or "
        "in an installed distribution (`decorator pack list`)."))
    version: str | None = Field(None, description=(
        "With `pack:`: the versions accepted, as a range (^1.2, ~1.2.3, >=1.0, 1.x)."))
    with_: dict[str, Scalar] = Field(default_factory=dict, alias="with", description=(
        "With `pack:`: values of the pack's params (checked against its pack.yaml)."))

    @field_validator("version")
    @classmethod
    def _range(cls, v: str | None) -> str | None:
        if v is not None:
            from decorator.packs.manifest import parse_range
            parse_range(v)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Include:
        if (self.path is None) == (self.pack is None):
            raise ValueError("give exactly one of path, pack")
        if self.path is not None and (self.version is not None or self.with_):
            raise ValueError("version and with go with pack:, not path: (a path include takes vars)")
        if self.pack is not None and self.vars:
            raise ValueError("a pack include takes its params in with:, not vars:")
        return self


def _include_shorthand(v: Any) -> Any:
    return {"path": v} if isinstance(v, str) else v


class RulesDocument(Strict):
    """A rules file: `rules:` to apply, plus optional `vars:`, `include:` and pack `tests:`.
    Top-level keys starting with `x-` are ignored: a place for YAML anchors to reuse."""

    model_config = ConfigDict(json_schema_extra={"patternProperties": {"^x-": {}}})

    @model_validator(mode="before")
    @classmethod
    def _extensions(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(isinstance(k, str) and k.startswith("x-") for k in data):
            return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
        return data

    vars: dict[VarName, Scalar] = Field(default_factory=dict, description=(
        "Values for ${NAME} in this file (looked up before the environment)."))
    mode: Mode | None = Field(None, description=(
        "Default `mode` of this file's rules (enforce or shadow); a rule's own `mode` wins. "
        "Included files keep their own."))
    include: list[Annotated[Include, BeforeValidator(_include_shorthand, json_schema_input_type=(
        str | Include))]] = Field(default_factory=list, description="Files or packs to load first.")
    rules: list[Rule] = Field(default_factory=list, description="Rules, applied in order.")  # type: ignore[valid-type]
    tests: list[TestCase] = Field(default_factory=list, description="Pack test cases for `decorator test`.")

    @field_validator("vars", "include", "rules", "tests", mode="before")
    @classmethod
    def _empty(cls, v: Any, info: Any) -> Any:
        # `rules:` with everything commented out is an empty list, not a type error.
        if v is None:
            return {} if info.field_name == "vars" else []
        return v

