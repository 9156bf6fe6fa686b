"""schema.json, generated from the pydantic models (never hand-edited): `decorator schema > schema.json`.

Owns the JSON Schema rendering only. Imports rules.models; nothing from proxy or actions directly.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from decorator.rules.models import RulesDocument
from decorator.rules.values import VARIABLE_PATTERN

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:decorator-sidecar:rules:v1"

VARIABLE = "Variable"
_VARIABLE_REF = {"$ref": f"#/$defs/{VARIABLE}"}
_VARIABLE_DEF = {
    "type": "string",
    "pattern": VARIABLE_PATTERN,
    "description": ("Holds ${NAME} or ${NAME:-default}, replaced when the rules load (from vars, then the "
                    "environment); the result must then be what the field takes."),
}
# What describes a value rather than constrains it: stays on the outside when a Variable is added.
_ANNOTATIONS = ("title", "description", "default", "examples", "deprecated")
# Keys that hold subschemas of values (never of mapping keys: `propertyNames` is left alone, since
# the loader substitutes values only).
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs")
_SUBSCHEMAS = ("items", "additionalProperties", "prefixItems", "anyOf", "oneOf", "allOf")


class RulesSchema(GenerateJsonSchema):
    """Adds $schema/$id and a title an editor can show, and lets a `${...}` reference stand in for
    any value the loader substitutes in (wherever a plain string would not already do); everything
    else comes from the models."""

    def generate(self, schema, mode="validation"):
        out = with_variables(super().generate(schema, mode=mode))
        out.setdefault("$defs", {})[VARIABLE] = _VARIABLE_DEF
        out["$schema"] = SCHEMA_DIALECT
        out["$id"] = SCHEMA_ID
        out["title"] = "decorator rules"
        return out


def with_variables(node: Any, wrap: bool = True) -> Any:
    """A copy of a JSON schema in which every scalar that only some strings (or no string) satisfy
    also accepts a string holding a ${...} reference. A union gets one Variable branch of its own
    (`wrap=False` for its branches) unless a plain string is already one of them."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: with_variables(v) for k, v in out[key].items()}
    for key in _SUBSCHEMAS:
        sub = out.get(key)
        if isinstance(sub, list):
            out[key] = [with_variables(s, wrap=key != "anyOf") for s in sub]
        elif isinstance(sub, dict):
            out[key] = with_variables(sub)
    if "anyOf" in out:
        branches = out["anyOf"]
        if any(_needs_variable(b) for b in branches) and not any(_any_string(b) for b in branches):
            out["anyOf"] = [*branches, _VARIABLE_REF]
    elif wrap and _needs_variable(out):
        inner = {k: v for k, v in out.items() if k not in _ANNOTATIONS}
        outer = {k: v for k, v in out.items() if k in _ANNOTATIONS}
        return {**outer, "anyOf": [inner, _VARIABLE_REF]}
    return out


def _needs_variable(s: dict) -> bool:
    if "enum" in s or "const" in s:
        return True
    kind = s.get("type")
    if kind in ("integer", "number", "boolean"):
        return True
    return kind == "string" and any(k in s for k in ("pattern", "format", "minLength", "maxLength"))


def _any_string(s: dict) -> bool:
    return s.get("type") == "string" and not _needs_variable(s)


def render() -> str:
    """The schema as deterministic JSON text (sorted keys, trailing newline)."""
    schema = RulesDocument.model_json_schema(schema_generator=RulesSchema, mode="validation")
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class PackSchema(GenerateJsonSchema):
    """pack.schema.json: a pack's manifest (no ${...} there: a manifest is read as written)."""

    def generate(self, schema, mode="validation"):
        out = super().generate(schema, mode=mode)
        out["$schema"] = SCHEMA_DIALECT
        out["$id"] = PACK_SCHEMA_ID
        out["title"] = "decorator rule pack manifest (pack.yaml)"
        return out


PACK_SCHEMA_ID = "urn:decorator-sidecar:pack:v1"


def render_pack() -> str:
    """pack.schema.json as deterministic JSON text: `decorator schema --pack > pack.schema.json`."""
    from decorator.packs.manifest import PackManifest

    schema = PackManifest.model_json_schema(schema_generator=PackSchema, mode="validation")
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
