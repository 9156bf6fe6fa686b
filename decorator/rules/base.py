"""Shared pydantic building blocks of the rules language: the strict model base, durations, template strings.

Both rules.models and every action's config model build on these, so an action module never
imports rules.models (which imports the action registry). The plain helpers live in rules.values
(re-exported here). Must not import proxy, actions or telemetry.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, \
    field_validator

from decorator.units import DURATION_PATTERN
from decorator.rules.values import (  # noqa: F401 - re-exported: the names action authors know
    FRAMING_HEADERS,
    TEMPLATE_FIELDS,
    Template,
    VarText,
    as_list,
    check_template,
    escape_for,
    header_safe,
    html_escape,
    json_escape,
    parse_seconds,
)


class Strict(BaseModel):
    """Base of every rules model: unknown keys are errors (a typo must never be a silent skip), and
    types are strict (`name: 7` is an error, not "7"; `repeat: "5"` is not 5). The one conversion
    is the text a `${...}` produced, which becomes the number or true/false its field takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False,
                              validate_default=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _variables(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return from_variables(field.annotation, v) if field is not None else v


Duration = Annotated[
    float,
    BeforeValidator(parse_seconds, json_schema_input_type=(
        Annotated[float, Field(ge=0)]
        | Annotated[str, Field(pattern=DURATION_PATTERN)])),
]
"""Seconds; written as a number or a string with a unit: 500ms, 60s, 2m, 1h."""


TemplateStr = Annotated[str, BeforeValidator(lambda v: check_template(v) if isinstance(v, str) else v)]
"""A string that may hold {status} {path} {method} {request_id} {rule} {time} {route}."""


_LAX = {kind: TypeAdapter(kind) for kind in (bool, int, float)}


def from_variables(tp: Any, v: Any) -> Any:
    """`v` with each VarText in it (itself, or an item of a list or dict) turned into the bool, int
    or float that type `tp` takes there, parsed as pydantic's lax mode does ("true", "yes", "503", "0.5").
    Text a field takes as text (or that does not parse) is left for the field's own validation,
    whose error then names what was expected."""
    if isinstance(v, VarText):
        kinds = _flatten(tp)
        if str in kinds:
            return v
        for kind in kinds:
            if kind in _LAX:
                try:
                    return _LAX[kind].validate_python(str(v))
                except ValidationError:
                    pass
        return v
    if isinstance(v, list):
        item = next((typing.get_args(t)[0] for t in _flatten(tp)
                     if typing.get_origin(t) is list and typing.get_args(t)), None)
        if item is not None and any(isinstance(x, VarText) for x in v):
            return [from_variables(item, x) for x in v]
    elif isinstance(v, dict):
        value = next((typing.get_args(t)[1] for t in _flatten(tp)
                      if typing.get_origin(t) is dict and typing.get_args(t)), None)
        if value is not None and any(isinstance(x, VarText) for x in v.values()):
            return {k: from_variables(value, x) for k, x in v.items()}
    return v


def _flatten(tp: Any) -> list:
    """The alternatives of a type, through Annotated, unions and Optional."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _flatten(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [t for a in typing.get_args(tp) for t in _flatten(a)]
    return [tp]
