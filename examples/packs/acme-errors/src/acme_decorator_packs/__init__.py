"""ACME's rule packs for the decorator sidecar: data only (each subpackage is one pack directory)."""
