"""Helpers for the pack tests: write a pack directory, run the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RULE = """\
rules:
  - name: {rule}
    match: {{ path: "${{{var}:-/x}}" }}
    headers: {{ response: {{ set: {{ X-From: "{name} {version}" }} }} }}
"""


def make_pack(parent: Path, name: str, version: str = "1.0.0", *, rule: str = "tag", requires: str | None = None,
              params: str | None = None, rules: str | None = None, var: str = "PATH_GLOB") -> Path:
    """parent/name: a pack whose rule `rule` sets X-From: "name version" on responses to its path."""
    d = parent / name
    d.mkdir(parents=True)
    manifest = f"name: {name}\nversion: {version}\ndescription: test pack {name}\n"
    if requires:
        manifest += f"requires: \"{requires}\"\n"
    manifest += "params:\n" + textwrap.indent(textwrap.dedent(params or f"""\
        path: {{ default: /x, var: {var}, description: where }}
        """), "  ")
    (d / "pack.yaml").write_text(manifest)
    (d / f"{name}.yaml").write_text(rules or RULE.format(rule=rule, var=var, name=name, version=version))
    return d


def run(*args: str, env: dict | None = None, cwd: Path | None = None, python: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "DECORATOR_PACK_PATH"}
    full.update(env or {})
    return subprocess.run([python or sys.executable, "-m", "decorator", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full, timeout=timeout, check=False)
