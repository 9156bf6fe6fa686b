"""Compiles decorator's hot-path modules with Cython in pure-Python mode; the metadata is in pyproject.toml.

The `.py` stays the source (a `.pxd` beside it types it); a module that cannot be compiled (no C compiler,
no Cython, a Cython error) stays pure Python with a warning. Records each module's source hash in
`decorator/_build_manifest.json` so that decorator/build.py never imports a compiled module older than its `.py`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The per-exchange modules. One that does not exist (yet, or any more) is skipped.
COMPILED_MODULES = [
    "decorator/proxy/http.py",
    "decorator/proxy/hooks.py",
    "decorator/proxy/exchange.py",
    "decorator/proxy/tunnel.py",
    "decorator/proxy/upstream.py",
    "decorator/proxy/replies.py",
    "decorator/proxy/driver.py",
    "decorator/telemetry/aggregate.py",
    "decorator/telemetry/metrics.py",
    "decorator/rules/compile.py",
]
# Python semantics stay: annotations are documentation, not C types (an `x: int` would refuse a bool
# subclass, an `x: float` would become a C double); the `.pxd` files are where types are declared.
DIRECTIVES = {"language_level": 3, "annotation_typing": False}
MANIFEST = "_build_manifest.json"

# decorator/build.py hashes sources at import time; loading it by path keeps one definition of the hash
# without importing the package (and its dependencies) into the build.
_spec = importlib.util.spec_from_file_location("_decorator_build", Path("decorator") / "build.py")
_buildinfo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_buildinfo)


class BuildExt(build_ext):
    """Cythonizes and compiles each module on its own. One that fails stays pure Python, and then so do the
    others at run time (decorator/build.py): they share cdef types, so it is all or none."""

    def run(self) -> None:
        # Records describe the extensions in build_lib (inplace builds compile there, then copy).
        self._manifest = Path(self.build_lib) / "decorator" / MANIFEST
        try:
            self._previous = json.loads(self._manifest.read_text())["modules"]
        except (OSError, ValueError, KeyError):
            self._previous = {}
        self._records: dict[str, dict] = {}
        super().run()
        self._manifest.parent.mkdir(parents=True, exist_ok=True)
        self._manifest.write_text(json.dumps({"modules": self._records}, indent=1, sort_keys=True) + "\n")
        if self.inplace:
            for name, record in self._records.items():
                if not record["compiled"] and os.path.exists(self.get_ext_fullpath(name)):
                    os.unlink(self.get_ext_fullpath(name))  # an older in-place build of it must not linger
            package_dir = Path(self.get_finalized_command("build_py").get_package_dir("decorator"))
            self.copy_file(str(self._manifest), str(package_dir / MANIFEST), level=self.verbose)

    def build_extension(self, ext: Extension) -> None:
        source = ext.sources[0]
        digest = _buildinfo.source_hash(Path(source))
        # Timestamps can lie (a checkout restores an older .py); a changed hash always rebuilds.
        force = bool(self.force) or self._previous.get(ext.name, {}).get("sha256") != digest
        forced, self.force = self.force, force
        try:
            from Cython.Build import cythonize

            (generated,) = cythonize([ext], compiler_directives=DIRECTIVES, build_dir="build/cython",
                                     force=force, quiet=True)
            ext.sources = generated.sources  # the same Extension: setuptools keeps state on it
            super().build_extension(ext)
        except Exception as e:  # whatever stops the compile, the module still works as its .py
            reason = f"{type(e).__name__}: {e}".strip().splitlines()[0]
            self.warn(f"decorator: {ext.name} stays pure Python (not compiled): {reason}")
            self._records[ext.name] = {"source": source, "compiled": False, "reason": reason}
            stale = Path(self.get_ext_fullpath(ext.name))
            if stale.exists():
                stale.unlink()
            return
        finally:
            self.force = forced
            ext.sources = [source]
        self._records[ext.name] = {"source": source, "compiled": True, "sha256": digest}


def _extensions() -> list[Extension]:
    # optional: a module whose compile failed has no output to copy in place, and that is not an error.
    return [Extension(path.removesuffix(".py").replace("/", "."), [path], optional=True)
            for path in COMPILED_MODULES if os.path.exists(path)]


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
