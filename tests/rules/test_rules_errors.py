"""Every class of user error is reported as file:line:col: message, all at once."""

from __future__ import annotations

import os

import pytest

from decorator.errors import RulesInvalid
from decorator.rules import load_rules
from tests.rules.helpers import errors_of


def test_yaml_syntax_error_points_at_the_problem(write):
    p = write("r.yaml", """
        rules:
          - name: a
            match: {status: [404, 500}
            record: {}
        """)
    [err] = errors_of(p)
    assert err.startswith(f"{p}:3:30: YAML syntax error:"), err


def test_duplicate_key_is_a_syntax_error_at_the_second_key(write):
    p = write("r.yaml", """
        rules:
          - name: a
            name: b
            record: {}
        """)
    [err] = errors_of(p)
    assert err.startswith(f"{p}:3:5: YAML syntax error:") and "duplicate key" in err


def test_unknown_key_suggests_the_closest(write):
    p = write("r.yaml", """
        rules:
          - name: a
            natch: {status: 5xx}
            record: {}
        """)
    [err] = errors_of(p)
    assert err.startswith(f"{p}:3:5: rules[0]: unknown key 'natch' (did you mean 'match'?)"), err
    assert "expected one of: name, description, enabled, match" in err


def test_unknown_key_inside_an_action_and_a_matcher(write):
    p = write("r.yaml", """
        rules:
          - name: a
            match:
              stauts: 404
            respond: {bodyy: "x"}
        """)
    errs = errors_of(p)
    assert errs == [
        (f"{p}:4:7: rules[0].match: unknown key 'stauts' (did you mean 'status'?); expected one of: "
         "status, method, path, path_regex, headers, response_headers, when"),
        (f"{p}:5:15: rules[0].respond: unknown key 'bodyy' (did you mean 'body'?); expected one of: "
         "status, body, file, template, content_type, headers"),
    ]


def test_wrong_type_says_what_was_found_and_expected(write):
    p = write("r.yaml", """
        rules:
          - name: a
            respond: {status: lots, body: hi}
          - name: b
            match: {status: 700}
            record: {timing: maybe}
        """)
    errs = errors_of(p)
    assert errs == [
        f"{p}:3:23: rules[0].respond.status: expected a whole number, found 'lots'",
        (f"{p}:5:21: rules[1].match.status[0]: expected a status such as 404, a class such as 5xx or a "
         "range such as 500-599, found 700"),
        f"{p}:6:22: rules[1].record.timing: expected true or false, found 'maybe'",
    ]


def test_missing_required_key_points_at_the_mapping(write):
    p = write("r.yaml", """
        rules:
          - match: {status: 404}
            record: {}
        """)
    [err] = errors_of(p)
    assert err == f"{p}:2:5: rules[0]: missing required key 'name'"


def test_rule_without_action(write):
    p = write("r.yaml", """
        rules:
          - name: lonely
            match: {path: /x}
        """)
    [err] = errors_of(p)
    assert err.startswith(f"{p}:2:5: rules[0]: rule 'lonely' has no action; expected at least one of")


def test_bad_regex_points_into_the_value(write):
    p = write("r.yaml", """
        rules:
          - name: a
            match: {path_regex: "^/api/(v1"}
            record: {}
        """)
    [err] = errors_of(p)
    # the '(' inside the quoted scalar: the quote is at col 25, the value starts at 26
    assert err == (f"{p}:3:32: rules[0].match.path_regex: bad regular expression '^/api/(v1': missing ), "
                   "unterminated subpattern at position 6")


def test_bad_jmespath(write):
    p = write("r.yaml", """
        rules:
          - name: a
            match:
              when: request.path == ]
            record: {}
        """)
    [err] = errors_of(p)
    assert err.startswith(f"{p}:4:29: rules[0].match.when: bad JMESPath expression 'request.path == ]'"), err


def test_jmespath_unknown_view_field_suggests(write):
    p = write("r.yaml", """
        rules:
          - name: a
            match: {when: "reqest.method == 'GET'"}
            record: {}
        """)
    [err] = errors_of(p)
    assert err.startswith(f"{p}:3:19: rules[0].match.when: unknown field 'reqest'")
    assert "(did you mean 'request'?)" in err


@pytest.mark.parametrize("glob, why", [
    ("api/**", "starts with '/'"),
    ("/a/**b", "'**' must be a whole path segment"),
    ("/users/{id", "unbalanced"),
    ("/users/{1d}", "must be a name"),
    ("/a/{x}/{x}", "appears twice"),
    ("/a?b=1", "without '?query'"),
])
def test_bad_glob(write, glob, why):
    p = write("r.yaml", f"""
        rules:
          - name: a
            match:
              path: "{glob}"
            record: {{}}
        """)
    [err] = errors_of(p)
    assert err.startswith(f"{p}:4:13: rules[0].match.path: ") and why in err, err


def test_missing_respond_file(write, tmp_path):
    p = write("r.yaml", """
        rules:
          - name: a
            respond:
              file: pages/nope.html
        """)
    [err] = errors_of(p)
    assert err == f"{p}:4:13: file not found: {tmp_path / 'pages/nope.html'}"


