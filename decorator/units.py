"""The grammars of durations and sizes that people write: flags, env, the rules language, query strings.

Owns the one spelling of each (`15s`, `500ms`, `2m`, `1h`; `32k`, `1m`) so settings and rules cannot drift.
Imports nothing from the package: anything may take its units from here.
"""

from __future__ import annotations

import re

# Also the JSON-schema pattern of a rules `Duration` string, so what the schema admits is what parses.
DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]i?[bB]?)?\s*$")
_BYTES = {"k": 1024, "m": 1024 * 1024}


def duration_seconds(text: str) -> float | None:
    """'15', '15s', '500ms', '2m', '1h' -> seconds; None when `text` is not a duration."""
    m = _DURATION.match(text)
    if m is None:
        return None
    unit = m.group(2)
    return float(text.strip().removesuffix(unit or "").rstrip()) * _SECONDS[unit]


def size_bytes(text: str) -> int | None:
    """'32768', '32k', '32KiB', '1m' -> bytes (k and m are binary); None when `text` is not a size."""
    m = _SIZE.match(text)
    if m is None:
        return None
    return int(m.group(1)) * _BYTES.get((m.group(2) or " ")[0].lower(), 1)
