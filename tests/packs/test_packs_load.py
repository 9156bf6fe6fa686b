"""Packs as the loader sees them, on real files: manifests, params and their located errors,
resolution order, version ranges and `requires`, qualified rule names, path includes, the lock."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from decorator import __version__
from decorator.errors import RulesInvalid
from decorator.packs import docs as pack_docs
from decorator.packs.resolve import content_files, dir_hash
from decorator.rules import compile_rules, load_rules
from decorator.rules.packtest import CaptureRuntime, simulate
from decorator.rules.schema import render_pack
from tests.packs.helpers import ROOT, make_pack, run


def errors(paths, env=None) -> list[str]:
    with pytest.raises(RulesInvalid) as e:
        load_rules([str(p) for p in paths], env=env or {})
    return [str(x) for x in e.value.errors]


def names(paths, env=None) -> list[str]:
    return [r.name for r in load_rules([str(p) for p in paths], env=env or {}).rules]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def header(paths, target: str, env=None) -> str | None:
    """X-From on a response to `target` through the compiled rules."""
    hooks = compile_rules(load_rules([str(p) for p in paths], env=env or {}), CaptureRuntime())
    out = simulate(hooks, "GET", target, [])
    return dict((k.decode(), v.decode()) for k, v in out.headers).get("X-From")


# -- the issue's example, against the shipped security-headers pack --------------------------------

def test_the_issue_example_loads_and_hsts_false_switches_hsts_off(tmp_path):
    f = write(tmp_path / "web.yaml", """\
        include:
          - pack: security-headers
            version: "^1.2"
            with: { hsts: false }
        """)
    rs = load_rules([str(f)], env={})
    assert [r.name for r in rs.rules] == ["security-headers/security-headers",
                                          "security-headers/security-headers-hsts"]
    assert [r.enabled for r in rs.rules] == [True, False]
    # The environment variable the param sets still works when `with:` does not give it...
    f2 = write(tmp_path / "b" / "web.yaml", "include: [{pack: security-headers}]\n")
    assert [r.enabled for r in load_rules([str(f2)], env={"SECURITY_HSTS": "false"}).rules] == [True, False]
    # ...and `with:` wins over it.
    assert [r.enabled for r in load_rules([str(f)], env={"SECURITY_HSTS": "true"}).rules] == [True, False]


def test_param_errors_are_located_with_suggestions(tmp_path):
    f = write(tmp_path / "web.yaml", """\
        include:
          - pack: security-headers
            with:
              hst: false
              frame: SAMEORIGN
          - pack: alert-5xx
            with: { cooldown: soon, enabled: maybe }
          - pack: maintenance
            with: { retry_after: 1.5 }
        """)
    assert errors([f]) == [
        f"{f}:4:7: unknown param 'hst' (did you mean 'hsts'?); pack security-headers takes: hsts, hsts_value, "
        "frame, frame_ancestors, referrer_policy, permissions_policy",
        f"{f}:5:14: frame: expected one of DENY, SAMEORIGIN, found 'SAMEORIGN' (did you mean 'SAMEORIGIN'?)",
        f"{f}:7:23: cooldown: expected a duration such as 500ms, 60s, 2m or 1h, found 'soon'",
        f"{f}:7:38: enabled: expected true or false, found 'maybe'",
        f"{f}:9:26: retry_after: expected a whole number, found 1.5",
    ]


def test_a_bad_value_from_the_environment_is_located_at_the_param_in_the_manifest(tmp_path):
    manifest = ROOT / "rules" / "maintenance" / "pack.yaml"
    line = next(i for i, t in enumerate(manifest.read_text().splitlines(), 1) if t.startswith("  retry_after:"))
    assert errors([ROOT / "rules" / "maintenance"], env={"MAINTENANCE_RETRY_AFTER": "later"}) == [
        f"{manifest}:{line}:3: retry_after: expected a whole number, found 'later' (from the environment "
        "variable MAINTENANCE_RETRY_AFTER)"]


def test_missing_required_param_and_bad_manifest(tmp_path):
    make_pack(tmp_path, "needs", params="""\
        token: { description: the secret, var: TOKEN }
        """, rules="rules:\n  - name: r\n    headers: { request: { set: { X-T: \"${TOKEN}\" } } }\n")
    f = write(tmp_path / "web.yaml", "include:\n  - pack: needs\n")
    assert errors([f]) == [f"{f}:2:11: pack needs: missing required param 'token' (the secret); give it in `with:`"]
    assert names([f], env={"TOKEN": "s3cret"}) == ["needs/r"]
    bad = tmp_path / "bad"
    write(bad / "pack.yaml", """\
        name: bad
        version: one
        requires: "=>0.1"
        parms: {}
        """)
    write(bad / "bad.yaml", "rules: []\n")
    assert errors([bad]) == [
        f"{bad}/pack.yaml:2:10: version: expected a semantic version such as 1.2.0, found 'one'",
        f"{bad}/pack.yaml:3:11: requires: expected a version range such as ^1.2, ~1.2.3, >=0.2 or 1.x, found '=>0.1'",
        f"{bad}/pack.yaml:4:1: unknown key 'parms' (did you mean 'params'?); expected one of: name, version, "
        "description, requires, params",
    ]


def test_a_default_that_breaks_its_own_param_is_a_manifest_error(tmp_path):
    d = make_pack(tmp_path, "p", params="""\
        frame: { default: ALLOW, enum: [DENY, SAMEORIGIN] }
        """)
    assert errors([d]) == [f"{d}/pack.yaml:5:10: params.frame: expected one of DENY, SAMEORIGIN, found 'ALLOW'"]


# -- resolution order -------------------------------------------------------------------------------

def test_resolution_order_beside_then_pack_path_then_shipped(tmp_path):
    rules = tmp_path / "svc"
    f = write(rules / "web.yaml", "include: [{pack: security-headers}]\n")
    pp = tmp_path / "pp"
    make_pack(pp, "security-headers", "9.0.0", rule="pp")
    env = {"DECORATOR_PACK_PATH": f"{tmp_path / 'nothing'}:{pp}"}
    assert names([f]) == ["security-headers/security-headers", "security-headers/security-headers-hsts"]
    assert names([f], env) == ["security-headers/pp"]                # DECORATOR_PACK_PATH before shipped
    make_pack(rules / "packs", "security-headers", "8.0.0", rule="packs-dir")
    assert names([f], env) == ["security-headers/packs-dir"]         # beside: DIR/packs/NAME
    make_pack(rules, "security-headers", "7.0.0", rule="beside")
    assert names([f], env) == ["security-headers/beside"]            # beside: DIR/NAME first
    r = run("pack", "list", "--beside", str(rules), env=env)
    assert r.returncode == 0, r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines()[1:] if ln.startswith("security-headers ")]
    assert [(ln[1], " ".join(ln[2:-1])) for ln in lines] == [
        ("7.0.0", "beside"), ("8.0.0", "beside (shadowed)"), ("9.0.0", "DECORATOR_PACK_PATH (shadowed)"),
        ("1.2.0", "shipped (shadowed)")]


def test_version_range_picks_the_first_that_fits_and_says_what_was_found_where(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_pack(a, "p", "1.4.0", rule="a")
    make_pack(b, "p", "2.1.0", rule="b")
    env = {"DECORATOR_PACK_PATH": f"{a}:{b}"}
    f = write(tmp_path / "svc" / "web.yaml", 'include:\n  - pack: p\n    version: "^2.0"\n')
    assert names([f], env) == ["p/b"]
    f.write_text('include:\n  - pack: p\n    version: "~1.3"\n')
    assert errors([f], env) == [
        f"{f}:3:14: pack 'p': no usable version; found 1.4.0 at {a}/p (DECORATOR_PACK_PATH) does not match ~1.3; "
        f"2.1.0 at {b}/p (DECORATOR_PACK_PATH) does not match ~1.3"]
    f.write_text('include:\n  - pack: p\n    version: "^1.x.y"\n')
    assert errors([f], env) == [f"{f}:3:14: include[0].version: expected a version range such as ^1.2, ~1.2.3, "
                                ">=0.2 or 1.x, found '^1.x.y'"]


def test_requires_excluding_this_decorator_is_a_located_error(tmp_path):
    make_pack(tmp_path / "pp", "future", "1.0.0", requires=">=99.0")
    f = write(tmp_path / "web.yaml", "include:\n  - pack: future\n")
    env = {"DECORATOR_PACK_PATH": str(tmp_path / "pp")}
    assert errors([f], env) == [f"{f}:2:11: pack 'future': no usable version; found 1.0.0 at {tmp_path}/pp/future "
                                f"(DECORATOR_PACK_PATH) requires decorator >=99.0, this is {__version__}"]
    # Given by path, the same pack says so too (at the manifest's `requires`).
    assert errors([tmp_path / "pp" / "future"]) == [
        f"{tmp_path}/pp/future/pack.yaml:4:11: pack 'future' 1.0.0 at {tmp_path}/pp/future (path) requires "
        f"decorator >=99.0; this is decorator {__version__}"]


def test_unknown_pack_suggests_a_near_name(tmp_path):
    f = write(tmp_path / "web.yaml", "include:\n  - pack: security-header\n")
    (err,) = errors([f])
    assert err.startswith(f"{f}:2:11: pack 'security-header' not found (did you mean 'security-headers'?); "
                          f"looked in {tmp_path} (beside), {tmp_path}/packs (beside), ")


def test_a_manifest_naming_another_pack_is_an_error(tmp_path):
    d = make_pack(tmp_path, "right")
    (d / "pack.yaml").write_text((d / "pack.yaml").read_text().replace("name: right", "name: wrong"))
    f = write(tmp_path / "web.yaml", "include: [{pack: right}]\n")
    assert errors([f]) == [f"{d}/pack.yaml:1:7: pack.yaml names the pack 'wrong', but it is found as 'right' "
                           f"({d} (beside)); the directory or entry point must carry the pack's name"]


# -- names, includes by path, tests -------------------------------------------------------------------

def test_two_packs_may_have_rules_of_the_same_name(tmp_path):
    make_pack(tmp_path, "one", rule="page", var="ONE")
    make_pack(tmp_path, "two", rule="page", var="TWO")
    f = write(tmp_path / "web.yaml", """\
        include:
          - pack: one
            with: { path: /one }
          - pack: two
            with: { path: /two }
        rules:
          - name: page
            match: { path: /mine }
            headers: { response: { set: { X-From: mine } } }
        """)
    assert names([f]) == ["one/page", "two/page", "page"]
    assert (header([f], "/one"), header([f], "/two"), header([f], "/mine")) == ("one 1.0.0", "two 1.0.0", "mine")
    # The same pack twice is still a duplicate, named by its qualified name.
    f.write_text("include: [{pack: one}, {pack: one}]\n")
    (err,) = errors([f])
    assert "duplicate rule name 'one/page' (first defined at" in err


def test_path_include_of_a_file_and_of_a_pack_directory_keeps_working(tmp_path):
    write(tmp_path / "local" / "extra.yaml", """\
        rules:
          - name: extra
            headers: { response: { set: { X-Extra: "${WHO}" } } }
        """)
    make_pack(tmp_path / "vendor", "tagger", var="TAGGER_PATH")
    f = write(tmp_path / "svc" / "web.yaml", """\
        include:
          - path: ../local/extra.yaml
            vars: { WHO: me }
          - ../vendor/tagger
          - path: ../vendor/tagger
            vars: { TAGGER_PATH: /t2 }
        """)
    (err,) = errors([f])  # the pack is loaded twice: a duplicate, but its vars went through its params
    assert "duplicate rule name 'tagger/tag'" in err
    f.write_text("include:\n  - path: ../local/extra.yaml\n    vars: { WHO: me }\n"
                 "  - path: ../vendor/tagger\n    vars: { TAGGER_PATH: /t }\n")
    assert names([f]) == ["extra", "tagger/tag"]
    assert header([f], "/t") == "tagger 1.0.0"
    f.write_text("include:\n  - path: ../vendor/tagger\n    with: { path: /t }\n")
    assert errors([f]) == [f"{f}:2:5: include[0]: version and with go with pack:, not path: (a path include "
                           "takes vars)"]


def test_pack_tests_name_rules_as_written_and_users_name_them_qualified(tmp_path):
    make_pack(tmp_path, "p", rule="page")
    write(tmp_path / "p" / "p.tests.yaml", """\
        tests:
          - name: own names
            request: GET /x
            expect: { fired: [page] }
        """)
    f = write(tmp_path / "web.yaml", """\
        include: [{pack: p}]
        tests:
          - name: user names
            request: GET /x
            expect: { fired: [page] }
        """)
    assert errors([f]) == [f"{f}:5:23: test refers to rule 'page', which is not in the rule set (did you "
                           "mean 'p/page'?)"]
    f.write_text(f.read_text().replace("[page]", "[p/page]"))
    # The pack's own cases run with the pack (its defaults), not in the includer's rule set (its params).
    r = run("test", str(f))
    assert r.returncode == 0 and r.stdout.splitlines() == [f"ok   {f}:3:5: user names", "1 passed, 0 failed"], \
        r.stdout + r.stderr
    r = run("test", str(tmp_path / "p"))
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "1 passed, 0 failed", r.stdout + r.stderr


# -- the lock ------------------------------------------------------------------------------------------

def test_lock_pins_and_catches_an_edited_pack(tmp_path):
    pp = tmp_path / "pp"
    pack = make_pack(pp, "p", "1.0.0")
    svc = tmp_path / "svc"
    f = write(svc / "web.yaml", "include:\n  - pack: p\n    version: ^1.0\n")
    env = {"DECORATOR_PACK_PATH": str(pp)}
    r = run("pack", "lock", str(svc), env=env)
    assert r.returncode == 0, r.stderr
    lock = YAML(typ="safe").load((svc / "packs.lock").read_text())
    assert lock == {"lock_version": 1, "packs": {"p": {
        "version": "1.0.0", "source": f"{pack} (DECORATOR_PACK_PATH)", "sha256": dir_hash(str(pack))}}}
    assert run("validate", str(svc), env=env).returncode == 0
    # An edit to any file of the pack (here a README nobody loads) changes its content hash.
    (pack / "README.md").write_text("# p\nnow with a readme\n")
    r = run("validate", str(svc), env=env)
    assert r.returncode == 1
    assert r.stdout.startswith(f"{f}:2:11: pack 'p' 1.0.0 at {pack} (DECORATOR_PACK_PATH) has changed since "
                               f"{svc}/packs.lock was written (content sha256 "), r.stdout
    r = run("run", "--rules", str(svc), "--port", "0", "--admin-port", "0", env=env)
    assert r.returncode == 1 and "has changed since" in r.stderr and "not starting: 1 error" in r.stderr
    # A newer version found first is not taken: the lock pins 1.0.0 (and the old one still fits).
    (pack / "README.md").unlink()
    make_pack(tmp_path / "newer", "p", "1.1.0", rule="newer")
    env2 = {"DECORATOR_PACK_PATH": f"{tmp_path / 'newer'}:{pp}"}
    assert names([svc], env2) == ["p/tag"]
    assert run("pack", "lock", str(svc), env=env2).returncode == 0
    assert names([svc], env2) == ["p/newer"]
    # A pack included by name but not in the lock is refused.
    f.write_text(f.read_text() + "  - pack: security-headers\n")
    (err,) = errors([svc], env2)
    assert err == f"{f}:4:11: pack 'security-headers' is not in {svc}/packs.lock; run `decorator pack lock` to add it"


def test_content_excludes_code_caches_and_hidden_files(tmp_path):
    d = make_pack(tmp_path, "p")
    before = dir_hash(str(d))
    (d / "__init__.py").write_text("")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (d / ".hidden").write_text("x")
    assert dir_hash(str(d)) == before
    (d / "sub").mkdir()
    (d / "sub" / "page.html").write_text("<p>")
    assert content_files(str(d)) == ["p.yaml", "pack.yaml", "sub/page.html"]
    assert dir_hash(str(d)) != before


# -- schema and docs -----------------------------------------------------------------------------------

def test_pack_schema_is_fresh_and_every_shipped_manifest_validates():
    on_disk = (ROOT / "pack.schema.json").read_text()
    assert on_disk == render_pack(), "pack.schema.json is stale: run `decorator schema --pack > pack.schema.json`"
    validator = jsonschema.Draft202012Validator(json.loads(on_disk))
    manifests = sorted((ROOT / "rules").glob("*/pack.yaml")) + sorted((ROOT / "examples").rglob("pack.yaml"))
    assert len(manifests) >= 6
    for m in manifests:
        doc = YAML(typ="safe").load(m.read_text())
        assert [e.message for e in validator.iter_errors(doc)] == [], m
    assert [e.message for e in validator.iter_errors({"name": "x", "version": "1.0.0", "parms": {}})]


def test_every_shipped_pack_has_a_manifest_whose_defaults_match_the_rules(tmp_path):
    """A param's default is what its ${VAR:-default} in the rules says, so the rules file copied
    alone (a ConfigMap without the manifest) behaves the same."""
    packs = [p for p in sorted((ROOT / "rules").iterdir()) if p.is_dir()]
    assert packs and all((p / "pack.yaml").is_file() for p in packs), packs
    import re

    from decorator.rules.load import read_manifest
    for p in packs:
        m = read_manifest(str(p))
        assert m.name == p.name
        text = "".join(f.read_text() for f in p.glob("*.yaml") if f.name != "pack.yaml")
        for pname, param in m.params.items():
            var = param.var or pname
            inline = set(re.findall(r"\$\{" + var + r":-([^}]*)\}", text))
            assert inline, f"{p.name}: param {pname} sets ${{{var}}}, which its rules do not read"
            d = param.default
            shown = ("true" if d else "false") if isinstance(d, bool) else str(d)
            assert inline == {shown}, (p.name, pname, inline, param.default)


def test_docs_param_tables_are_fresh():
    text = (ROOT / "docs" / "packs.md").read_text()
    assert pack_docs.update(text, str(ROOT / "rules")) == text, \
        "docs/packs.md is stale: run `python -m decorator.packs.docs`"
    assert "| `hsts` | boolean | `true` | `SECURITY_HSTS` |" in text
