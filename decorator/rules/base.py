"""Shared pydantic building blocks of the rules language: the strict model base, durations, template strings.

Both rules.models and every action's config model build on these, so an action module never
imports rules.models (which imports the action registry). The plain helpers live in rules.values
(re-exported here). Must not import proxy, actions or telemetry.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from decorator.units import DURATION_PATTERN
from decorator.rules.values import (  # noqa: F401 - re-exported: the names action authors know
    FRAMING_HEADERS,
    TEMPLATE_FIELDS,
    Template,
    as_list,
    check_template,
    escape_for,
    header_safe,
    html_escape,
    json_escape,
    parse_seconds,
)


class Strict(BaseModel):
    """Base of every rules model: unknown keys are errors (a typo must never be a silent skip)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False,
                              validate_default=False, coerce_numbers_to_str=True)


Duration = Annotated[
    float,
    BeforeValidator(parse_seconds, json_schema_input_type=(
        Annotated[float, Field(ge=0)]
        | Annotated[str, Field(pattern=DURATION_PATTERN)])),
]
"""Seconds; written as a number or a string with a unit: 500ms, 60s, 2m, 1h."""


TemplateStr = Annotated[str, BeforeValidator(lambda v: check_template(v) if isinstance(v, str) else v)]
"""A string that may hold {status} {path} {method} {request_id} {rule} {time} {route}."""
