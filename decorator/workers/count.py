"""How many workers: `--workers N|auto` -> a number and the reason it was chosen.

Owns `auto`: the cgroup CPU quota rounded up (v2 cpu.max, v1 cfs quota/period), else the CPUs this
process may run on, capped. Imports errors and telemetry.resources (its cgroup finder); nothing else.
"""

from __future__ import annotations

import math
import os

from decorator.errors import UsageError

MAX_AUTO = 8      # `auto` on a big node with no CPU limit: a sidecar beside an app, not the node's server
MAX_WORKERS = 64  # an explicit N past this is a typo, not a plan


def auto_workers(root: str = "/", affinity: int | None = None) -> tuple[int, str]:
    """(workers, why) from the cgroup quota, else the affinity mask; at most MAX_AUTO."""
    from decorator.telemetry.resources import Cgroup

    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity = os.cpu_count() or 1
    quota = Cgroup(root).read()["cpu_limit_cores"]
    if quota is not None:
        n = min(max(1, math.ceil(quota - 1e-9)), affinity)
        why = f"cgroup CPU limit {quota:g} cores" + (f", {affinity} CPUs allowed" if n < math.ceil(quota) else "")
    else:
        n = affinity
        why = f"no cgroup CPU limit, {affinity} CPUs allowed"
    if n > MAX_AUTO:
        n, why = MAX_AUTO, why + f", capped at {MAX_AUTO}"
    return n, f"auto: {why}"


def parse_workers(text: str, what: str) -> tuple[int, str]:
    """'auto' or a whole number 1..MAX_WORKERS -> (workers, why)."""
    text = str(text).strip().lower()
    if text == "auto":
        return auto_workers()
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"{what}: expected a number of workers or 'auto', got {text!r}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise UsageError(f"{what}: expected 1 to {MAX_WORKERS} workers or 'auto', got {n}")
    return n, f"{what} {n}"
