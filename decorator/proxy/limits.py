"""What one client may cost the sidecar: the tunnel's limits and timeouts, as one frozen value.

Owned by the proxy (the tunnel reads it; settings only fills it from flags). Imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one client may cost the sidecar (slowloris, header floods, connection floods)."""

    max_header_size: int = 32 * 1024       # whole request head (request line + headers) -> 431 past it
    max_headers: int = 100                 # header fields in one head -> 431 past it
    max_connections: int = 10_000          # concurrent client connections; more are refused
    header_timeout: float = 10.0           # a request head must arrive within this (slowloris) -> 408
    idle_timeout: float = 60.0             # keep-alive connection with no request in flight
    body_timeout: float = 60.0             # no request body byte for this long -> connection closed
    connect_timeout: float = 5.0           # connecting to the app -> 502
    upstream_timeout: float = 60.0         # waiting for the app's response head -> 504
    upstream_idle_timeout: float = 30.0    # pooled idle upstream connection kept this long
    max_idle_upstream: int = 256           # pooled idle upstream connections kept
