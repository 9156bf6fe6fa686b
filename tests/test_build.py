"""The compiled/pure switch, through real builds and real interpreters: setup.py compiles (or falls back to
pure Python without a C compiler), `DECORATOR_PURE_PYTHON=1` forces the `.py`, and an edited `.py` is never
shadowed by its stale compiled module. Builds run in temporary copies of the package, never in the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import pytest

from tests.support import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
CC = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
HAS_COMPILER = shutil.which(CC) is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason=f"no C compiler ({CC}): nothing compiles here")
# One small module keeps each build to seconds; the mechanism is the same for every module in the list.
MODULE = "decorator/proxy/http.py"
PROBE = ("import json, warnings; warnings.simplefilter('always')\n"
         "import decorator.proxy.http as m\nfrom decorator import build\n"
         "print(json.dumps({'file': m.__file__, 'mode': build.mode(), 'why': build.summary()['modules']}))")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DECORATOR_PURE_PYTHON", "PYTHONPATH")}
    env["CFLAGS"] = "-O0"  # a test build checks the mechanism, not the machine code: compile fast
    env.update(extra)
    return env


def _copy_source(dest: Path) -> Path:
    """The package as a fresh checkout has it (no build outputs), with setup.py compiling just MODULE."""
    shutil.copytree(ROOT / "decorator", dest / "decorator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "_build_manifest.json"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    setup, n = re.subn(r"COMPILED_MODULES = \[.*?\]", f"COMPILED_MODULES = [{MODULE!r}]",
                       (ROOT / "setup.py").read_text(), count=1, flags=re.S)
    assert n == 1, "setup.py no longer has a COMPILED_MODULES list"
    (dest / "setup.py").write_text(setup)
    return dest


def _build_in_place(tree: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=_env(**env),
                          capture_output=True, text=True, timeout=300)


def _probe(cwd: Path, **env: str) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=_env(**env), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = _copy_source(tmp_path_factory.mktemp("built"))
    r = _build_in_place(tree)
    assert r.returncode == 0, r.stderr
    return tree


@needs_compiler
def test_this_checkout_runs_compiled():
    """`make test` compiles first; a failure here after editing a hot-path module means `make` rebuilds."""
    r = subprocess.run([sys.executable, "-m", "decorator", "--version"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("(compiled)"), (r.stdout, r.stderr)
    forced = subprocess.run([sys.executable, "-m", "decorator", "--version"], cwd=ROOT,
                            env=_env(DECORATOR_PURE_PYTHON="1"), capture_output=True, text=True, timeout=60)
    assert forced.stdout.strip().endswith("(pure Python)"), forced.stdout


def test_an_unbuilt_checkout_runs_pure_python(tmp_path: Path):
    tree = _copy_source(tmp_path)
    r = subprocess.run([sys.executable, "-m", "decorator", "--version"], cwd=tree, env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "decorator 0.1.0 (pure Python)", (r.stdout, r.stderr)
    info, err = _probe(tree)
    assert info["file"].endswith("http.py") and info["mode"] == "pure Python" and not err


@needs_compiler
def test_a_fresh_build_runs_compiled_unless_pure_python_is_forced(built: Path):
    info, err = _probe(built)
    assert info["file"].endswith(sysconfig.get_config_var("EXT_SUFFIX")), info
    assert info["mode"] == "compiled" and info["why"] == {"decorator.proxy.http": "compiled"}
    assert "StaleBuildWarning" not in err
    info, _ = _probe(built, DECORATOR_PURE_PYTHON="0")  # "0" means off, as unset
    assert info["mode"] == "compiled"

    info, err = _probe(built, DECORATOR_PURE_PYTHON="1")
    assert info["file"] == str(built / MODULE), info
    assert info["mode"] == "pure Python"
    assert info["why"] == {"decorator.proxy.http": "forced (DECORATOR_PURE_PYTHON=1)"}
    assert "StaleBuildWarning" not in err  # forcing is a choice, not a problem


@needs_compiler
def test_an_edited_module_runs_from_its_source_until_make_rebuilds_it(built: Path, tmp_path: Path):
    tree = tmp_path / "tree"
    shutil.copytree(built, tree)  # a built checkout, compiled module and build record included
    with open(tree / MODULE, "a") as f:
        f.write("\nEDITED = True\n")
    r = subprocess.run([sys.executable, "-c", "import decorator.proxy.http as m; print(m.EDITED)"], cwd=tree,
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr  # the edit is what runs
    warnings = [ln for ln in r.stderr.splitlines() if "StaleBuildWarning" in ln]
    assert len(warnings) == 1, r.stderr
    assert "decorator.proxy.http" in warnings[0] and "`make` rebuilds it" in warnings[0]
    info, _ = _probe(tree)
    assert info["mode"] == "pure Python"
    assert info["why"]["decorator.proxy.http"].startswith("stale: http.py changed since the build")

    # A .pxd is part of what a module is built from: adding one makes the build stale too.
    r = _build_in_place(tree)
    assert r.returncode == 0, r.stderr
    info, err = _probe(tree)
    assert info["mode"] == "compiled" and "StaleBuildWarning" not in err
    (tree / MODULE).with_suffix(".pxd").write_text("# types would go here\n")
    info, err = _probe(tree)
    assert info["mode"] == "pure Python" and "StaleBuildWarning" in err


def test_without_a_c_compiler_the_install_is_pure_python_with_a_warning(tmp_path: Path):
    src = _copy_source(tmp_path / "src")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(src)],
                       env=_env(CC="/bin/false", LDSHARED="/bin/false"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "decorator.proxy.http stays pure Python (not compiled)" in r.stdout + r.stderr
    assert not list(site.glob("decorator/**/*.so"))
    info, err = _probe(tmp_path, PYTHONPATH=str(site))
    assert info["file"] == str(site / MODULE), info
    assert info["mode"] == "pure Python" and not err
    assert info["why"]["decorator.proxy.http"].startswith("not built: CompileError"), info


@pytest.mark.parametrize("pure", ["", "1"])
def test_status_on_the_admin_port_reports_the_build(pure: str, tmp_path: Path):
    version = subprocess.run([sys.executable, "-m", "decorator", "--version"], cwd=ROOT,
                             env=_env(DECORATOR_PURE_PYTHON=pure), capture_output=True, text=True, timeout=60)
    port, admin = free_port(), free_port()
    with open(tmp_path / "sidecar.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "decorator", "run", "--host", "127.0.0.1", "--port",
                                 str(port), "--target", "127.0.0.1:1", "--admin-port", str(admin)],
                                cwd=tmp_path, env=_env(DECORATOR_PURE_PYTHON=pure), stdout=log, stderr=log)
        try:
            wait_port(admin, proc)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as r:
                build = json.load(r)["build"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert version.stdout.strip() == f"decorator 0.1.0 ({build['mode']})"
    assert "decorator.proxy.tunnel" in build["modules"] or not HAS_COMPILER  # a build lists its modules
    if pure:
        assert build["mode"] == "pure Python"
        assert set(build["modules"].values()) <= {"forced (DECORATOR_PURE_PYTHON=1)"}, build


@needs_compiler
def test_one_changed_module_sends_every_compiled_module_back_to_source(tmp_path: Path):
    """The compiled modules share cdef types (telemetry's aggregator cimports hooks.Exchange): a
    compiled aggregator beside a pure hooks module would not import. All or none, with one warning."""
    tree = _copy_source(tmp_path / "tree")
    setup = (tree / "setup.py").read_text().replace(
        f"COMPILED_MODULES = [{MODULE!r}]",
        "COMPILED_MODULES = ['decorator/proxy/hooks.py', 'decorator/telemetry/aggregate.py']")
    (tree / "setup.py").write_text(setup)
    r = _build_in_place(tree)
    assert r.returncode == 0, r.stderr
    probe = ("import warnings; warnings.simplefilter('always')\n"
             "import decorator.telemetry.aggregate as a, decorator.proxy.hooks as h\n"
             "from decorator import build\nprint(a.__file__, h.__file__, build.mode())")
    run = lambda: subprocess.run([sys.executable, "-c", probe], cwd=tree, env=_env(),  # noqa: E731
                                 capture_output=True, text=True, timeout=60)
    r = run()
    assert r.returncode == 0 and r.stdout.split()[-1] == "compiled", r.stderr
    with open(tree / "decorator/proxy/hooks.py", "a") as f:
        f.write("\nEDITED = True\n")
    r = run()
    assert r.returncode == 0, r.stderr  # the aggregator still imports: it runs from its .py too
    agg, hooks, *mode = r.stdout.split()
    assert agg.endswith("aggregate.py") and hooks.endswith("hooks.py") and " ".join(mode) == "pure Python"
    warned = [ln for ln in r.stderr.splitlines() if "StaleBuildWarning" in ln]
    assert len(warned) == 1 and "hooks.py changed since the build" in warned[0], r.stderr
