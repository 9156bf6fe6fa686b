"""The pack tools as real subprocesses: `pack new` passes `decorator test` as generated, `pack show`,
and `examples/packs/acme-errors` built and installed into a fresh venv, then used by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

from ruamel.yaml import YAML

from tests.packs.helpers import ROOT, run

EXAMPLE = ROOT / "examples" / "packs" / "acme-errors"


def test_pack_new_scaffolds_a_pack_that_passes_its_tests(tmp_path):
    r = run("pack", "new", "hello-pack", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    d = tmp_path / "hello-pack"
    assert sorted(p.name for p in d.iterdir()) == [
        "README.md", "hello-pack-page.html", "hello-pack.tests.yaml", "hello-pack.yaml", "pack.yaml"]
    r = run("test", str(d))
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "3 passed, 0 failed", r.stdout + r.stderr
    # Usable by name from a file beside it, with its params, as its README says.
    readme = (d / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "web.yaml").write_text(example)
    r = run("explain", "GET /hello", "--rules", str(tmp_path / "web.yaml"))
    assert r.returncode == 0, r.stderr
    assert any(ln.startswith("hello-pack/page ") and "MATCH" in ln for ln in r.stdout.splitlines()), r.stdout
    r = run("pack", "new", "hello-pack", "--dir", str(tmp_path))
    assert r.returncode == 2 and "already exists" in r.stderr
    r = run("pack", "new", "Bad Name", "--dir", str(tmp_path))
    assert r.returncode == 2 and "pack name 'Bad Name'" in r.stderr


def test_pack_show_lists_params_rules_tests_and_source():
    r = run("pack", "show", "maintenance")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("maintenance 1.0.0 - A switchable 503 page")
    assert f"source:   {ROOT / 'rules' / 'maintenance'} (shipped)" in out
    assert "  retry_after: integer, default 600, ${MAINTENANCE_RETRY_AFTER}\n      Seconds, sent as Retry-After" in out
    assert "  maintenance/maintenance-page - " in out
    assert "tests: " in out and "\n  maintenance off: requests pass" not in out  # names come from the pack
    r = run("pack", "show", "nope")
    assert r.returncode == 2 and "pack 'nope' not found" in r.stderr


def _venv(tmp_path: Path) -> Path:
    """A fresh venv holding only the built example distribution; decorator and its dependencies
    come from this environment (a .pth file), decorator itself from the worktree (PYTHONPATH)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "decorator-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = tmp_path / "acme-errors"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index",
                        "--no-build-isolation", "--no-deps", str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return py


def test_the_example_distribution_installed_in_a_fresh_venv_is_used_by_name(tmp_path):
    py = _venv(tmp_path)
    # Not there without the distribution...
    svc = tmp_path / "svc"
    svc.mkdir()
    (svc / "web.yaml").write_text(textwrap.dedent("""\
        include:
          - pack: acme-errors
            version: "^1.0"
            with: { support: help@shop.example }
        tests:
          - name: an API 500 names the shop's support address
            request: { method: GET, path: /api/x, headers: { Accept: application/json } }
            upstream: { status: 500 }
            expect:
              body: '{"error": "server_error", "status": 500, "support": "help@shop.example"}'
              fired: [acme-errors/json]
        """))
    r = run("validate", str(svc))
    assert r.returncode == 1 and "pack 'acme-errors' not found" in r.stdout
    # ...found through its entry point once installed.
    r = run("pack", "list", "--beside", str(svc), python=str(py))
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("acme-errors "))
    assert row.split()[1:5] == ["1.0.0", "entry", "point", "of"] and "acme-decorator-packs" in row
    assert "/site-packages/acme_decorator_packs/acme_errors" in row
    r = run("test", str(svc), python=str(py))
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "1 passed, 0 failed", r.stdout + r.stderr
    r = run("pack", "show", "acme-errors", python=str(py))
    assert r.returncode == 0 and "  acme-errors/page - " in r.stdout and "tests: 4" in r.stdout, r.stdout + r.stderr
    # The lock records the installed pack; the hash is the source tree's (code is not content).
    r = run("pack", "lock", str(svc), python=str(py))
    assert r.returncode == 0, r.stderr
    entry = YAML(typ="safe").load((svc / "packs.lock").read_text())["packs"]["acme-errors"]
    from decorator.packs.resolve import dir_hash
    assert entry["version"] == "1.0.0" and "entry point of acme-decorator-packs" in entry["source"]
    assert entry["sha256"] == dir_hash(str(EXAMPLE / "src" / "acme_decorator_packs" / "acme_errors"))
    assert run("validate", str(svc), python=str(py)).returncode == 0
