"""schema.json as editors and CI see it: every shipped rules file validates with a third-party JSON
Schema validator (`jsonschema`, as check-jsonschema and yaml-language-server use), ${...} included;
wrong values still fail; and the schema's idea of a variable agrees with the loader's."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from decorator.errors import RulesInvalid
from decorator.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
# A pack's manifest (pack.yaml) is not a rules document: tests/packs checks it against pack.schema.json.
SHIPPED = sorted(p for d in ("rules", "examples", "bench/rules") for p in (ROOT / d).rglob("*.y*ml")
                 if p.name not in ("pack.yaml", "pack.yml"))


def _documents(path: Path) -> list[tuple[str, object]]:
    """(name, raw document) for each rules document in a file: the file itself, or each *.yaml entry
    of a ConfigMap manifest; other Kubernetes manifests hold no rules. Raw: ${...} unsubstituted,
    the way an editor sees the file (pack *.tests.yaml files are rules documents with `tests:`)."""
    out = []
    for doc in list(YAML(typ="safe").load_all(path.read_text())):
        if isinstance(doc, dict) and "kind" in doc:
            if doc["kind"] == "ConfigMap":
                out += [(f"{path.relative_to(ROOT)}:{k}", YAML(typ="safe").load(v))
                        for k, v in (doc.get("data") or {}).items() if k.endswith((".yaml", ".yml"))]
            continue
        out.append((str(path.relative_to(ROOT)), doc))
    return out


SHIPPED_DOCS = [d for p in SHIPPED for d in _documents(p)]


def test_the_shipped_files_are_all_found():
    names = {n for n, _ in SHIPPED_DOCS}
    assert len(names) >= 15, names  # a glob gone wrong must not make the test below vacuous
    assert {"rules/alert-5xx/alert-5xx.yaml", "rules/alert-5xx/alert-5xx.tests.yaml",
            "examples/kubernetes/rules-configmap.yaml:rules.yaml", "bench/rules/card.yaml"} <= names


@pytest.mark.parametrize(("name", "doc"), SHIPPED_DOCS, ids=[n for n, _ in SHIPPED_DOCS])
def test_every_shipped_rules_document_validates_against_schema_json(name, doc):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(doc)]
    assert errors == [], name


BASE = {"rules": [{"name": "alert", "match": {"status": "5xx"},
                   "notify": {"url": "${ALERT_URL}", "cooldown": "${ALERT_COOLDOWN:-5m}"}}]}


def _with(rule_edit: dict) -> dict:
    doc = json.loads(json.dumps(BASE))
    doc["rules"][0].update(rule_edit)
    return doc


@pytest.mark.parametrize("edit", [
    {"enabled": "${ALERT_5XX:-true}"},
    {"enabled": True},
    {"name": "alert-${ENV}"},
    {"match": {"status": ["${CODE}", 404], "method": "${METHOD:-GET}"}},
    {"notify": {"url": "http://h", "retries": "${N}", "cooldown": "${MINUTES}m", "timeout": 2.5}},
], ids=["enabled-var", "enabled-bool", "name-embedded", "status-method-vars", "int-duration-vars"])
def test_variables_and_natural_types_are_accepted(edit):
    assert list(VALIDATOR.iter_errors(_with(edit))) == []


@pytest.mark.parametrize(("edit", "where"), [
    ({"notfiy": {"url": "http://h"}}, ""),
    ({"notify": {"url": "http://h", "cooldown": "soon"}}, "notify/cooldown"),
    ({"enabled": "maybe"}, "enabled"),
    ({"enabled": "$${ALERT_5XX}"}, "enabled"),  # the escape for a literal ${ is not a variable
    ({"enabled": "${ALERT 5XX}"}, "enabled"),
    ({"name": 7}, "name"),
    ({"notify": {"url": "http://h", "retries": "3"}}, "notify/retries"),
], ids=["typo-key", "cooldown-soon", "enabled-maybe", "escaped", "bad-name", "name-int", "retries-text"])
def test_wrong_values_still_fail(edit, where):
    best = jsonschema.exceptions.best_match(VALIDATOR.iter_errors(_with(edit)))
    assert best is not None, edit
    assert "/".join(map(str, best.absolute_path)) == f"rules/0/{where}".rstrip("/"), best.message


@pytest.mark.parametrize(("text", "env", "is_variable"), [
    ("${T}", {"T": "true"}, True),
    ("${T:-true}", {}, True),
    ("${A}${B}", {"A": "tr", "B": "ue"}, True),
    ("$${T}", {"T": "true"}, False),
    ("$$${T}", {"T": "true"}, False),
    ("${T", {"T": "true"}, False),
    ("${1T}", {"1T": "true"}, False),
])
def test_the_schema_and_the_loader_agree_on_what_a_variable_is(tmp_path, text, env, is_variable):
    """`enabled: <text>` loads exactly when the schema's Variable matches it (each variable here
    yields "true" when it is one)."""
    doc = {"rules": [{"name": "r", "enabled": text, "record": {}}]}
    f = tmp_path / "r.yaml"
    f.write_text(json.dumps(doc))
    try:
        load_rules([str(f)], env=env)
        loads = True
    except RulesInvalid:
        loads = False
    assert loads is is_variable
    assert (not list(VALIDATOR.iter_errors(doc))) is is_variable
