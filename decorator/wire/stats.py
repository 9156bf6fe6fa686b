"""The numbers both sides of the wire agree on: latency histogram bounds, status classes, name lengths.

Kept free of pydantic so the sidecar's telemetry can build payloads without loading the wire models
(wire.models enforces the same numbers on arrival). Imports nothing.
"""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds (milliseconds, inclusive) of the latency histogram buckets; one more bucket counts the rest.
LATENCY_BOUNDS_MS: tuple[int, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
N_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# Longest strings a payload may carry: the sidecar cuts to these, the dashboard refuses longer.
MAX_TEXT = 2048      # endpoint names, sample paths and routes
MAX_SHORT = 256      # ids and other short labels (a sample's request_id)
MAX_METHOD = 32      # an HTTP method


def bucket_index(ms: float) -> int:
    """Index of the histogram bucket that counts a latency of `ms` milliseconds."""
    return bisect_left(LATENCY_BOUNDS_MS, ms)
