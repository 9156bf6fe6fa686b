"""Hot reload of the rules: watch + poll + SIGHUP -> build (load, validate, compile) -> atomic swap.

Owns when a rule set is rebuilt, whether it replaces the active one, and the reload state shown on
/status and /metrics. Must not import proxy internals, rules or telemetry: it gets `build` and `on_swap`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from decorator.errors import Location, RuleError, RulesInvalid

log = logging.getLogger("decorator.reload")

Build = Callable[[Sequence[str]], "tuple[str, Any]"]

# Kubernetes mounts a ConfigMap volume as `..data -> ..2026_11_26_20_10_11.123/` plus one
# `key -> ..data/key` link per key; an update swaps `..data`, so no event ever names our file.
_DATA_LINK = "..data"
_SNAPSHOT_TRIES = 5


def _is_blank(path: str) -> bool:
    """A file with nothing but whitespace (an empty YAML document)."""
    try:
        with open(path, "rb") as f:
            return not f.read(4096).strip() and not f.read(1)
    except OSError:
        return False


class Reloader:
    """Keeps the sidecar's rules current without ever stopping it.

    `build(paths) -> (digest, obj)` loads, validates and compiles the rules (RulesInvalid on a user
    error); `on_swap(obj)` installs the result (one attribute assignment: exchanges in flight keep
    the hooks they started with). A change is noticed by watching the rules directories (any event;
    the digest decides whether anything really changed), by polling every `poll_interval` seconds
    (0 = off) and by `reload()` (SIGHUP). An invalid update is logged line by line and kept out; the
    last good rules stay active. Nothing raised by `build` or `on_swap` escapes a reload.
    """

    def __init__(self, paths: Iterable[str], build: Build, on_swap: Callable[[Any], None],
                 poll_interval: float = 5.0, watch: bool = True, debounce: float = 0.2) -> None:
        self.paths = [str(p) for p in paths]
        self.build = build
        self.on_swap = on_swap
        self.poll_interval = poll_interval
        self.watch = watch
        self.debounce = debounce
        self.active: dict | None = None          # digest, files, loaded_at, rules, names
        self.last_reload: dict | None = None     # ok, time, reason, errors
        self.reloads_total = 0                   # rule sets swapped in after the first
        self.reload_failures_total = 0           # updates kept out (invalid rules or a bug)
        self.checks_total = 0                    # builds run, whatever their outcome
        self.polls_total = 0                     # poll rounds (most find nothing changed)
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._pending: set[asyncio.Task] = set()
        self._fingerprint: str | None = None     # what the poll saw at the last build

    # -- life cycle ---------------------------------------------------------------------------

    def load_initial(self) -> Any:
        """Build and install the first rule set; RulesInvalid propagates (the sidecar refuses to start)."""
        fingerprint = self._fingerprint_safe()
        digest, obj = self._build_snapshot() or self.build(self.paths)
        self.checks_total += 1
        self._fingerprint = fingerprint
        self.on_swap(obj)
        self.active = _describe(digest, obj)
        log.info("rules loaded: %s (%s)", digest[:12], _count_text(self.active))
        _log_notes(self.active)
        return obj

    def adopt(self, digest: str, obj: Any) -> None:
        """Record a rule set the caller built and installed itself (instead of `load_initial`)."""
        self._fingerprint = self._fingerprint_safe()
        self.active = _describe(digest, obj)

    async def start(self) -> None:
        """Load the rules if nobody did yet, warn about subPath mounts, start watching and polling."""
        if self.active is None:
            self.load_initial()
        for warning in subpath_warnings(self.paths):
            log.warning("%s", warning)
        if self.watch:
            for targets, recursive in _watch_groups(self.paths):
                self._tasks.append(asyncio.create_task(self._watch(targets, recursive),
                                                       name=f"reload-watch-{targets[0]}"))
            # One loop turn runs each watch task up to its first wait: awatch has set up its
            # inotify watches synchronously by then. A change that landed between the first load
            # and now produced no event; the fingerprint still shows it.
            await asyncio.sleep(0)
            if self._fingerprint_safe() != self._fingerprint:
                await self.reload("watch")
        if self.poll_interval > 0:
            self._tasks.append(asyncio.create_task(self._poll(), name="reload-poll"))

    async def close(self) -> None:
        self._stop.set()
        tasks = self._tasks + list(self._pending)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._pending.clear()

    def trigger(self, reason: str) -> None:
        """Schedule a reload from synchronous code (a signal handler); keeps the task referenced."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- one reload ---------------------------------------------------------------------------

    async def reload(self, reason: str = "manual") -> bool:
        """Rebuild now; True when a new rule set was swapped in. Never raises (except cancellation)."""
        async with self._lock:
            return await self._reload_locked(reason)

    async def _reload_locked(self, reason: str) -> bool:
        # Fingerprint before building: a change landing during the build makes the next poll differ.
        fingerprint = self._fingerprint_safe()
        self.checks_total += 1
        self._fingerprint = fingerprint
        previous = self.active["digest"] if self.active else None
        try:
            # In a thread: a build may wait on a child process (load + validate), and the proxy
            # shares this loop. Only the swap below runs on the loop.
            built = await asyncio.to_thread(self._build_snapshot)
            if built is None:
                self._fingerprint = None  # the next poll looks again
                log.info("rules reload (%s) skipped: the rules directory kept changing during the build",
                         reason)
                return False
            digest, obj = built
            if self.active and self.active.get("files") and not getattr(getattr(obj, "ruleset", obj), "files", ()):
                # Rules files vanished: a ConfigMap emptied or deleted under a running pod, or `..data`
                # pointing at a missing directory. Losing every rule that way is an accident far more
                # often than a wish (a wish is a file with `rules: []`).
                raise RulesInvalid([RuleError(Location(", ".join(self.paths)),
                                              "no rules files any more (the ConfigMap emptied or deleted, "
                                              "or ..data pointing at a missing directory); keeping the last "
                                              "good rules. To run with none, publish a file with `rules: []`")])
            empty = [f for f in getattr(getattr(obj, "ruleset", obj), "files", ()) if _is_blank(f)]
            if self.active and empty:
                # An editor (or `echo >`) truncates before it writes: a reload between the two would
                # drop that file's rules. Nobody means "no rules" by a blank file; `rules: []` says so.
                raise RulesInvalid([RuleError(Location(empty[0]),
                                              "the rules file is empty (caught while being written?); "
                                              "keeping the last good rules. To run with none, write "
                                              "`rules: []`")])
        except RulesInvalid as e:
            self._failed(reason, [err.as_dict() for err in e.errors] or [_message(str(e))])
            log.error("rules reload (%s) rejected, keeping %s; %d error(s):", reason,
                      (previous or "nothing")[:12], len(e.errors))
            for err in e.errors:
                log.error("  %s", err)
            return False
        except Exception as e:  # a bug in loading or compiling: keep the traceback, keep serving
            self._failed(reason, [_message(f"internal error: {type(e).__name__}: {e}")])
            log.exception("rules reload (%s) failed unexpectedly, keeping %s", reason,
                          (previous or "nothing")[:12])
            return False
        if digest == previous:
            if self.last_reload is not None and not self.last_reload["ok"]:
                # The files on disk are valid again (e.g. a broken edit was reverted): say so.
                self.last_reload = {"ok": True, "time": time.time(), "reason": reason, "errors": [],
                                    "unchanged": True}
            log.debug("rules unchanged after %s (%s)", reason, digest[:12])
            return False
        try:
            self.on_swap(obj)
        except Exception as e:
            self._failed(reason, [_message(f"internal error installing rules: {type(e).__name__}: {e}")])
            log.exception("installing the new rules (%s) failed, keeping %s", reason,
                          (previous or "nothing")[:12])
            return False
        self.active = _describe(digest, obj)
        self.reloads_total += 1
        self.last_reload = {"ok": True, "time": self.active["loaded_at"], "reason": reason, "errors": []}
        log.info("rules reloaded (%s): %s -> %s (%s)", reason, (previous or "nothing")[:12], digest[:12],
                 _count_text(self.active))
        _log_notes(self.active)
        return True

    def _build_snapshot(self) -> tuple[str, Any] | None:
        """build() over one ConfigMap payload, or None if the directory would not hold still.

        Files are read through `key -> ..data/key` links; a kubelet swap between two reads would
        mix old and new keys into a rule set that never existed (and, if the new payload is broken,
        that mix would stay active). The kubelet never points `..data` back at an old directory, so
        an unchanged `..data` target before and after the build proves one payload was read."""
        for _ in range(_SNAPSHOT_TRIES):
            before = _data_targets(self.paths)
            try:
                result = self.build(self.paths)
            except Exception:
                if _data_targets(self.paths) != before:
                    continue  # the error may come from the mix: read the new payload whole
                raise
            if _data_targets(self.paths) == before:
                return result
        return None

    def _failed(self, reason: str, errors: list[dict]) -> None:
        self.reload_failures_total += 1
        self.last_reload = {"ok": False, "time": time.time(), "reason": reason, "errors": errors}

    def status(self) -> dict:
        """Reload state for /status and the metrics (plain JSON-able values)."""
        return {
            "active": dict(self.active) if self.active else None,
            "last_reload": dict(self.last_reload) if self.last_reload else None,
            "reloads_total": self.reloads_total,
            "reload_failures_total": self.reload_failures_total,
            "checks_total": self.checks_total,
        }

    def counters(self) -> dict[str, int]:
        """The counters as telemetry's metrics source reads them (decorator_rule_reloads_total, ...)."""
        return {"reloads": self.reloads_total, "reload_failures": self.reload_failures_total}

    # -- noticing changes ---------------------------------------------------------------------

    async def _watch(self, targets: list[str], recursive: bool) -> None:
        from watchfiles import awatch

        while not self._stop.is_set():
            try:
                # No filter: the kubelet's `..data_tmp`/`..2026_…` names are exactly what changes.
                async for _changes in awatch(*targets, watch_filter=None, recursive=recursive,
                                             debounce=max(1, int(self.debounce * 1000)),
                                             step=min(50, max(1, int(self.debounce * 250))),
                                             stop_event=self._stop):
                    await self.reload("watch")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # e.g. the directory vanished: the poll still runs, retry later
                log.warning("watching %s stopped (%s: %s); retrying, polling meanwhile",
                            ", ".join(targets), type(e).__name__, e)
                await self._sleep(max(self.poll_interval, 1.0))

    async def _poll(self) -> None:
        while not await self._sleep(self.poll_interval):
            fingerprint = self._fingerprint_safe()
            # Unchanged files are not rebuilt: a broken update is reported once, not every poll.
            if fingerprint != self._fingerprint:
                await self.reload("poll")
            self.polls_total += 1

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless closed; True when closing."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _fingerprint_safe(self) -> str | None:
        try:
            return self._fingerprint_now()
        except OSError:  # unreadable rules are the build's to report, with their location
            return None

    def _fingerprint_now(self) -> str:
        """A cheap content hash of what a build would read: every file it read last time plus the
        current listing and contents of the rules directories (a new file shows up here)."""
        h = hashlib.sha256()
        seen: set[str] = set()
        names: list[str] = list((self.active or {}).get("files") or ())
        for p in self.paths:
            if os.path.isdir(p):
                names.extend(os.path.join(p, n) for n in sorted(os.listdir(p)) if not n.startswith("."))
            else:
                names.append(p)
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            h.update(name.encode() + b"\0")
            try:
                if os.path.isfile(name):
                    h.update(Path(name).read_bytes())
            except OSError as e:
                h.update(f"<{type(e).__name__}>".encode())
            h.update(b"\0")
        return h.hexdigest()


