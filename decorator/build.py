"""Compiled or pure Python: which hot-path modules run as Cython extensions, which from their `.py`, and why.

Owns the import hook behind `DECORATOR_PURE_PYTHON` and the stale-build check against `_build_manifest.json`
(written by setup.py). Imports only the standard library: `decorator/__init__.py` and setup.py load it first.
"""

from __future__ import annotations

import os
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec, PathFinder
from importlib.util import spec_from_file_location
from pathlib import Path
from typing import NamedTuple

PURE_ENV = "DECORATOR_PURE_PYTHON"
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "_build_manifest.json"


class StaleBuildWarning(RuntimeWarning):
    """A compiled module is older than its `.py`: the `.py` runs instead until `make` rebuilds it."""


class Module(NamedTuple):
    name: str
    compiled: bool
    why: str  # "compiled", or why it runs as pure Python: forced, stale, not built


def source_hash(py: Path) -> str:
    """What a compiled module was built from: its `.py` and, when there is one, the `.pxd` that types it."""
    import hashlib  # here, not at the top: only a build that has compiled modules pays for it
    h = hashlib.sha256(py.read_bytes())
    pxd = py.with_suffix(".pxd")
    if pxd.exists():
        h.update(b"\0pxd\0" + pxd.read_bytes())
    return h.hexdigest()


def forced_pure() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


_manifest_cache: dict[str, dict] | None = None
_decisions: dict[str, Module] = {}  # what the import hook did, for modules already imported
_warned = False


def _records() -> dict[str, dict]:
    global _manifest_cache
    if _manifest_cache is None:
        import json

        try:
            _manifest_cache = json.loads(MANIFEST.read_text())["modules"]
        except (OSError, ValueError, KeyError, TypeError):
            _manifest_cache = {}  # no build (or an unreadable record): no compiled module is trusted
    return _manifest_cache


def _source(name: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*name.split(".")).with_suffix(".py")


def _has_extension(name: str) -> bool:
    base = PACKAGE_DIR.parent.joinpath(*name.split("."))
    return any(base.with_name(base.name + suffix).exists() for suffix in EXTENSION_SUFFIXES)


_UNSET = object()
_stale: object = _UNSET  # why the whole build is stale (a str), or None; worked out once


def _build_stale() -> str | None:
    """Why no compiled module may load: one of them (or its .pxd) changed since the build.

    All or none: the compiled modules share their cdef types (the tunnel, telemetry and the rules
    cimport `hooks.Exchange`), so a compiled module next to a pure copy of one it cimports does not
    even import. One changed source therefore sends every module back to its `.py`.
    """
    global _stale
    if _stale is _UNSET:
        records = _records()
        failed = sorted(name for name, rec in records.items() if not rec.get("compiled"))
        changed = sorted(_source(name).name for name, rec in records.items()
                         if rec.get("compiled") and _source(name).exists()
                         and rec.get("sha256") != source_hash(_source(name)))
        if failed:
            _stale = (f"not built: the build could not compile {', '.join(failed)} (the compiled modules "
                      f"share types, so all run from source)")
        elif changed:
            _stale = (f"stale: {', '.join(changed)} changed since the build (the compiled modules share "
                      f"types, so all run from source); `make` rebuilds it")
        else:
            _stale = None
    return _stale  # type: ignore[return-value]


def _decide(name: str, py: Path) -> Module:
    """For a module that has a compiled extension beside its `.py`: may that extension be loaded?"""
    if forced_pure():
        return Module(name, False, f"forced ({PURE_ENV}=1)")
    record = _records().get(name)
    if record is None:
        return Module(name, False, "stale: its compiled module has no build record; `make` rebuilds it")
    if not record.get("compiled"):
        return Module(name, False, "stale: the last build could not compile it; `make` rebuilds it")
    stale = _build_stale()  # all or none (see there)
    if stale is not None:
        return Module(name, False, stale)
    return Module(name, True, "compiled")


class _Finder:
    """Sits before the path finder: a decorator module with an extension loads it only when it is trusted.

    A plain class (the finder protocol is one method): importlib.abc would cost milliseconds at start-up.
    """

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        if path is None or not fullname.startswith("decorator."):
            return None
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is None or not isinstance(spec.loader, ExtensionFileLoader) or spec.origin is None:
            return None  # the ordinary finders take it from here
        py = Path(spec.origin).with_name(fullname.rpartition(".")[2] + ".py")
        if not py.exists():
            return None  # shipped compiled only: nothing to fall back to
        module = _decide(fullname, py)
        _decisions[fullname] = module
        if module.compiled:
            return spec
        global _warned
        if module.why.startswith("stale") and not _warned:
            _warned = True  # one warning: the reason is the same for every module
            warnings.warn(f"decorator: {fullname} runs from {py} as pure Python, not compiled: "
                          f"{module.why.removeprefix('stale: ')}", StaleBuildWarning, stacklevel=2)
        return spec_from_file_location(fullname, py)


def install() -> None:
    """Put the finder first on `sys.meta_path` (once); `decorator/__init__.py` calls it before any import."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def modules() -> dict[str, Module]:
    """Every module the build tried to compile, or that has a compiled module: how it runs and why."""
    records = _records()
    out: dict[str, Module] = {}
    for name in sorted(set(records) | set(_decisions)):
        if name in _decisions:
            out[name] = _decisions[name]
        elif _has_extension(name):
            out[name] = _decide(name, _source(name))
        elif name in records and not records[name].get("compiled"):
            out[name] = Module(name, False, f"not built: {records[name].get('reason', 'unknown')}")
        else:
            out[name] = Module(name, False, "not built: its compiled module is missing; `make` rebuilds it")
    return out


def mode() -> str:
    """'compiled', 'pure Python', or 'partly compiled (N of M modules)'."""
    mods = modules().values()
    n = sum(m.compiled for m in mods)
    if n == 0:
        return "pure Python"
    if n == len(mods):
        return "compiled"
    return f"partly compiled ({n} of {len(mods)} modules)"


def summary() -> dict:
    """The `build` section of `/status`."""
    return {"mode": mode(), "modules": {m.name: m.why for m in modules().values()}}
