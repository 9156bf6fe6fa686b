"""Every shipped pack under rules/ validates and passes its own tests (real subprocesses); the
packs work together through the real tunnel; the READMEs' include and ConfigMap recipes load."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from decorator.proxy.tunnel import ProxyServer
from decorator.rules import Runtime, compile_rules, load_rules
from decorator.rules.load import pack_units
from decorator.proxy.limits import Limits
from tests.rules.helpers import Receiver, closed_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
PACKS = [Path(u) for u in pack_units(str(RULES))] if any(RULES.glob("*/*.y*ml")) else []
EXPECTED_PACKS = {"alert-5xx", "cors", "custom-errors", "maintenance", "rate-limit", "security-headers", "telemetry"}
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "decorator", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)


@pytest.mark.skipif(not PACKS, reason="no packs shipped under rules/ yet")
@pytest.mark.parametrize("pack", PACKS, ids=[p.name for p in PACKS])
def test_pack_validates_and_its_tests_pass(pack):
    r = _run("validate", str(pack))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: ")
    r = _run("test", str(pack))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].endswith(" passed, 0 failed")
    assert not r.stdout.splitlines()[-1].startswith("0 passed"), "a pack must carry tests"


@pytest.mark.skipif(not PACKS, reason="no packs shipped under rules/ yet")
def test_all_packs_load_together():
    r = _run("validate", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not PACKS, reason="no packs shipped under rules/ yet")
def test_every_pack_has_a_readme_a_modeline_and_prefixed_names():
    assert {p.name for p in PACKS} >= EXPECTED_PACKS
    rules = load_rules([str(RULES)], env={})
    served: dict[str, Path] = {}
    for pack in PACKS:
        assert (pack / "README.md").is_file(), pack
        # Pack-prefixed, distinct names: several packs' files can share one (flat) ConfigMap.
        for f in pack.iterdir():
            # pack.yaml is the manifest: `decorator pack configmap` gives it a pack-prefixed key.
            if f.is_file() and f.suffix in (".yaml", ".yml", ".html", ".htpasswd") and f.name != "pack.yaml":
                assert f.name.startswith(pack.name), f
                assert f.name not in served, (f, served.get(f.name))
                served[f.name] = f
        for f in pack.glob("*.y*ml"):
            schema = "pack.schema.json" if f.name == "pack.yaml" else "schema.json"
            assert f.read_text().startswith(f"# yaml-language-server: $schema=../../{schema}\n"), f
    for entry in rules.entries:
        pack = Path(entry.location.file).resolve().parent.name
        # Qualified by the pack (`pack/rule`); the rule's own name is prefixed by it too.
        prefix, _, name = entry.rule.name.partition("/")
        assert prefix == pack and (name == pack or name.startswith(pack + "-")), (entry.rule.name, pack)


@pytest.mark.skipif(not PACKS, reason="no packs shipped under rules/ yet")
def test_telemetry_route_example_passes_its_tests():
    example = RULES / "telemetry" / "examples" / "routes.yaml"
    r = _run("test", str(example))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].endswith(" passed, 0 failed")


def _yaml_blocks(md: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", md.read_text(), re.DOTALL)


@pytest.mark.skipif(not PACKS, reason="no packs shipped under rules/ yet")
@pytest.mark.parametrize("readme", [RULES / "README.md", *[p / "README.md" for p in PACKS]],
                         ids=lambda p: p.parent.name)
def test_readme_include_examples_load(readme, tmp_path):
    """The `include:` examples in the READMEs, with `../rules/` pointing at the real packs."""
    blocks = [b for b in _yaml_blocks(readme) if "include:" in b and "..." not in b]
    assert blocks, f"{readme} shows no include example"
    for i, block in enumerate(blocks):
        f = tmp_path / f"example{i}.yaml"
        f.write_text(block.replace("../rules/", f"{RULES}/"))
        rules = load_rules([str(f)], env={})
        assert rules.entries


@pytest.mark.skipif(not PACKS, reason="no packs shipped under rules/ yet")
def test_packs_copied_into_a_configmap_validate_and_switch_by_vars(tmp_path):
    """rules/README.md, way 1: the packs' files as ConfigMap data, the switch in a `vars:` block."""
    files = {p.name: p.read_text() for pack in PACKS for p in sorted(pack.iterdir())
             if p.is_file() and p.suffix in (".yaml", ".html", ".htpasswd") and not p.name.endswith(".tests.yaml")
             and p.name != "pack.yaml"}
    files["maintenance.yaml"] = "vars:\n  MAINTENANCE: true\n" + files["maintenance.yaml"]
    data = "".join(f"  {name}: |\n{textwrap.indent(text, '    ')}" for name, text in files.items())
    manifest = tmp_path / "web-decorator-rules.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-decorator-rules\n"
                        "data:\n" + data)
    r = _run("validate", str(manifest))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run("explain", "GET /", "--rules", str(manifest), "--header", "Accept: text/html")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"maintenance-page\s+request\s+respond\s+MATCH", r.stdout), r.stdout


