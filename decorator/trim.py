"""Hands freed heap memory back to the operating system after start-up and after each rules swap.

Owns the one call to glibc's `malloc_trim(0)` (a no-op elsewhere: musl, macOS). Imports only the
standard library; knows nothing of rules, proxy or telemetry.
"""

from __future__ import annotations

import ctypes
import gc

_trim = None
try:
    # The process's own symbols include libc's; ctypes.util.find_library would cost more memory
    # (it imports subprocess and friends) than some trims give back.
    _trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # not glibc: nothing to trim with
    pass


def release_memory() -> None:
    """Collect cycles, then return the free pages at the top and inside the malloc arenas.

    Import and build garbage (a rule set's parse trees, a replaced rule set) is freed by Python
    but glibc keeps the pages mapped; the sidecar's RSS is what a pod's memory limit counts."""
    gc.collect()
    if _trim is not None:
        _trim(0)
