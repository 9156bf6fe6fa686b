"""Strict scalar types in rules files, through `decorator validate` as a real subprocess: a wrong
type is a located error (never coerced), YAML's natural types work, and the text a ${...} produces
becomes the number or true/false its field takes."""

from __future__ import annotations

import textwrap

import pytest

from tests.rules.test_rules_cli import run


@pytest.mark.parametrize(("text", "message"), [
    ("rules:\n  - name: 7\n    record: {}\n",
     "2:11: rules[0].name: expected a string, found 7"),
    ("rules:\n  - name: m\n    match: {method: 42}\n    record: {}\n",
     "3:21: rules[0].match.method[0]: expected an HTTP method such as GET, found 42"),
    ("rules:\n  - name: r\n    respond: {body: 123}\n",
     "3:21: rules[0].respond.body: expected a string, found 123"),
], ids=["name-int", "method-int", "body-int"])
def test_a_wrong_scalar_type_is_a_located_error(tmp_path, text, message):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    r = run("validate", str(f))
    assert r.returncode == 1
    assert r.stdout == f"{f}:{message}\n", r.stdout


def test_quoted_numbers_and_words_are_not_read_as_numbers_or_booleans(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(textwrap.dedent("""\
        rules:
          - name: r
            enabled: maybe
            respond: {status: "404", body: x, headers: {Retry-After: 120}}
            match: {headers: {X-Version: 2}}
        tests:
          - name: t
            request: GET /
            repeat: "3"
            env: {N: 5}
            expect: {status: 404}
        """))
    r = run("validate", str(f))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{f}:3:14: rules[0].enabled: expected true or false, found 'maybe'",
        f"{f}:4:23: rules[0].respond.status: expected a whole number, found '404'",
        f"{f}:4:62: rules[0].respond.headers.Retry-After: expected a string, found 120",
        f"{f}:5:34: rules[0].match.headers.X-Version: expected true, false, a string or "
        "{present|equals|regex}, found 2",
        f"{f}:9:13: tests[0].repeat: expected a whole number, found '3'",
        f"{f}:10:14: tests[0].env.N: expected a string, found 5",
    ]


def test_yaml_natural_types_and_variables_validate(tmp_path):
    """status 404 (int) and 5xx (text), enabled: true; and ${...} text in bool, int, float
    (duration), status and string fields, from the environment, a default or a typed vars entry."""
    f = tmp_path / "r.yaml"
    f.write_text(textwrap.dedent("""\
        vars: {CODE: 503, ON: true, TRIES: 2}
        rules:
          - name: a
            enabled: true
            match: {status: 404}
            respond: {status: 410, body: gone, template: false}
          - name: b
            enabled: ${ON}
            match: {status: [5xx, "${CODE}"], method: "${METHOD:-get}"}
            respond: {status: "${CODE}", body: "${CODE}", headers: {Retry-After: "${WAIT:-600}"}}
          - name: c-${TRIES}
            enabled: ${FLAG:-false}
            match: {headers: {X-Debug: "${DEBUG:-true}"}}
            notify: {url: "http://h/${CODE}", retries: "${TRIES}", cooldown: "${COOL:-5}m", timeout: "${T}"}
        tests:
          - name: t
            request: GET /
            repeat: ${REPEAT:-2}
            expect: {status: "${CODE}", not_fired: [a]}
        """))
    r = run("validate", str(f), env={"T": "1.5"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "ok: 3 rules in 1 file, 1 test\n"


def test_a_variable_that_does_not_fit_its_field_is_located_at_the_reference(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - name: r\n    enabled: ${SWITCH:-maybe}\n    notify: {url: 'http://h', "
                 "retries: '${N}'}\n")
    r = run("validate", str(f), env={"N": "many"})
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{f}:3:14: rules[0].enabled: expected true or false, found 'maybe'",
        f"{f}:4:40: rules[0].notify.retries: expected a whole number, found 'many'",
    ]
