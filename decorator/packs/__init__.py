"""Rule packs that travel: manifests (pack.yaml), resolution by name, packs.lock, ConfigMap export.

The loader (rules.load) asks this package where a pack is and what its params mean; the `decorator
pack` tools live in packs.commands. Must not import proxy, compile or telemetry.
"""
