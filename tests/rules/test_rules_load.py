"""Loading: the issue's example as written, env/vars/include, directories and packs, ConfigMaps,
the digest, and schema.json freshness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from decorator.rules import load_rules
from decorator.rules.schema import render
from tests.rules.helpers import errors_of

ROOT = Path(__file__).resolve().parents[2]

ISSUE_EXAMPLE = """\
# yaml-language-server: $schema=../schema.json
rules:
  - name: friendly-404
    match: { status: 404, path: "/**", method: [GET, HEAD] }
    respond: { file: pages/404.html, content_type: text/html }
  - name: timing
    record: { timing: true }               # every response
  - name: page-on-5xx
    match: { status: 5xx }
    notify:
      url: ${ALERT_URL}
      cooldown: 60s
"""


def test_issue_example_validates_as_written(write):
    write("pages/404.html", "<h1>not here</h1>")
    p = write("rules.yaml", ISSUE_EXAMPLE)
    rs = load_rules([p], env={"ALERT_URL": "http://alerts.local/hook"})
    assert [r.name for r in rs.rules] == ["friendly-404", "timing", "page-on-5xx"]
    r404, timing, page = rs.rules
    assert r404.match.status == ["404"] and r404.match.method == ["GET", "HEAD"]
    assert r404.respond.file == "pages/404.html" and r404.respond.content_type == "text/html"
    assert timing.record.fields() == frozenset({"timing"})
    assert page.notify.url == "http://alerts.local/hook" and page.notify.cooldown == 60.0
    assert rs.files == [p, str(Path(p).parent / "pages/404.html")]


def test_env_default_and_vars(write):
    p = write("r.yaml", """
        vars:
          code: 503
          who: ${WHO:-ops}
        rules:
          - name: a
            description: "costs $${price}"
            respond: {status: "${code}", body: "ask ${who} at ${HOST:-localhost}"}
        """)
    [rule] = load_rules([p], env={}).rules
    assert rule.respond.status == 503
    assert rule.respond.body == "ask ops at localhost"
    assert rule.description == "costs ${price}"
    [rule] = load_rules([p], env={"WHO": "alice", "HOST": "h"}).rules
    assert rule.respond.body == "ask alice at h"


def test_lone_reference_keeps_the_vars_type(write):
    p = write("r.yaml", """
        vars: {on: false}
        rules:
          - name: a
            enabled: ${on}
            record: {}
        """)
    [rule] = load_rules([p], env={}).rules
    assert rule.enabled is False


def test_include_pack_with_vars_comes_first(write, tmp_path):
    write("packs/alert/rules.yaml", """
        vars: {level: warn}
        rules:
          - name: alert
            match: {status: 5xx}
            notify: {url: "${URL}", message: "${level}"}
        """)
    write("packs/alert/README.md", "not yaml, not loaded")
    main = write("main.yaml", """
        include:
          - path: packs/alert
            vars: {URL: "http://x/hook"}
        rules:
          - name: own
            record: {}
        """)
    rs = load_rules([main], env={})
    assert [r.name for r in rs.rules] == ["alert", "own"]
    assert rs.rules[0].notify.url == "http://x/hook" and rs.rules[0].notify.message == "warn"


def test_directory_loads_yaml_in_name_order_and_pack_collections(write, tmp_path):
    write("d/b.yml", "rules: [{name: b, record: {}}]\n")
    write("d/a.yaml", "rules: [{name: a, record: {}}]\n")
    write("d/notes.txt", "ignored")
    assert [r.name for r in load_rules([str(tmp_path / "d")]).rules] == ["a", "b"]
    # a directory with no YAML of its own but pack subdirectories (the shipped rules/ layout)
    write("packs/one/rules.yaml", "rules: [{name: one, record: {}}]\n")
    write("packs/two/rules.yaml", "rules: [{name: two, record: {}}]\n")
    assert [r.name for r in load_rules([str(tmp_path / "packs")]).rules] == ["one", "two"]


def test_digest_covers_respond_files(write, tmp_path):
    write("page.html", "v1")
    p = write("r.yaml", "rules: [{name: a, respond: {file: page.html}}]\n")
    d1 = load_rules([p]).digest
    assert load_rules([p]).digest == d1
    write("page.html", "v2")
    rs = load_rules([p])
    assert rs.digest != d1
    assert rs.entries[0].prepared["respond"].body == b"v2"


CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: decorator-rules
data:
  404.html: |
    <h1>gone {path}</h1>
  rules.yaml: |
    rules:
      - name: friendly-404
        match: {status: 404}
        respond: {file: 404.html}
      - name: broken
        match: {status: 5xy}
        record: {}
"""


def test_configmap_errors_point_into_the_manifest(write):
    p = write("cm.yaml", CONFIGMAP)
    errs = errors_of(p)
    # line 14 of the manifest is "    match: {status: 5xy}" (block scalar content starts on line 9)
    assert errs == [(f"{p}:14:25: rules[1].match.status[0]: expected a status such as 404, a class such as "
                     "5xx or a range such as 500-599, found '5xy'")]


