"""`python -m fuzz [requests] [responses] [rules] [--inputs N]`: run the campaigns, one closing line each.

Exit 1 when any target had a failure. FUZZ_INPUTS sets the default inputs per target (1,000,000),
FUZZ_SEED makes a run repeatable. Each failure is printed with the input that caused it (repr).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

TARGETS = {"requests": "fuzz.requests_target", "responses": "fuzz.responses_target", "rules": "fuzz.rules_target"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz")
    p.add_argument("targets", nargs="*", default=list(TARGETS))
    p.add_argument("--inputs", type=int, default=int(os.environ.get("FUZZ_INPUTS", "1000000")))
    args = p.parse_args(argv)
    seed = int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None
    lines, failed = [], False
    for name in args.targets or list(TARGETS):
        result = importlib.import_module(TARGETS[name]).run(args.inputs, seed)
        for what, data in result.failures[:50]:
            print(f"{name}: FAIL {what}\n    input: {data!r}", file=sys.stderr)
        print(result.rate(), file=sys.stderr)
        print(result.line(), flush=True)
        lines.append(result.line())
        failed = failed or bool(result.failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
