"""Regressions for what the `rules` fuzz campaign found (docs/reliability.md): every user error is
located (`file:line:col: message`), nothing raises, nothing hangs, and regexes that can backtrack
exponentially are refused when the rules load."""

from __future__ import annotations

import re

import pytest

from decorator.rules.models import backtracking_problem
from tests.rules.helpers import errors_of

_LOCATED = re.compile(r"^.+:[1-9][0-9]*:[1-9][0-9]*: ")


def _write(tmp_path, data: bytes, name: str = "rules.yaml") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_a_byte_that_is_not_utf8_is_located(tmp_path):
    path = _write(tmp_path, b"rules:\n  - name: caf\xe9\n")
    assert errors_of(path) == [f"{path}:2:14: not UTF-8 text (byte 20)"]


def test_a_character_yaml_forbids_is_located(tmp_path):
    """ruamel's ReaderError has a character position, not a mark: the error had no line."""
    path = _write(tmp_path, b"rules:\n  - name: a\x01b\n")
    (err,) = errors_of(path)
    assert err.startswith(f"{path}:2:12: YAML syntax error: ")


def test_a_configmap_without_rules_entries_is_located(tmp_path):
    path = _write(tmp_path, b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: r\ndata:\n  page.html: x\n",
                  "cm.yaml")
    assert errors_of(path) == [f"{path}:5:1: ConfigMap has no data entry ending in .yaml or .yml"]


def test_an_error_in_a_key_merged_from_an_anchor_is_located_not_a_crash(tmp_path):
    """`<<: *anchor` keys have their positions at the anchor; looking them up in the merging
    mapping raised KeyError out of the loader (a traceback instead of an error message)."""
    path = _write(tmp_path, b"x-m: &m\n  path_regex: '${BAD(}'\nrules:\n  - name: r\n    match:\n      <<: *m\n"
                            b"    record: { timing: true }\n")
    errs = errors_of(path)
    assert errs and all(_LOCATED.match(e) for e in errs), errs
    assert any("bad variable reference" in e for e in errs)


def test_billion_laughs_is_not_walked_exponentially(tmp_path):
    """Nine aliases of nine aliases...: ${VAR} substitution walked every alias as a copy (9**9
    strings). Each shared node is now visited once; the document loads (or fails) at once, and
    the test's timeout is the hang detector."""
    lines = ['x-0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"x-{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines.append("rules:\n  - name: r\n    match: { path: /x }\n    record: { timing: true }\n    x-l: *a9")
    path = _write(tmp_path, "\n".join(lines).encode())
    (err,) = errors_of(path)
    assert err.startswith(f"{path}:15:5: rules[0]: unknown key 'x-l'; expected one of: ")


@pytest.mark.parametrize("pattern,problem", [
    ("(a+)+$", "repeats a repeat"),
    ("^(x+x+)+y", "repeats a repeat"),
    ("(a|ab)*c", "repeats an alternation"),
    ("(a*b?)*", "repeats a repeat"),
    ("(?:a{1,3})+z", "repeats a repeat"),
])
def test_exponential_regexes_are_refused(pattern, problem):
    assert backtracking_problem(pattern) == problem


@pytest.mark.parametrize("pattern", [
    "^/v[0-9]+/", "(?:ab)+", "^/(users|teams)/[0-9]+$", "(?:/v1|/v2)?/x", "(?i)text/html|application/xhtml\\+xml",
    "^(?!(?:/healthz|/readyz)(?:/|$))", "\\d+$", "a++b",
])
def test_ordinary_regexes_are_accepted(pattern):
    assert backtracking_problem(pattern) is None


def test_a_refused_path_regex_is_a_located_error(tmp_path):
    path = _write(tmp_path, b'rules:\n  - name: r\n    match: { path_regex: "^/(a+)+$" }\n    record: { timing: true }\n')
    (err,) = errors_of(path)
    assert err.startswith(f"{path}:3:26: rules[0].match.path_regex: regular expression '^/(a+)+$' repeats a repeat")


def test_a_when_that_fails_on_some_request_is_no_match_not_a_failing_rule_set(tmp_path):
    """`sort_by(request.headers, &@)` is a JMESPath type error (headers are an object): it raised
    out of the match, so the whole rule set was skipped for that exchange as a failing hook."""
    from decorator.rules.packtest import CaptureRuntime, simulate
    from tests.rules.helpers import hooks_for
    path = _write(tmp_path, b'rules:\n  - name: bad-when\n    match: { when: "sort_by(request.headers, &@)" }\n'
                            b'    respond: { status: 418 }\n  - name: next\n    respond: { status: 503, body: x }\n')
    hooks, _ = hooks_for(path, runtime=CaptureRuntime())
    out = simulate(hooks, "GET", "/", [(b"X-A", b"1")])
    assert out.status == 503
