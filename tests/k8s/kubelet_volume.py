"""A ConfigMap volume directory written the way the kubelet's AtomicWriter writes it.

Owns the on-disk shape tests reload from: `..2026_11_26_20_10_11.123456789/` holding the payload,
`..data -> ..2026_…` swapped by renaming `..data_tmp` over it, and `key -> ..data/key` per key.
Test helper only; imports nothing from decorator.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

DATA = "..data"
DATA_TMP = "..data_tmp"


class ConfigMapVolume:
    """One mounted ConfigMap volume (pkg/volume/util/atomic_writer.go, steps in its order)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.writes = 0

    def current(self) -> dict[str, bytes]:
        """The payload now visible through `..data`."""
        data = self.root / DATA
        if not data.is_symlink():
            return {}
        base = self.root / os.readlink(data)
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    def write(self, payload: dict[str, bytes | str], force: bool = False) -> bool:
        """Publish `payload` (key -> content; a key may hold `/` as ConfigMap `items[].path` can).

        Like the kubelet, an unchanged payload writes nothing unless `force` (a resync that
        rewrites identical content, useful to prove a no-op event does not swap). True when written.
        """
        payload = {k: v.encode() if isinstance(v, str) else v for k, v in payload.items()}
        data = self.root / DATA
        old_ts = os.readlink(data) if data.is_symlink() else None
        if not force and old_ts is not None and self.current() == payload:
            return False
        old_keys = {k.split("/", 1)[0] for k in self.current()}

        # (1) the new timestamped directory, filled before anything points at it
        ts_name = self._new_ts_name()
        ts_dir = self.root / ts_name
        ts_dir.mkdir(mode=0o755)
        for key, content in payload.items():
            f = ts_dir / key
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(content)
            f.chmod(0o644)
        # (2) ..data_tmp -> new dir, renamed over ..data: the one atomic step readers can observe
        tmp = self.root / DATA_TMP
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(ts_name, tmp)
        os.rename(tmp, data)
        # (3) user-visible links for top-level names, created once and never rewritten
        for top in sorted({k.split("/", 1)[0] for k in payload}):
            link = self.root / top
            if not link.is_symlink():
                os.symlink(os.path.join(DATA, top), link)
        # (4) the old timestamped directory goes, then names no longer in the payload
        if old_ts is not None:
            shutil.rmtree(self.root / old_ts, ignore_errors=True)
        for top in old_keys - {k.split("/", 1)[0] for k in payload}:
            (self.root / top).unlink(missing_ok=True)
        self.writes += 1
        return True

    def _new_ts_name(self) -> str:
        # Go: os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05.")) -> random suffix
        while True:
            name = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + str(random.randrange(10**8, 10**9))
            if not (self.root / name).exists():
                return name


def configmap_payload(manifest_text: str, name: str | None = None) -> dict[str, str]:
    """The `data` of the ConfigMap in a (multi-document) manifest, as a kubelet would project it."""
    import yaml

    for doc in yaml.safe_load_all(manifest_text):
        if doc and doc.get("kind") == "ConfigMap" and (name is None or doc["metadata"]["name"] == name):
            return dict(doc.get("data") or {})
    raise LookupError(f"no ConfigMap {name or ''} in the manifest")
