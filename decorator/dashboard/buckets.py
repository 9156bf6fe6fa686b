"""The numbers both sides of the wire agree on: latency histogram bounds and status classes.

Kept free of pydantic so the sidecar's telemetry can use them without loading the wire models.
Imports nothing.
"""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds (milliseconds) of the latency histogram buckets; one more bucket counts the rest.
LATENCY_BOUNDS_MS: tuple[int, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
N_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def bucket_index(ms: float) -> int:
    """Index of the histogram bucket that counts a latency of `ms` milliseconds."""
    return bisect_left(LATENCY_BOUNDS_MS, ms)