# -- all packs together through the real tunnel ----------------------------------------------------

class App:
    """/status/NNN answers NNN in plain text (as a bare framework would), with Server and
    X-Powered-By; /slow never answers; everything else 200. Counts requests."""

    def __init__(self) -> None:
        self.calls = 0

    async def start(self) -> App:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.calls += 1
                target = head.split(b" ", 2)[1].decode()
                if target == "/slow":
                    await asyncio.sleep(3600)
                status = int(target.split("/")[2]) if target.startswith("/status/") else 200
                body = f"app says {status}".encode()
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nServer: gunicorn\r\n"
                             b"X-Powered-By: Flask\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    def record(self, ex, fields) -> None:
        self.statuses.append(ex.status)


@pytest.fixture
async def packs():
    """packs(env, app_up=True) -> (client, app, runtime, recorder): every shipped pack loaded
    together in front of a real app (or, app_up=False, a closed port) on loopback."""
    made = []

    async def build(env: dict, app_up: bool = True):
        app = await App().start()
        port = app.port if app_up else closed_port()
        rec = Recorder()
        rt = Runtime(recorder=rec, pod="packs", backoff=0.01)
        await rt.start()
        server = ProxyServer(target=("127.0.0.1", port), limits=Limits(upstream_timeout=0.5),
                             hooks=compile_rules(load_rules([str(RULES)], env=env), rt))
        await server.start(host="127.0.0.1", port=0)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10)
        made.append((client, server, rt, app))
        return client, app, rt, rec
    yield build
    for client, server, rt, app in made:
        await client.aclose()
        await server.shutdown(drain_timeout=1.0)
        await rt.close(timeout=0.2)
        app.server.close()


def _secured(r: httpx.Response) -> None:
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["strict-transport-security"] == "max-age=31536000"
    assert "server" not in r.headers and "x-powered-by" not in r.headers


@pytest.mark.skipif(not PACKS, reason="no packs shipped under rules/ yet")
async def test_all_packs_together_with_the_app_up(packs):
    client, app, rt, rec = await packs({"MAINTENANCE": "false"})
    r = await client.get("/", headers=BROWSER)
    assert (r.status_code, r.text) == (200, "app says 200")
    _secured(r)
    r = await client.get("/status/404", headers=BROWSER)
    assert r.status_code == 404 and "Page not found" in r.text and "/status/404" in r.text
    _secured(r)
    r = await client.get("/status/500", headers={"Accept": "application/json"})
    assert r.status_code == 500 and r.json()["error"] == "server_error"
    _secured(r)
    r = await client.get("/slow")  # the proxy's own 504, in JSON for a non-browser
    assert r.status_code == 504 and r.json() == {
        "error": "server_error", "status": 504,
        "message": "The service could not answer this request. Please retry later."}
    _secured(r)
    assert rec.statuses == [200, 404, 500, 504]


@pytest.mark.skipif(not PACKS, reason="no packs shipped under rules/ yet")
async def test_all_packs_together_with_the_app_down_page_and_alert(packs):
    receiver = await Receiver([(200, {})]).start()
    try:
        client, _, rt, rec = await packs({"ALERT_URL": receiver.url, "ALERT_THRESHOLD": "3 in 60s",
                                          "MAINTENANCE": "false"}, app_up=False)
        r = await client.get("/", headers=BROWSER)
        assert r.status_code == 502 and "Something went wrong on our side" in r.text
        assert r.headers["cache-control"] == "no-store"
        _secured(r)
        for _ in range(4):
            r = await client.post("/api/orders", json={})
            assert r.status_code == 502 and r.json()["status"] == 502
        async with asyncio.timeout(5):
            while not receiver.events:
                await asyncio.sleep(0.01)
        await rt.close(timeout=1.0)
        assert len(receiver.events) == 1  # threshold reached once, then the cooldown
        event = receiver.events[0]
        assert (event["rule"], event["count"], event["response"]) == ("alert-5xx/alert-5xx", 3, {"status": 502})
        assert rec.statuses == [502] * 5
    finally:
        await receiver.close()


@pytest.mark.skipif(not PACKS, reason="no packs shipped under rules/ yet")
async def test_all_packs_together_in_maintenance(packs):
    client, app, _, rec = await packs({"MAINTENANCE": "true"})
    r = await client.get("/account", headers=BROWSER)
    assert r.status_code == 503 and "maintenance" in r.text
    assert r.headers["retry-after"] == "600"
    _secured(r)  # security headers apply to the maintenance page too
    r = await client.get("/api/orders")
    assert r.status_code == 503 and r.json()["error"] == "maintenance"
    assert app.calls == 0
    r = await client.get("/healthz")
    assert (r.status_code, r.text, app.calls) == (200, "app says 200", 1)
    assert rec.statuses == [503, 503, 200]
