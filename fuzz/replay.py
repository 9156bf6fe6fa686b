"""`python -m fuzz.replay TARGET FILE`: judge again the inputs a campaign printed (`input: b'...'`
lines of its stderr), e.g. after a fix, or to check a finding before making it a regression test."""

from __future__ import annotations

import ast
import sys


def inputs_from(text: str) -> list[bytes]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("input: b"):
            data = ast.literal_eval(line[len("input: "):])
            if data:
                out.append(data)
    return out


def main(argv: list[str]) -> int:
    target, path = argv
    with open(path, encoding="utf-8", errors="replace") as f:
        data = inputs_from(f.read())
    if target == "requests":
        from fuzz.requests_target import replay
    elif target == "responses":
        from fuzz.responses_target import replay
    else:
        from fuzz.rules_target import replay
    result = replay(data)
    for what, d in result.failures:
        print(f"FAIL {what}\n    input: {d!r}")
    print(result.line())
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
