"""Helpers for the Kubernetes tests: a tiny JSON rules format and a bounded wait.

The JSON `build` stands in for load_rules + compile_rules so the Reloader is tested on its own;
test_k8s_reload_engine.py repeats the important cases with the real rules engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from decorator.errors import Location, RuleError, RulesInvalid


def json_build(paths):
    """(digest, compiled) for `{"rules": [names...]}` files; RulesInvalid with file:line:col otherwise."""
    files: list[str] = []
    names: list[str] = []
    errors: list[RuleError] = []
    h = hashlib.sha256()
    for p in paths:
        listing = ([os.path.join(p, n) for n in sorted(os.listdir(p)) if n.endswith(".json")
                    and not n.startswith(".")] if os.path.isdir(p) else [p])
        for f in listing:
            text = Path(f).read_text()
            files.append(f)
            h.update(f.encode() + b"\0" + text.encode() + b"\0")
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                errors.append(RuleError(Location(f, e.lineno, e.colno), e.msg))
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
                errors.append(RuleError(Location(f, 1, 1), 'expected {"rules": [...]}'))
                continue
            names.extend(doc["rules"])
    if errors:
        raise RulesInvalid(errors)
    ruleset = SimpleNamespace(files=files, rules=[SimpleNamespace(name=n) for n in names],
                              digest=h.hexdigest())
    return ruleset.digest, SimpleNamespace(ruleset=ruleset)


def rules_json(*names: str) -> str:
    return json.dumps({"rules": list(names)}, indent=2) + "\n"


async def until(predicate, timeout: float = 2.0, what: str = "condition") -> None:
    """Wait (polling) for predicate() to hold; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)
