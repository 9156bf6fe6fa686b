"""The Reloader with the real rules engine (load_rules + compile_rules) on the shipped rules ConfigMap,
projected into a kubelet-style volume: the compiled hooks change, old hooks keep their rules, errors keep
their file:line:col."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from k8s_helpers import until
from kubelet_volume import ConfigMapVolume, configmap_payload

from decorator.proxy.hooks import Exchange
from decorator.reload import Reloader

rules = pytest.importorskip("decorator.rules", reason="the rules engine is not there yet")
if not hasattr(rules, "compile_rules"):
    pytest.skip("decorator.rules has no compile_rules yet", allow_module_level=True)

MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "kubernetes" / "rules-configmap.yaml"


def answer_404(hooks) -> bytes:
    """What the compiled rules answer for a GET the app answered 404 (what the tunnel would send)."""
    ex = Exchange("GET", "/missing", "1.1", [(b"Host", b"web")], "127.0.0.1")
    if hooks.on_request is not None:
        assert hooks.on_request(ex) is None
    ex.status, ex.response_headers = 404, [(b"Content-Type", b"text/html")]
    reply = hooks.on_response_head(ex)
    assert reply is not None and reply.status == 404
    return reply.body if reply.file is None else Path(reply.file).read_bytes()


@pytest.fixture
async def pod(tmp_path, monkeypatch):
    monkeypatch.setenv("DASHBOARD", "http://127.0.0.1:9")
    runtime = rules.Runtime(recorder=None, pod="web-test")
    vol = ConfigMapVolume(tmp_path / "rules")
    payload = configmap_payload(MANIFEST.read_text())
    vol.write(payload)
    installed: list = []

    def build(paths):
        rs = rules.load_rules(paths)
        return rs.digest, rules.compile_rules(rs, runtime)

    r = Reloader([str(vol.root)], build, installed.append, poll_interval=0)
    await r.start()
    yield r, vol, payload, installed
    await r.close()


async def test_configmap_rules_load_and_report(pod):
    r, vol, payload, installed = pod
    st = r.status()["active"]
    assert st["names"] == ["friendly-404", "timing", "page-on-5xx"] and st["rules"] == 3
    assert str(vol.root / "rules.yaml") in st["files"]
    assert answer_404(installed[-1]) == payload["404.html"].encode()


async def test_a_new_page_swaps_in_and_old_hooks_keep_the_old_one(pod):
    r, vol, payload, installed = pod
    old = installed[-1]
    vol.write({**payload, "404.html": "<h1>v2</h1>\n"})
    await until(lambda: len(installed) == 2, 2.0, "new 404 page swapped in")
    assert answer_404(installed[-1]) == b"<h1>v2</h1>\n"
    # an exchange that started on the old hooks finishes with the old rules
    assert answer_404(old) == payload["404.html"].encode()
    assert r.status()["active"]["digest"] == installed[-1].ruleset.digest


async def test_a_broken_edit_is_kept_out_with_its_location(pod, caplog):
    caplog.set_level(logging.ERROR, "decorator.reload")
    r, vol, payload, installed = pod
    broken = payload["rules.yaml"].replace("cooldown: 60s", "cooldwn: 60s")
    assert broken != payload["rules.yaml"]
    vol.write({**payload, "rules.yaml": broken, "404.html": "never served\n"})
    await until(lambda: r.reload_failures_total == 1, 2.0, "broken edit rejected")
    assert len(installed) == 1
    assert answer_404(installed[-1]) == payload["404.html"].encode()
    line = next(i for i, ln in enumerate(broken.splitlines(), 1) if "cooldwn" in ln)
    errors = r.status()["last_reload"]["errors"]
    assert any(e["file"] == str(vol.root / "rules.yaml") and e["line"] == line for e in errors), errors
    assert f"{vol.root / 'rules.yaml'}:{line}:" in caplog.text


async def test_an_identical_rewrite_does_not_swap(pod):
    r, vol, payload, installed = pod
    checks = r.checks_total
    vol.write(payload, force=True)
    await until(lambda: r.checks_total > checks, 2.0, "no-op event looked at")
    assert len(installed) == 1 and r.reloads_total == 0


async def test_a_blank_rules_file_is_refused_and_the_last_good_rules_stay(pod):
    """A file caught between an editor's truncate and its write (or `: > rules.yaml`) is blank: losing
    every rule that way is an accident, so the reload is refused; `rules: []` is how to mean none."""
    r, vol, payload, installed = pod
    vol.write({**payload, "rules.yaml": "  \n"})
    await until(lambda: r.reload_failures_total == 1, 2.0, "blank rules file refused")
    assert len(installed) == 1 and answer_404(installed[-1]) == payload["404.html"].encode()
    errors = r.status()["last_reload"]["errors"]
    assert any("empty" in e["message"] and e["file"] == str(vol.root / "rules.yaml") for e in errors), errors
    vol.write({**payload, "rules.yaml": "rules: []\n"})
    await until(lambda: len(installed) == 2, 2.0, "an explicit empty rule set is taken")
    assert r.status()["active"]["rules"] == 0
