"""decorator: a sidecar that decorates a running HTTP service with declarative YAML rules."""

from decorator import build as _build

__version__ = "0.1.0"

# First, before any submodule loads: a compiled hot-path module runs only when it was built from the
# `.py` beside it and DECORATOR_PURE_PYTHON is unset (decorator/build.py).
_build.install()