def _data_targets(paths: Sequence[str]) -> tuple[str | None, ...]:
    """Where each rules directory's `..data` link points now (None: not a ConfigMap volume)."""
    out = []
    for p in paths:
        d = p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
        try:
            out.append(os.readlink(os.path.join(d, _DATA_LINK)))
        except OSError:
            out.append(None)
    return tuple(out)


def _describe(digest: str, obj: Any) -> dict:
    """What /status shows about a rule set; `obj` is compiled hooks carrying `.ruleset`, or a ruleset."""
    rs = getattr(obj, "ruleset", obj)
    files = getattr(rs, "files", None)
    rules = getattr(rs, "rules", None)
    out: dict = {"digest": digest, "files": [str(f) for f in files] if files is not None else [],
                 "loaded_at": time.time()}
    if rules is not None:
        out["rules"] = len(rules)
        out["names"] = [getattr(r, "name", None) for r in rules]
        # Rules in shadow mode (their would-be actions are in rule_counters.shadow_hits).
        out["shadow"] = [r.name for r in rules if getattr(r, "mode", None) == "shadow"]
    notes = getattr(rs, "notes", None)
    if notes:
        out["notes"] = list(notes)
    return out


def _log_notes(active: dict) -> None:
    for note in active.get("notes", ()):  # e.g. an empty rules directory: running, but with no rules
        log.warning("%s", note)


