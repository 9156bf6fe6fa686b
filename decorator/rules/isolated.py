"""Load and validate rules in a short-lived child process; the caller gets a plain RuleSet.

Owns the child's command line and the pickle handed back (a plain RuleSet, or the located errors).
pydantic, ruamel.yaml and the models live and die in the child, so the serving process never holds
them. Must not import rules.load, rules.models or pydantic at module level (only the child does).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Sequence

from decorator.errors import Location, RuleError, RulesInvalid
from decorator.rules.ruleset import RuleSet

_TIMEOUT = 120.0  # a load that takes longer is a bug; the last good rules stay active


def load_isolated(paths: Sequence[str]) -> RuleSet:
    """load_rules(paths) in a child Python -> a plain RuleSet (RulesInvalid with the same errors).

    The child sees this process's environment (for ${VAR}) and working directory."""
    proc = subprocess.run([sys.executable, "-m", "decorator.rules.isolated", *map(os.fspath, paths)],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=_TIMEOUT, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"the rules loader exited with status {proc.returncode}: " + " | ".join(tail))
    kind, payload = pickle.loads(proc.stdout)
    if kind == "invalid":
        raise RulesInvalid([RuleError(Location(*loc), msg) for loc, msg in payload])
    return payload


def _child(paths: list[str]) -> int:
    # The pickle goes to the real stdout; anything an action plugin prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    from decorator.rules.load import load_rules
    from decorator.rules.ruleset import plain_ruleset
    try:
        result = ("ok", plain_ruleset(load_rules(paths)))
    except RulesInvalid as e:
        result = ("invalid", [((x.location.file, x.location.line, x.location.col), x.message)
                              for x in e.errors])
    out.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
