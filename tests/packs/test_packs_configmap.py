"""`decorator pack configmap`: the manifest is valid Kubernetes (kubernetes-validate, offline), valid
rules (`decorator validate`), and works mounted the way the kubelet mounts it (`..data` symlinks)
under a running sidecar, with rule names qualified by pack in /status, /metrics and explain; the
lock in it refuses a tampered vendored pack at reload."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import textwrap
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.packs.helpers import ROOT, make_pack, run
from tests.support import free_port, threaded_http_server

sys.path.insert(0, str(ROOT / "tests" / "k8s"))
from kubelet_volume import ConfigMapVolume, configmap_payload

K8S_VERSION = "1.30.0"
# `decorator run`, with the admin port on loopback (it listens on 0.0.0.0, which some sandboxes refuse):
# the real CLI and App in a real process, only the admin bind address changed.
RUN = ("import dataclasses, sys\n"
       "from decorator import settings\n"
       "_from_args = settings.from_args\n"
       "settings.from_args = lambda *a, **k: dataclasses.replace(_from_args(*a, **k), admin_host='127.0.0.1')\n"
       "from decorator.cli import main\n"
       "sys.exit(main(['run', *sys.argv[1:]]))\n")
BROWSER = {"Accept": "text/html"}


@pytest.fixture
def svc(tmp_path) -> tuple[Path, dict]:
    """A rules directory using two shipped packs and one from DECORATOR_PACK_PATH whose page sits
    in a subdirectory, plus a page of its own; locked."""
    pp = tmp_path / "pp"
    make_pack(pp, "tagger", "2.3.0", rule="page", rules=textwrap.dedent("""\
        rules:
          - name: page
            match: { path: "${TAGGER_PATH:-/tagged}" }
            respond: { file: pages/tag.html }
        """), var="TAGGER_PATH")
    (pp / "tagger" / "pages").mkdir()
    (pp / "tagger" / "pages" / "tag.html").write_text("<p>tagged by the pack</p>\n")
    d = tmp_path / "svc"
    d.mkdir()
    (d / "web.yaml").write_text(textwrap.dedent("""\
        include:
          - pack: security-headers
            version: "^1.2"
            with: { hsts: false }
          - pack: custom-errors
            with: { json_paths: /api/** }
          - pack: tagger
            version: ^2
            with: { path: /tag }
        rules:
          - name: page
            match: { path: /mine }
            respond: { file: mine.html }
        """))
    (d / "mine.html").write_text("<p>mine</p>\n")
    env = {"DECORATOR_PACK_PATH": str(pp)}
    r = run("pack", "lock", str(d), env=env)
    assert r.returncode == 0, r.stderr
    return d, env


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kubernetes_validate"]
    return subprocess.run([*cmd, "--strict", "--kubernetes-version", K8S_VERSION, str(path)],
                          check=False, capture_output=True, text=True, timeout=120)


def test_configmap_is_valid_kubernetes_and_valid_rules(svc, tmp_path):
    d, env = svc
    r = run("pack", "configmap", str(d), "--name", "web-decorator-rules", "--namespace", "shop", env=env)
    assert r.returncode == 0, r.stderr
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(r.stdout)
    doc = YAML(typ="safe").load(r.stdout)
    assert (doc["kind"], doc["metadata"]["name"], doc["metadata"]["namespace"]) == (
        "ConfigMap", "web-decorator-rules", "shop")
    keys = set(doc["data"])
    assert {"web.yaml", "mine.html", "packs.lock", "tagger--pack.yaml", "tagger--tagger.yaml",
            "tagger--pages--tag.html", "security-headers--pack.yaml", "security-headers--security-headers.yaml",
            "custom-errors--custom-errors-404.html"} <= keys
    assert not any("/" in k for k in keys)
    lock = YAML(typ="safe").load(doc["data"]["packs.lock"])
    assert lock["packs"]["tagger"]["files"]["pages/tag.html"] == "tagger--pages--tag.html"
    assert lock["packs"]["security-headers"]["version"] == "1.2.0"
    proc = kubernetes_validate(manifest)
    assert proc.returncode == 0 and "ERROR" not in proc.stdout, proc.stdout + proc.stderr
    # Valid rules as a manifest file, without the pack path: everything it needs is inside.
    r = run("validate", str(manifest))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: 8 rules in 1 file"), r.stdout
    # A vendored file edited in the manifest: the lock inside refuses it, located at the include.
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(r_text := manifest.read_text().replace("<p>tagged by the pack</p>", "<p>edited</p>"))
    assert r_text != manifest.read_text()
    line = next(i for i, t in enumerate(r_text.splitlines(), 1) if "- pack: tagger" in t)
    r = run("validate", str(tampered))
    assert r.returncode == 1
    assert r.stdout.startswith(f"{tampered}:{line}:"), r.stdout
    assert "pack 'tagger' 2.3.0 at" in r.stdout and "has changed since" in r.stdout


def test_a_pack_directory_or_a_bad_name_is_refused(svc):
    d, env = svc
    r = run("pack", "configmap", str(ROOT / "rules" / "maintenance"), "--name", "x", env=env)
    assert r.returncode == 2 and "is a pack: give the rules that include it" in r.stderr
    r = run("pack", "configmap", str(d), "--name", "Web_Rules", env=env)
    assert r.returncode == 2 and "not a valid ConfigMap name" in r.stderr


class App(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
        body = f"app {status}".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        c.close()


def wait(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s (exit {proc.poll()})\n{log.read_text()}")
        time.sleep(0.05)


def test_mounted_configmap_under_a_running_sidecar(svc, tmp_path):
    d, env = svc
    r = run("pack", "configmap", str(d), "--name", "web-decorator-rules", env=env)
    assert r.returncode == 0, r.stderr
    payload = configmap_payload(r.stdout)
    volume = ConfigMapVolume(tmp_path / "mnt")
    volume.write(payload)
    assert os.path.islink(volume.root / "..data") and os.path.islink(volume.root / "tagger--tagger.yaml")
    # Offline first: the mounted directory validates and explains with qualified names.
    r = run("validate", str(volume.root))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("explain", "GET /tag", "--rules", str(volume.root))
    assert r.returncode == 0, r.stderr
    assert any(ln.startswith("tagger/page ") and "MATCH" in ln for ln in r.stdout.splitlines()), r.stdout
    assert any(ln.startswith("page ") and "no:" in ln for ln in r.stdout.splitlines()), r.stdout

    with threaded_http_server(App) as app_port:
        port, admin = free_port(), free_port()
        log = tmp_path / "sidecar.log"
        clean = {k: v for k, v in os.environ.items() if k != "DECORATOR_PACK_PATH"}
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-c", RUN, "--host", "127.0.0.1", "--port", str(port),
                 "--target", f"127.0.0.1:{app_port}", "--rules", str(volume.root), "--admin-port", str(admin),
                 "--reload-poll", "0.2", "--drain-timeout", "1s"],
                stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, env={**clean, "PYTHONUNBUFFERED": "1"})
        try:
            wait(lambda: get(admin, "/readyz")[0] == 200, 20, "sidecar ready", proc, log)
            status, headers, body = get(port, "/tag")
            assert (status, body) == (200, "<p>tagged by the pack</p>\n")   # a vendored page, by its pack path
            assert headers["x-frame-options"] == "DENY" and "strict-transport-security" not in headers
            assert get(port, "/mine")[2] == "<p>mine</p>\n"
            status, headers, body = get(port, "/status/503", BROWSER)
            assert status == 503 and "Something went wrong on our side" in body
            status, _, body = get(port, "/api/x/status/500")
            assert status == 200 and body == "app 200"
            st = json.loads(get(admin, "/status")[2])
            names = st["rules"]["active"]["names"]
            assert {"page", "tagger/page", "security-headers/security-headers",
                    "custom-errors/custom-errors-5xx-page"} <= set(names), names
            assert "security-headers/security-headers-hsts" in names  # there, switched off by `with:`
            metrics = get(admin, "/metrics")[2]
            assert 'decorator_rule_hits_total{rule="tagger/page"} 1.0' in metrics, metrics
            assert 'decorator_rule_hits_total{rule="page"} 1.0' in metrics

            # A vendored file changed without a new lock: the reload is refused, the old rules stay.
            volume.write({**payload, "tagger--pages--tag.html": "<p>sneaky</p>\n"})

            def refused():
                last = json.loads(get(admin, "/status")[2])["rules"]["last_reload"]
                return last and not last["ok"] and last
            last = wait(refused, 10, "reload refused", proc, log)
            assert any("has changed since" in json.dumps(e) for e in last["errors"]), last
            assert get(port, "/tag")[2] == "<p>tagged by the pack</p>\n"
        finally:
            proc.terminate()
            proc.wait(10)
