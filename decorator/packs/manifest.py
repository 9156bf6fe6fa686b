"""A pack's `pack.yaml` as pydantic models (the source of pack.schema.json), and its typed params.

Owns the manifest models, version ranges (semantic_version's npm-style specs) and turning a param's
given value into the text its `${VAR}` stands for. Must not import rules.load, compile or proxy.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

import semantic_version
from pydantic import Field, field_validator, model_validator

from decorator.rules.base import Strict
from decorator.units import duration_seconds

MANIFEST = "pack.yaml"
MANIFESTS = ("pack.yaml", "pack.yml")
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
ParamType = Literal["string", "boolean", "integer", "number", "duration"]


def parse_range(text: str) -> semantic_version.NpmSpec:
    """'^1.2', '>=0.2', '1.x', '~1.2.3', '1.2.0 - 1.4' (npm's grammar); ValueError otherwise."""
    try:
        return semantic_version.NpmSpec(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a version range such as ^1.2, ~1.2.3, >=0.2 or 1.x, found {text!r}") from None


def parse_version(text: str) -> semantic_version.Version:
    try:
        return semantic_version.Version(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a semantic version such as 1.2.0, found {text!r}") from None


def _range(v: Any) -> Any:
    if isinstance(v, str):
        parse_range(v)
    return v


class Param(Strict):
    """One parameter: the `${VAR}` it sets in the pack's rules, typed and documented."""

    type: ParamType = Field("string", description=(
        "string, boolean (true/false), integer, number or duration (500ms, 60s, 2m, 1h)."))
    default: str | int | float | bool | None = Field(None, description=(
        "Used when neither `with:` nor the environment gives a value; no default (and not "
        "`required: false`) makes the param required."))
    enum: list[str | int | float | bool] | None = Field(None, description="The only values allowed.")
    description: str | None = Field(None, description="What it does (shown by `decorator pack show`).")
    required: bool | None = Field(None, description=(
        "true: `with:` (or the environment) must give it. Default: required when there is no default."))
    var: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description=(
        "The ${NAME} this param sets in the pack's rules, also read from the environment when "
        "`with:` does not give it. Default: the param's own name."))

    @model_validator(mode="after")
    def _default_fits(self) -> Param:
        if self.default is not None:
            check_value(self, self.default)  # ValueError: the manifest's own default is wrong
        return self

    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None


class PackManifest(Strict):
    """`pack.yaml`: what a rule pack is, which decorator it works with and what it takes."""

    name: str = Field(pattern=NAME_PATTERN, max_length=63, description=(
        "The pack's name: what `include: [{pack: NAME}]` asks for and the prefix of its rule names "
        "(`NAME/rule`)."))
    version: str = Field(description="Semantic version of the pack: 1.2.0.")
    description: str | None = Field(None, description="One line: what the pack does.")
    requires: str | None = Field(None, description=(
        "Decorator versions the pack works with, as a range: \">=0.1\", \"^1.0\"."))
    params: dict[str, Param] = Field(default_factory=dict, description=(
        "Typed parameters, set by an include's `with:`; each sets a ${VAR} in the pack's rules."))

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        parse_version(v)
        return v

    @field_validator("requires")
    @classmethod
    def _requires(cls, v: str | None) -> str | None:
        return _range(v)

    @field_validator("params", mode="before")
    @classmethod
    def _none(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("params")
    @classmethod
    def _param_names(cls, v: dict[str, Param]) -> dict[str, Param]:
        for name in v:
            if not name.replace("_", "a").replace("-", "a").isalnum() or not name[:1].isalpha():
                raise ValueError(f"bad param name {name!r}: letters, digits, _ and -, starting with a letter")
        return v

    def semver(self) -> semantic_version.Version:
        return parse_version(self.version)

    def var_of(self, param: str) -> str:
        p = self.params[param]
        return p.var or param


def check_value(param: Param, value: Any) -> str:
    """The text `value` stands for in the pack's rules; ValueError saying what was expected."""
    found = show_value(value)
    kind = param.type
    if isinstance(value, (dict, list)) or value is None:
        raise ValueError(f"expected {_EXPECTED[kind]}, found {found}")
    text: str
    if kind == "boolean":
        s = str(value).strip().lower() if not isinstance(value, bool) else ("true" if value else "false")
        if s not in ("true", "false"):
            raise ValueError(f"expected true or false, found {found}")
        text = s
    elif kind == "integer":
        if isinstance(value, bool) or not (isinstance(value, int) or str(value).strip().lstrip("-").isdigit()):
            raise ValueError(f"expected a whole number, found {found}")
        text = str(int(str(value).strip()))
    elif kind == "number":
        try:
            if isinstance(value, bool):
                raise ValueError
            float(str(value))
        except ValueError:
            raise ValueError(f"expected a number, found {found}") from None
        text = str(value).strip()
    elif kind == "duration":
        if isinstance(value, bool) or duration_seconds(str(value)) is None:
            raise ValueError(f"expected a duration such as 500ms, 60s, 2m or 1h, found {found}")
        text = str(value).strip()
    else:
        if isinstance(value, bool):
            raise ValueError(f"expected a string, found {found}")
        text = str(value)
    if param.enum is not None:
        allowed = [check_value_plain(param, e) for e in param.enum]
        if text not in allowed:
            close = difflib.get_close_matches(text, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"expected one of {', '.join(allowed)}, found {found}{hint}")
    return text


def check_value_plain(param: Param, value: Any) -> str:
    """An enum entry as text, checked against the type only."""
    return check_value(param.model_copy(update={"enum": None}), value)


_EXPECTED = {"string": "a string", "boolean": "true or false", "integer": "a whole number",
             "number": "a number", "duration": "a duration such as 500ms, 60s, 2m or 1h"}


def show_value(v: Any) -> str:
    """A YAML value as an error message names it ("found ..."): its kind for containers, long text cut."""
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        s = str(v)
        return repr(s if len(s) <= 60 else s[:57] + "...")
    return str(v)


def suggest(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
