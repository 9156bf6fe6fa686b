"""The wire contract between sidecars and the dashboard process, which both sides import.

stats.py is the pydantic-free half the sidecar's telemetry uses at run time (idle RSS); models.py
holds the pydantic payload models the dashboard validates with. Imports nothing, so importing
`decorator.wire.stats` never loads pydantic. The package must not import proxy, rules, telemetry or dashboard.
"""
