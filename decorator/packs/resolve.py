"""Where packs are found, in order, and what a pack's content is (for the lock's hash).

Owns the search order (beside the including file, DECORATOR_PACK_PATH, the shipped packs, the
`decorator.packs` entry points) and the content hash. Reads directories and entry points only;
parsing manifests and reporting errors is the loader's. Must not import rules.load or proxy.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from decorator.packs.manifest import MANIFESTS

log = logging.getLogger("decorator.packs")

ENTRY_POINT_GROUP = "decorator.packs"
PACK_PATH_ENV = "DECORATOR_PACK_PATH"
SHIPPED_ENV = "DECORATOR_SHIPPED_PACKS"
LOCK_FILE = "packs.lock"
# Where the image copies rules/ (Dockerfile); a source checkout uses its own rules/ first.
IMAGE_PACKS = "/usr/share/decorator/packs"
_SKIP_SUFFIXES = (".py", ".pyc", ".pyo")


@dataclass(frozen=True)
class Candidate:
    """A pack directory somewhere on the search path (its manifest not read yet)."""

    name: str
    dir: str
    origin: str                     # beside, DECORATOR_PACK_PATH, shipped, entry point DIST, vendored
    files: Mapping[str, str] | None = field(default=None, compare=False)  # vendored: rel -> key file

    def where(self) -> str:
        return f"{self.dir} ({self.origin})"


def manifest_in(d: str) -> str | None:
    for m in MANIFESTS:
        p = os.path.join(d, m)
        if os.path.isfile(p):
            return p
    return None


def shipped_dir() -> str | None:
    env = os.environ.get(SHIPPED_ENV)
    if env:
        return env
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "rules")
    for d in (here, IMAGE_PACKS):
        if os.path.isdir(d):
            return d
    return None


def search_dirs(base_dir: str | None, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(origin, directory holding pack directories), in resolution order."""
    out: list[tuple[str, str]] = []
    if base_dir is not None:
        out += [("beside", base_dir), ("beside", os.path.join(base_dir, "packs"))]
    for d in (env.get(PACK_PATH_ENV) or "").split(os.pathsep):
        if d:
            out.append((PACK_PATH_ENV, d))
    shipped = shipped_dir()
    if shipped:
        out.append(("shipped", shipped))
    return out


_entry_points: list[tuple[str, str, str]] | None = None


def entry_point_packs() -> list[tuple[str, str, str]]:
    """(pack name, directory, distribution) of every installed `decorator.packs` entry point. Read
    once per process, only when a pack is looked up by name. The value is a package (its directory
    holds pack.yaml) or `module:attr` with attr a path to the pack directory."""
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points
        found = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            try:
                obj = ep.load()
            except Exception:  # a broken distribution must not stop the others: logged, skipped
                log.exception("pack entry point %s (%s) failed to load", ep.name, dist)
                continue
            path = getattr(obj, "__file__", None)
            d = os.path.dirname(path) if path and ep.attr is None else os.fspath(obj) if isinstance(
                obj, (str, os.PathLike)) else None
            if d is None:
                log.error("pack entry point %s (%s) is neither a package nor a path", ep.name, dist)
                continue
            found.append((ep.name, os.path.abspath(d), dist))
        _entry_points = found
    return _entry_points


def find(name: str, base_dir: str | None, env: Mapping[str, str],
         vendored: Mapping[str, Candidate] | None = None) -> Iterator[Candidate]:
    """Every directory that could be pack `name`, in resolution order, lazily: the installed
    distributions are scanned only when no directory before them had a pack that fits."""
    if vendored and name in vendored:
        yield vendored[name]
    seen = set()
    for origin, d in search_dirs(base_dir, env):
        p = os.path.join(d, name)
        real = os.path.realpath(p)
        if real not in seen and manifest_in(p):
            seen.add(real)
            yield Candidate(name, os.path.normpath(p), origin)
    for ep_name, d, dist in entry_point_packs():
        if ep_name == name:
            yield Candidate(name, d, f"entry point of {dist}")


def all_candidates(base_dir: str | None, env: Mapping[str, str]) -> list[Candidate]:
    """Every pack on the search path (shadowed ones included), in resolution order."""
    out: list[Candidate] = []
    seen = set()
    for origin, d in search_dirs(base_dir, env):
        if not os.path.isdir(d):
            continue
        for sub in sorted(os.listdir(d)):
            p = os.path.join(d, sub)
            real = os.path.realpath(p)
            if real not in seen and manifest_in(p):
                seen.add(real)
                out.append(Candidate(sub, os.path.normpath(p), origin))
    for ep_name, d, dist in entry_point_packs():
        out.append(Candidate(ep_name, d, f"entry point of {dist}"))
    return out


def content_files(d: str) -> list[str]:
    """A pack's content: every file under `d` (relative, '/'-separated, sorted) but hidden ones,
    Python code and caches: rules, manifest, pages, tests and docs travel; code does not."""
    out = []
    for root, dirs, files in os.walk(d):
        dirs[:] = sorted(x for x in dirs if not x.startswith(".") and x != "__pycache__"
                         and not x.endswith(".egg-info"))
        for f in files:
            if f.startswith(".") or f.endswith(_SKIP_SUFFIXES) or f == LOCK_FILE:
                continue
            out.append(os.path.relpath(os.path.join(root, f), d).replace(os.sep, "/"))
    return sorted(out)


def content_hash(files: Mapping[str, bytes]) -> str:
    """sha256 over (relative path, sha256 of content) in path order: what the lock records."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).hexdigest().encode() + b"\n")
    return h.hexdigest()


def dir_hash(d: str) -> str:
    files = {}
    for rel in content_files(d):
        with open(os.path.join(d, rel), "rb") as f:
            files[rel] = f.read()
    return content_hash(files)


def flat_key(pack: str, rel: str) -> str:
    """The ConfigMap key of a vendored pack file: `pack--rel` with `/` as `--` (keys are flat)."""
    return f"{pack}--{rel.replace('/', '--')}"
