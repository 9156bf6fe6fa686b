"""Every shipped pack under rules/ validates and passes its own tests (real subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from decorator.rules.load import pack_units

ROOT = Path(__file__).resolve().parents[2]
PACKS = [Path(u) for u in pack_units(str(ROOT / "rules"))] if any((ROOT / "rules").glob("*/*.y*ml")) else []


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
    r = _run("validate", str(ROOT / "rules"))
    assert r.returncode == 0, r.stdout + r.stderr