def test_missing_env_var_without_default(write):
    p = write("r.yaml", """
        rules:
          - name: a
            notify:
              url: http://${ALERT_HOST}/hook
        """)
    [err] = errors_of(p, env={})
    assert err.startswith(f"{p}:4:19: variable ALERT_HOST is not set"), err
    assert "${ALERT_HOST:-default}" in err


def test_include_cycle(write):
    a = write("a.yaml", """
        include: [b.yaml]
        rules: [{name: a, record: {}}]
        """)
    b = write("b.yaml", """
        rules: [{name: b, record: {}}]
        include:
          - a.yaml
        """)
    [err] = errors_of(a)
    assert err.startswith(f"{b}:3:5: include cycle: "), err
    assert err.endswith("a.yaml -> " + os.path.relpath(os.path.realpath(b)) + " -> "
                        + os.path.relpath(os.path.realpath(a)))


def test_missing_include(write, tmp_path):
    a = write("a.yaml", """
        include: [nothere]
        """)
    [err] = errors_of(a)
    assert err == f"{a}:1:11: include: no such file or directory: {tmp_path / 'nothere'}"


def test_duplicate_rule_name_across_files(write, tmp_path):
    write("d/1.yaml", "rules: [{name: x, record: {}}]\n")
    p2 = write("d/2.yaml", "rules:\n  - name: x\n    record: {}\n")
    [err] = errors_of(str(tmp_path / "d"))
    assert err.startswith(f"{p2}:2:11: duplicate rule name 'x' (first defined at {tmp_path / 'd/1.yaml'}:1:16)")


def test_every_error_across_files_at_once(write, tmp_path):
    a = write("a.yaml", """
        rules:
          - name: one
            match: {status: 5xy}
            record: {}
          - name: two
            respond: {file: gone.html}
          - name: three
            notify: {url: "${NOPE}"}
        """)
    b = write("b.yaml", """
        rules:
          - name: four
            recod: {}
        """)
    c = write("c.yaml", "rules: [\n")
    errs = errors_of([a, b, c])
    locs = [e.split(": ")[0] for e in errs]
    assert locs == [f"{a}:3:21", f"{a}:6:21", f"{a}:8:20", f"{b}:3:5", f"{c}:2:1"]


def test_errors_json_shape(write):
    p = write("r.yaml", "rules:\n  - name: a\n    record: {x: 1}\n")
    with pytest.raises(RulesInvalid) as info:
        load_rules([p], env={})
    assert [e.as_dict() for e in info.value.errors] == [
        {"file": p, "line": 3, "col": 14, "message": "rules[0].record: unknown key 'x'; expected one of: "
         "timing, status, size"}]


def test_not_a_mapping_and_several_documents(write):
    p = write("r.yaml", "- a\n- b\n")
    q = write("q.yaml", "rules: []\n---\nrules: []\n")
    assert errors_of(p) == [f"{p}:1:1: expected a mapping with a `rules:` list, found a list"]
    [err] = errors_of(q)
    assert err.startswith(f"{q}:3:1: expected one YAML document")


def test_missing_path(tmp_path):
    errs = errors_of(str(tmp_path / "nope.yaml"))
    assert errs == [f"{tmp_path / 'nope.yaml'}: no such file or directory: {tmp_path / 'nope.yaml'}"]


def test_headers_request_edit_on_response_rule_is_rejected(write):
    p = write("r.yaml", """
        rules:
          - name: a
            match: {status: 500}
            headers:
              request: {set: {X-A: "1"}}
        """)
    [err] = errors_of(p)
    assert err.startswith(f"{p}:5:16: request headers cannot be edited by a rule that matches on the response")


def test_template_unknown_field_is_a_load_error(write):
    p = write("r.yaml", """
        rules:
          - name: a
            respond: {body: "hello {user.name}"}
        """)
    [err] = errors_of(p)
    assert err.startswith(f"{p}:3:21: rules[0].respond.body: unknown template field {{user.name}}"), err


def test_jmespath_bare_null_hint(write):
    p = write("r.yaml", """
        rules:
          - name: a
            match: {when: "response.status != null"}
            record: {}
        """)
    [err] = errors_of(p)
    assert "unknown field 'null'" in err and "needs backticks: `null`" in err


def test_a_typo_is_one_error_not_also_a_missing_key(write):
    p = write("r.yaml", """
        rules:
          - name: a
            notify: {ulr: "http://x/"}
        """)
    assert errors_of(p) == [(f"{p}:3:14: rules[0].notify: unknown key 'ulr' (did you mean 'url'?); expected "
                             "one of: url, cooldown, threshold, key, message, timeout, retries, headers")]


def test_tests_must_name_existing_rules(write):
    p = write("r.yaml", """
        rules:
          - {name: page-on-5xx, match: {status: 5xx}, notify: {url: "http://x/"}}
        tests:
          - name: t
            request: GET /
            expect: {notify: [page-on-5x]}
        """)
    assert errors_of(p) == [(f"{p}:6:23: test refers to rule 'page-on-5x', which is not in the rule set "
                            "(did you mean 'page-on-5xx'?)")]


def test_empty_sections_are_empty(write):
    from decorator.rules import load_rules
    p = write("r.yaml", "vars:\nrules:\n# - name: off\ntests:\n")
    assert load_rules([p]).rules == []
