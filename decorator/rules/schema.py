"""schema.json, generated from the pydantic models (never hand-edited): `decorator schema > schema.json`.

Owns the JSON Schema rendering only. Imports rules.models; nothing from proxy or actions directly.
"""

from __future__ import annotations

import json

from pydantic.json_schema import GenerateJsonSchema

from decorator.rules.models import RulesDocument

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:decorator-sidecar:rules:v1"


class RulesSchema(GenerateJsonSchema):
    """Adds $schema/$id and a title an editor can show; everything else comes from the models."""

    def generate(self, schema, mode="validation"):
        out = super().generate(schema, mode=mode)
        out["$schema"] = SCHEMA_DIALECT
        out["$id"] = SCHEMA_ID
        out["title"] = "decorator rules"
        return out


def render() -> str:
    """The schema as deterministic JSON text (sorted keys, trailing newline)."""
    schema = RulesDocument.model_json_schema(schema_generator=RulesSchema, mode="validation")
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