def test_configmap_valid_uses_its_own_data_files(write):
    p = write("cm.yaml", CONFIGMAP.replace("5xy", "5xx"))
    rs = load_rules([p])
    assert [r.name for r in rs.rules] == ["friendly-404", "broken"]
    assert rs.entries[0].prepared["respond"].body == b"<h1>gone {path}</h1>\n"


def test_configmap_yaml_syntax_error_line(write):
    p = write("cm.yaml", "kind: ConfigMap\ndata:\n  r.yaml: |\n    rules:\n      - name: [a\n")
    [err] = errors_of(p)
    assert err.startswith(f"{p}:6:") and "YAML syntax error" in err


def test_schema_is_fresh_and_has_id():
    on_disk = (ROOT / "schema.json").read_text()
    assert on_disk == render(), "schema.json is stale: run `decorator schema > schema.json`"
    schema = json.loads(on_disk)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"vars", "mode", "include", "rules", "tests"}
    rule = schema["$defs"]["Rule"]
    assert rule["additionalProperties"] is False
    assert {"respond", "record", "notify", "headers"} <= set(rule["properties"])


def test_schema_command_matches_render():
    out = subprocess.run([sys.executable, "-m", "decorator", "schema"], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={**os.environ})
    assert out.stdout == render()


def test_the_docs_example_is_the_issue_example_and_validates(write):
    doc = (ROOT / "docs" / "rules.md").read_text()
    first_yaml = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert first_yaml == ISSUE_EXAMPLE
    write("pages/404.html", "x")
    p = write("rules.yaml", first_yaml)
    assert len(load_rules([p], env={"ALERT_URL": "https://hooks.example/x"}).rules) == 3


def test_validate_a_configmap_manifest_via_the_cli(write):
    p = write("cm.yaml", CONFIGMAP)
    out = subprocess.run([sys.executable, "-m", "decorator", "validate", p], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=False)
    assert out.returncode == 1
    assert out.stdout.startswith(f"{p}:14:25: rules[1].match.status[0]: expected a status")


def test_the_docs_pack_test_example_runs_green(write, tmp_path):
    from decorator.rules.packtest import run_paths
    doc = (ROOT / "docs" / "rules.md").read_text()
    tests_block = doc.split("## Pack tests", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    write("pack/pages/404.html", "<h1>gone</h1>")
    write("pack/pages/maintenance.html", "back soon")
    write("pack/rules.yaml", ISSUE_EXAMPLE.replace("${ALERT_URL}", "${ALERT_URL:-http://127.0.0.1:9/}") + """\
  - name: maintenance
    enabled: ${MAINTENANCE:-false}
    respond: {status: 503, file: pages/maintenance.html, headers: {Retry-After: "600"}}
""")
    write("pack/tests.yaml", tests_block)
    lines: list[str] = []
    assert run_paths([str(tmp_path / "pack")], out=lines.append) == (3, 0, 0), lines


def test_x_keys_hold_anchors_for_reuse(write):
    p = write("r.yaml", """
        x-api: &api {path: "/api/**", method: [GET]}
        rules:
          - {name: a, match: *api, record: {}}
          - name: b
            match: {<<: *api, status: 5xx}
            record: {}
        """)
    a, b = load_rules([p]).rules
    assert a.match.path == b.match.path == "/api/**" and b.match.status == ["5xx"]


def test_schema_json_accepts_the_example_and_rejects_typos_like_an_editor_would():
    jsonschema = __import__("pytest").importorskip("jsonschema")
    from ruamel.yaml import YAML
    validator = jsonschema.Draft202012Validator(json.loads((ROOT / "schema.json").read_text()))
    doc = json.loads(json.dumps(YAML(typ="safe").load(ISSUE_EXAMPLE)))  # raw: ${ALERT_URL} unsubstituted
    assert list(validator.iter_errors(doc)) == []
    doc["x-shared"] = {"path": "/api/**"}
    doc["tests"] = [{"name": "t", "request": "GET /x", "expect": {"status": 404}}]
    assert list(validator.iter_errors(doc)) == []
    doc["rules"][0]["natch"] = {}
    doc["rules"][1]["match"] = {"status": "5xy"}
    doc["rules"][2]["notify"]["cooldwn"] = "1s"
    assert len(list(validator.iter_errors(doc))) == 3


def test_default_also_covers_an_empty_variable_and_numbers_become_text(tmp_path):
    """${X:-d} uses d when X is unset or empty (as the shell does); a number var fills a text field."""
    from decorator.rules import load_rules

    f = tmp_path / "r.yaml"
    f.write_text("vars: {RETRY: 1800}\nrules:\n  - name: r\n    respond:\n      status: 503\n"
                 "      headers: {Retry-After: \"${RETRY}\", X-Token: \"Bearer ${TOKEN:-none}\"}\n      body: down\n")
    rs = load_rules([str(f)], env={"TOKEN": ""})
    respond = rs.rules[0].respond
    assert respond.headers["Retry-After"] == "1800"
    assert respond.headers["X-Token"] == "Bearer none"