def _count_text(active: dict) -> str:
    n = active.get("rules")
    files = len(active.get("files") or ())
    return f"{n} rule(s) from {files} file(s)" if n is not None else f"{files} file(s)"


def _message(text: str) -> dict:
    return {"file": "", "line": 0, "col": 0, "message": text}


def _watch_groups(paths: Sequence[str]) -> list[tuple[list[str], bool]]:
    """Directories are watched recursively (a pack's `pages/`); for a file, its parent directory only
    (editors and the kubelet replace files, which a watch on the file itself would lose)."""
    dirs, parents = [], []
    for p in paths:
        a = os.path.abspath(p)
        if os.path.isdir(a):
            dirs.append(a)
        else:
            parent = os.path.dirname(a)
            if os.path.isdir(parent):
                parents.append(parent)
    groups = []
    if dirs:
        groups.append((sorted(set(dirs)), True))
    parents = sorted(set(parents) - set(dirs))
    if parents:
        groups.append((parents, False))
    return groups


# -- subPath detection ----------------------------------------------------------------------------

def parse_mountinfo(text: str) -> dict[str, str]:
    """Mount point -> root within its filesystem, from /proc/self/mountinfo text.

    Line shape: `36 35 98:0 /root /mount/point opts [optional fields] - fstype source superopts`;
    paths escape space, tab, newline and backslash as octal (`\\040`).
    """
    mounts: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        mounts[_unescape(fields[4])] = _unescape(fields[3])
    return mounts


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def subpath_warnings(paths: Iterable[str], mountinfo: str | None = None) -> list[str]:
    """Warnings for rules paths that a ConfigMap update can never reach (a `subPath` mount).

    Kubernetes bind-mounts a subPath once, at container start, from the then-current timestamped
    directory, so it has no `..data` link and never changes. Heuristic: the path (or a file directly
    in a rules directory) is itself a mount point and the directory holding it has no `..data`.
    A bind-mounted single file is always flagged (even outside Kubernetes an editor's atomic replace
    never reaches it); a mounted directory only when its root is a kubelet volume, since a plain
    bind mount or a PersistentVolume updates normally. `mountinfo` defaults to /proc/self/mountinfo.
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    mounts = parse_mountinfo(mountinfo)
    if not mounts:
        return []
    warnings: list[str] = []
    for p in paths:
        a = os.path.abspath(p)
        candidates = [a]
        if os.path.isdir(a) and not os.path.lexists(os.path.join(a, _DATA_LINK)):
            try:
                candidates += [os.path.join(a, n) for n in sorted(os.listdir(a)) if not n.startswith(".")]
            except OSError:
                pass
        for c in candidates:
            if c not in mounts:
                continue
            is_dir = os.path.isdir(c)
            holder = c if is_dir else os.path.dirname(c)
            if os.path.lexists(os.path.join(holder, _DATA_LINK)):
                continue
            root = mounts[c]
            if is_dir and not _kubelet_volume(root):
                continue
            warnings.append(
                f"{c} is mounted on its own ({'directory' if is_dir else 'file'} bind mount from {root}) "
                "with no ..data link: looks like a Kubernetes subPath mount, which never receives "
                "ConfigMap updates. Mount the ConfigMap volume as a directory (no subPath) for live reload.")
    return warnings


def _kubelet_volume(root: str) -> bool:
    return "/volumes/kubernetes.io~" in root or any(part.startswith("..20") for part in root.split("/"))
