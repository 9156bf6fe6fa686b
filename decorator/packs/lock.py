"""packs.lock: the packs a rules directory uses, pinned (version, source, content hash).

Owns the lock's model and its text. `decorator pack lock` writes it; the loader reads it (and
refuses a pack whose content differs); `decorator pack configmap` adds `files:` (the vendored
copy's keys, the index a flat ConfigMap needs). Must not import rules.load or proxy.
"""

from __future__ import annotations

import io

from pydantic import Field
from ruamel.yaml import YAML

from decorator.rules.base import Strict

HEADER = ("# packs.lock: written by `decorator pack lock`; do not edit. With it present, `decorator\n"
          "# validate` and `decorator run` refuse a pack whose version or content differs from this.\n")


class LockEntry(Strict):
    """One pinned pack."""

    version: str = Field(description="The version resolved when the lock was written.")
    source: str = Field(description="Where it was found then (informative).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hash of the pack's content (resolve.content_hash).")
    files: dict[str, str] | None = Field(None, description=(
        "Vendored copy: pack file (relative path) -> file beside this lock holding it. Such files are "
        "not rules files of the directory; `include: [{pack: NAME}]` finds the pack here first."))


class LockFile(Strict):
    lock_version: int = Field(1, description="Format version of this file.")
    packs: dict[str, LockEntry] = Field(default_factory=dict)


def render(lock: LockFile) -> str:
    data = lock.model_dump(exclude_none=True)
    yaml = YAML()
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(data, out)
    return HEADER + out.getvalue()


def index_keys(text: str) -> set[str]:
    """The vendored files a lock's text lists (cheap, forgiving: errors are the loader's to report)."""
    try:
        data = YAML(typ="safe").load(text)
    except Exception:
        return set()
    packs = data.get("packs") if isinstance(data, dict) else None
    out: set[str] = set()
    for entry in (packs or {}).values() if isinstance(packs, dict) else ():
        files = entry.get("files") if isinstance(entry, dict) else None
        if isinstance(files, dict):
            out.update(str(v) for v in files.values())
    return out
