"""decorator: a sidecar that decorates a running HTTP service with declarative YAML rules."""

__version__ = "0.1.0"
