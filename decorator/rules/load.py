"""Rules files -> validated RuleSet, or RulesInvalid with every error as file:line:col: message.

Owns YAML reading (ruamel round-trip, positions kept), ${VAR} substitution, vars, include,
directories and packs, Kubernetes ConfigMap manifests, pydantic error -> location mapping,
action load-time checks (files) and the digest. Must not import proxy internals or compile.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedBase
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarstring import LiteralScalarString

from decorator import __version__
from decorator.actions.registry import ACTIONS, RuleInfo
from decorator.errors import Location, RuleError, RulesInvalid
from decorator.packs import resolve
from decorator.packs.lock import LockEntry, LockFile, index_keys
from decorator.packs.manifest import MANIFESTS, PackManifest, check_value, parse_range, parse_version, show_value, suggest
from decorator.rules.models import Include, Rule, RulesDocument, TestCase, _include_shorthand, shadow_ref
from decorator.rules.ruleset import LoadedRule, RuleSet
from decorator.rules.values import VarText

YAML_SUFFIXES = (".yaml", ".yml")
_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}?")
_REF_INNER = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)
_INCLUDES = TypeAdapter(list[Include])


@dataclass
class LoadedTest:
    case: TestCase
    location: Location
    refs: list[tuple[str, Location]] = field(default_factory=list)  # rule names the case expects


def load_rules(paths: Sequence[str] | str, env: Mapping[str, str] | None = None) -> RuleSet:
    """Load rules files, directories (every *.yaml/*.yml in name order) or ConfigMap manifests.

    Raises RulesInvalid carrying every error found, across all files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return load_with_packs(paths, env)[0]


def load_with_packs(paths: Sequence[str] | str, env: Mapping[str, str] | None = None,
                    use_lock: bool = True) -> tuple[RuleSet, dict[str, ResolvedPack]]:
    """load_rules, plus every pack included by name (what `decorator pack lock` pins). With
    `use_lock=False` an existing packs.lock is ignored (to write a new one)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    loader = _Loader(os.environ if env is None else env, use_lock)
    for p in paths:
        loader.load_root(os.fspath(p))
    loader.check_test_refs()
    if loader.errors:
        raise RulesInvalid(loader.sorted_errors())
    return (RuleSet(loader.entries, list(loader.digests), loader.digest(), loader.tests, tuple(map(str, paths)),
                    loader.notes), loader.resolved)


def read_manifest(pack_dir: str) -> PackManifest:
    """A pack directory's pack.yaml, validated; RulesInvalid with located errors."""
    loader = _Loader({})
    got = loader._manifest(resolve.Candidate(os.path.basename(os.path.normpath(pack_dir)), pack_dir, "path"))
    if loader.errors or got is None:
        raise RulesInvalid(loader.sorted_errors())
    return got[0]


def pack_units(path: str) -> list[str]:
    """What one path stands for when packs are run one by one: a file, a directory with YAML of its
    own, or (for a directory of packs) each subdirectory holding YAML."""
    if os.path.isdir(path) and not _yaml_files(path):
        # Hidden directories are not packs: a ConfigMap volume's `..2026_…` payload directories
        # would otherwise load through the back door when `..data` points at nothing.
        subs = [os.path.join(path, d) for d in sorted(os.listdir(path))
                if not d.startswith(".") and os.path.isdir(os.path.join(path, d))
                and _yaml_files(os.path.join(path, d))]
        if subs:
            return subs
    return [path]


def _yaml_files(d: str) -> list[str]:
    """The rules files of a directory: not a pack's manifest, not the vendored pack files that a
    packs.lock beside them lists (a flat ConfigMap holds those next to the rules)."""
    skip = set(MANIFESTS)
    lock = os.path.join(d, resolve.LOCK_FILE)
    if os.path.isfile(lock):
        with open(lock, encoding="utf-8", errors="replace") as f:
            skip |= index_keys(f.read())
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.endswith(YAML_SUFFIXES) and not f.startswith(".") and f not in skip
                  and os.path.isfile(os.path.join(d, f)))


@dataclass
class ResolvedPack:
    """A pack loaded by name: what was found where (what a lock pins)."""

    name: str
    version: str
    source: str
    sha256: str
    dir: str
    files: dict[str, str]  # relative path -> the file it was read from


class _Source:
    """Positions in one YAML document: maps a loc (keys/indices) to a Location in the file the user
    edits (for a ConfigMap entry: shifted by where the block scalar sits in the manifest)."""

    def __init__(self, file: str, root: Any, lines: list[str], line_off: int = 0, col_off: int = 0) -> None:
        self.file = file
        self.root = root
        self.lines = lines
        self.line_off = line_off
        self.col_off = col_off

    def at(self, line0: int, col0: int) -> Location:
        return Location(self.file, self.line_off + line0 + 1, self.col_off + col0 + 1)

    def loc(self, path: Sequence, key: bool = False, parent: bool = False) -> Location:
        """Location of the value at `path` (or of its key when `key`, or of the mapping that holds it
        when `parent`). Walks as deep as the data goes; validators may add loc parts the YAML
        does not have (e.g. a list index for a shorthand scalar): those stop the walk."""
        node = self.root
        pos = (node.lc.line, node.lc.col) if isinstance(node, CommentedBase) else (0, 0)
        steps = list(path[:-1]) if parent else list(path)
        for i, elem in enumerate(steps):
            last = i == len(steps) - 1
            nxt = steps[i + 1] if not last else None
            if isinstance(node, dict) and elem in node and isinstance(node, CommentedBase):
                child = node[elem]
                try:
                    if (key and last) or nxt == "[key]":
                        pos = node.lc.key(elem) or pos
                        break
                    if isinstance(child, CommentedBase) and len(child):
                        pos = (child.lc.line, child.lc.col)
                    else:
                        found = node.lc.value(elem)
                        if found is None:
                            break
                        pos = found
                except KeyError:
                    break  # a key merged in by `<<: *anchor` has its position at the anchor: stay here
                node = child
            elif isinstance(node, list) and isinstance(elem, int) and 0 <= elem < len(node) \
                    and isinstance(node, CommentedBase):
                pos = node.lc.item(elem)
                node = node[elem]
            else:
                break
        return self.at(*pos)

    def col_in_scalar(self, loc: Location, text: str, idx: int) -> Location:
        """Point inside a one-line scalar (at character `idx` of its value) when it is plain or
        simply quoted; otherwise stay at the scalar's start."""
        li = loc.line - self.line_off - 1
        ci = loc.col - self.col_off - 1
        if 0 <= li < len(self.lines):
            line = self.lines[li]
            if line[ci:ci + 1] in ("'", '"') and line[ci + 1:].startswith(text[:idx]):
                return Location(loc.file, loc.line, loc.col + 1 + idx)
            if line[ci:].startswith(text[:idx]):
                return Location(loc.file, loc.line, loc.col + idx)
        return loc


class _ActionCtx:
    """The LoadContext an action's `prepare` gets: file reads and errors located in its config."""

    def __init__(self, loader: _Loader, src: _Source, base: tuple) -> None:
        self.loader, self.src, self.base = loader, src, base

    def error(self, loc: tuple, message: str) -> None:
        self.loader.add(self.src.loc(self.base + tuple(loc)), message)

    def read_file(self, path: str, loc: tuple) -> bytes | None:
        virtual = self.loader.virtual.get(path)
        if virtual is not None:
            return virtual
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self.error(loc, f"file not found: {path}")
            return None
        except IsADirectoryError:
            self.error(loc, f"expected a file, found a directory: {path}")
            return None
        except OSError as e:
            self.error(loc, f"cannot read {path}: {e.strerror}")
            return None
        self.loader.note_file(path, data)
        return data

    def is_real_file(self, path: str) -> bool:
        return path not in self.loader.virtual


class _Loader:
    def __init__(self, env: Mapping[str, str], use_lock: bool = True) -> None:
        self.env = env
        self.use_lock = use_lock
        self.pack: str | None = None  # the pack whose files are being read: its rules are `pack/name`
        # A pack included by name is tested by its author with its defaults; the includer's params
        # would fail those cases, so they are not the includer's tests (`decorator test PACK` runs them).
        self.collect_tests = True
        self.lock: tuple[LockFile, str] | None = None  # the root's packs.lock and its path
        self.resolved: dict[str, ResolvedPack] = {}
        self.manifests: dict[str, tuple[PackManifest, _Source] | None] = {}
        self.offsets: dict[str, tuple[str, int, int]] = {}  # embedded YAML: (shown file, line, col offset)
        self.errors: list[RuleError] = []
        self.notes: list[str] = []  # worth a warning, not an error (RuleSet.notes)
        self.entries: list[LoadedRule] = []
        self.tests: list[LoadedTest] = []
        self.digests: dict[str, str] = {}
        self.virtual: dict[str, bytes] = {}
        self.names: dict[str, Location] = {}
        self.unresolved: set[tuple] = set()  # locs (in the current document) of failed ${VAR}s

    # -- bookkeeping --------------------------------------------------------------------------
    def add(self, loc: Location, message: str) -> None:
        err = RuleError(loc, message)
        if all(str(e) != str(err) for e in self.errors):
            self.errors.append(err)

    def check_test_refs(self) -> None:
        """A test expecting a rule that does not exist would pass or fail for the wrong reason."""
        for lt in self.tests:
            for name, loc in lt.refs:
                if name not in self.names:
                    packed = [n for n in self.names if n.endswith("/" + name)]
                    close = packed[:1] or difflib.get_close_matches(name, list(self.names), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    self.add(loc, f"test refers to rule {name!r}, which is not in the rule set{hint}")

    def sorted_errors(self) -> list[RuleError]:
        """Files in the order they were read, each file's errors top to bottom."""
        order: dict[str, int] = {}
        for e in self.errors:
            order.setdefault(e.location.file, len(order))
        return sorted(self.errors, key=lambda e: (order[e.location.file], e.location.line, e.location.col))

    def note_file(self, path: str, data: bytes) -> None:
        self.digests[path] = hashlib.sha256(data).hexdigest()

    def digest(self) -> str:
        h = hashlib.sha256()
        for path, d in self.digests.items():
            h.update(path.encode() + b"\0" + d.encode() + b"\n")
        return h.hexdigest()

    # -- paths --------------------------------------------------------------------------------
    def load_root(self, path: str) -> None:
        """One path given to run/validate: with a packs.lock beside it (in it, for a directory),
        the packs it includes by name must be the locked ones."""
        self.lock = None
        d = path if os.path.isdir(path) else (os.path.dirname(path) or ".")
        lock_path = os.path.join(d, resolve.LOCK_FILE)
        if self.use_lock and os.path.isfile(lock_path):
            self._read_lock(lock_path, None)
        self.load_path(path, {}, (), None)
        self.lock = None

    def load_path(self, path: str, ivars: dict, stack: tuple, at: Location | None) -> None:
        if os.path.isdir(path) and resolve.manifest_in(path):
            self._load_dir_pack(path, ivars, stack, at)
            return
        if os.path.isdir(path):
            files = _yaml_files(path)
            if not files:
                units = pack_units(path)
                if units == [path]:
                    if at is None and not stack:
                        # A rules directory given to run/validate: a new ConfigMap with no keys yet, or
                        # the image's default RULES. No rules, not a refusal; a file added later loads.
                        self.notes.append(f"{path}: no *.yaml or *.yml files in this directory: no rules "
                                          "from it")
                    else:
                        self.add(at or Location(path), f"no *.yaml or *.yml files in directory {path}")
                    return
                for unit in units:
                    self.load_path(unit, ivars, stack, at)
                return
            for f in files:
                self.load_file(f, ivars, stack, at)
        elif os.path.exists(path):
            self.load_file(path, ivars, stack, at)
        else:
            self.add(at or Location(path), f"no such file or directory: {path}")

    def read_bytes(self, path: str, at: Location | None) -> bytes | None:
        """A file's bytes: an embedded one (a ConfigMap manifest's entry) or from disk (noted in the
        digest); None after reporting why not."""
        if path in self.virtual:
            return self.virtual[path]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            self.add(at or Location(path), f"cannot read {path}: {e.strerror}")
            return None
        self.note_file(path, data)
        return data

    def load_file(self, path: str, ivars: dict, stack: tuple, at: Location | None,
                  base_dir: str | None = None) -> None:
        real = os.path.realpath(path)
        if real in stack:
            chain = " -> ".join(os.path.relpath(p) for p in stack + (real,))
            self.add(at or Location(path), f"include cycle: {chain}")
            return
        data = self.read_bytes(path, at)
        if data is None:
            return
        shown, line_off, col_off = self.offsets.get(path, (path, 0, 0))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line_start = data.rfind(b"\n", 0, e.start) + 1
            self.add(Location(shown, line_off + data.count(b"\n", 0, e.start) + 1, e.start - line_start + 1),
                     f"not UTF-8 text (byte {e.start})")
            return
        docs = self._parse(text, shown, line_off, col_off)
        if docs is None:
            return
        lines = text.splitlines()
        if path not in self.virtual and any(isinstance(d, dict) and d.get("kind") == "ConfigMap" for d in docs):
            self._configmap(path, docs, lines, ivars, stack + (real,))
            return
        if len(docs) > 1:
            second = docs[1]
            line = second.lc.line if isinstance(second, CommentedBase) else 0
            self.add(Location(shown, line_off + line + 1, 1), "expected one YAML document in a rules file; "
                     "use several files in a directory, or include")
            return
        doc = docs[0] if docs else None
        self._document(doc, _Source(shown, doc, lines, line_off, col_off), base_dir or os.path.dirname(path),
                       ivars, stack + (real,))

    def _parse(self, text: str, file: str, line_off: int, col_off: int) -> list | None:
        yaml = YAML(typ="rt")
        try:
            return list(yaml.load_all(text))
        except MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            what = " ".join(x for x in (e.context, e.problem) if x)
            loc = Location(file, line_off + mark.line + 1, col_off + mark.column + 1) if mark else Location(file)
            self.add(loc, f"YAML syntax error: {what}".rstrip())
        except YAMLError as e:
            pos = getattr(e, "position", None)  # a ReaderError (a character YAML forbids) has no mark
            if isinstance(pos, int) and 0 <= pos <= len(text):
                line0 = text.count("\n", 0, pos)
                col0 = pos - (text.rfind("\n", 0, pos) + 1)
                self.add(Location(file, line_off + line0 + 1, (col_off if line0 == 0 else 0) + col0 + 1),
                         f"YAML syntax error: {getattr(e, 'reason', None) or e}")
            else:
                self.add(Location(file), f"YAML syntax error: {e}")
        return None

    def _configmap(self, path: str, docs: list, lines: list[str], ivars: dict, stack: tuple) -> None:
        base = os.path.dirname(path)
        found = False
        for doc in docs:
            if not (isinstance(doc, dict) and doc.get("kind") == "ConfigMap"):
                continue
            data = doc.get("data") or {}
            if not isinstance(data, dict):
                continue
            # Non-YAML entries are the files a mounted ConfigMap puts next to the rules (pages), and
            # so are the vendored pack files its packs.lock lists.
            index = index_keys(data[resolve.LOCK_FILE]) \
                if isinstance(data.get(resolve.LOCK_FILE), str) else set()
            for k, v in data.items():
                if isinstance(v, str) and (not str(k).endswith(YAML_SUFFIXES) or k in index):
                    key_path = os.path.normpath(os.path.join(base, str(k)))
                    self.virtual[key_path] = v.encode()
                    self.offsets[key_path] = (path, *self._block_offsets(data, k, lines))
            if self.use_lock and resolve.LOCK_FILE in data:
                self._read_lock(os.path.normpath(os.path.join(base, resolve.LOCK_FILE)), None)
            for k, v in data.items():
                if not str(k).endswith(YAML_SUFFIXES) or k in index:
                    continue
                found = True
                vl, vc = data.lc.value(k)
                if not isinstance(v, str):
                    self.add(Location(path, vl + 1, vc + 1), f"data entry {k!r} must be a string "
                             "(a block scalar: `|`) holding a rules document")
                    continue
                line_off, col_off = self._block_offsets(data, k, lines)
                sub = self._parse(str(v), path, line_off, col_off)
                if sub is None:
                    continue
                if len(sub) > 1:
                    self.add(Location(path, vl + 1, vc + 1), f"data entry {k!r} holds several YAML documents")
                    continue
                doc_k = sub[0] if sub else None
                self._document(doc_k, _Source(path, doc_k, str(v).splitlines(), line_off, col_off), base,
                               ivars, stack)
        if not found:
            cm = next(d for d in docs if isinstance(d, dict) and d.get("kind") == "ConfigMap")
            line = cm.lc.line if isinstance(cm, CommentedBase) else 0
            if isinstance(cm.get("data"), CommentedBase):
                line = cm.lc.key("data")[0]
            self.add(Location(path, line + 1, 1), "ConfigMap has no data entry ending in .yaml or .yml")

    @staticmethod
    def _block_offsets(data: Any, k: Any, lines: list[str]) -> tuple[int, int]:
        """Where the text of data entry `k` starts in the manifest (0-based line and column)."""
        vl, vc = data.lc.value(k)
        if isinstance(data[k], LiteralScalarString):
            line_off = vl + 1
            col_off = next((len(ln) - len(ln.lstrip(" ")) for ln in lines[line_off:] if ln.strip()), 0)
            return line_off, col_off
        return vl, vc  # quoted or folded: positions inside cannot be mapped line by line

    # -- packs --------------------------------------------------------------------------------
    def _yaml_model(self, path: str, model: type[BaseModel], at: Location | None) -> tuple[Any, _Source] | None:
        """A small YAML file (manifest, lock) validated against `model`, errors located."""
        data = self.read_bytes(path, at)
        if data is None:
            return None
        shown, line_off, col_off = self.offsets.get(path, (path, 0, 0))
        text = data.decode("utf-8", errors="replace")
        docs = self._parse(text, shown, line_off, col_off)
        if docs is None:
            return None
        doc = docs[0] if docs else None
        src = _Source(shown, doc, text.splitlines(), line_off, col_off)
        try:
            return model.model_validate(doc if doc is not None else {}), src
        except ValidationError as e:
            for err in e.errors():
                self._pydantic_error(err, src, model)
            return None

    def _read_lock(self, path: str, at: Location | None) -> None:
        got = self._yaml_model(path, LockFile, at)
        if got is not None:
            self.lock = (got[0], path)

    def _vendored(self) -> dict[str, resolve.Candidate]:
        """Packs the root's packs.lock holds a copy of (a flat ConfigMap): found before any other."""
        if self.lock is None:
            return {}
        lock, lock_path = self.lock
        d = os.path.dirname(lock_path)
        return {name: resolve.Candidate(name, os.path.join(d, ".packs", name), "vendored in packs.lock",
                                        {rel: os.path.normpath(os.path.join(d, key)) for rel, key in e.files.items()})
                for name, e in lock.packs.items() if e.files}

    def _manifest(self, c: resolve.Candidate) -> tuple[PackManifest, _Source] | None:
        if c.files is not None:
            rel = next((m for m in MANIFESTS if m in c.files), None)
            path = c.files[rel] if rel else None
        else:
            path = resolve.manifest_in(c.dir)
        if path is None:
            self.add(Location(c.dir), f"pack {c.name!r}: no pack.yaml in {c.where()}")
            return None
        if path not in self.manifests:
            self.manifests[path] = self._yaml_model(path, PackManifest, None)
        return self.manifests[path]

    def _pack_files(self, c: resolve.Candidate) -> dict[str, str]:
        if c.files is not None:
            return dict(c.files)
        return {rel: os.path.join(c.dir, rel) for rel in resolve.content_files(c.dir)}

    def _load_dir_pack(self, path: str, ivars: dict, stack: tuple, at: Location | None) -> None:
        """A directory with a pack.yaml, given by path: a pack (its params checked, its rules named
        `pack/rule`); the include's `vars` set its params by variable name."""
        c = resolve.Candidate(os.path.basename(os.path.normpath(path)), os.path.normpath(path), "path")
        got = self._manifest(c)
        if got is not None:
            self._load_pack(c, got, {}, ivars, stack, at)

    def _load_pack(self, c: resolve.Candidate, got: tuple[PackManifest, _Source], given: dict,
                   path_vars: dict, stack: tuple, at: Location | None) -> None:
        m, msrc = got
        if m.requires and parse_version(__version__) not in parse_range(m.requires):
            self.add(at or msrc.loc(("requires",)), f"pack {m.name!r} {m.version} at {c.where()} requires "
                     f"decorator {m.requires}; this is decorator {__version__}")
            return
        values = self._params(m, msrc, given, path_vars, at)
        if values is None:
            return
        files = self._pack_files(c)
        if c.files is not None:  # vendored: its pages are read by relative path from the pack's dir
            for rel, key in files.items():
                if not rel.endswith(YAML_SUFFIXES):
                    data = self.read_bytes(key, at)
                    if data is not None:
                        self.virtual[os.path.join(c.dir, rel)] = data
        outer, self.pack = self.pack, m.name
        try:
            for rel in sorted(files):
                if "/" not in rel and rel.endswith(YAML_SUFFIXES) and rel not in MANIFESTS:
                    self.load_file(files[rel], {**path_vars, **values}, stack, at, base_dir=c.dir)
        finally:
            self.pack = outer

    def _params(self, m: PackManifest, msrc: _Source, given: dict, path_vars: dict,
                at: Location | None) -> dict | None:
        """The pack's params as the ${VAR} values its rules see: from `with:` (or an include's
        `vars` by variable name), else the environment, else the default; each checked."""
        ok = True
        for k, (_, _, key_loc) in given.items():
            if k not in m.params:
                takes = ", ".join(m.params) or "no params"
                self.add(key_loc, f"unknown param {k!r}{suggest(k, list(m.params))}; pack {m.name} takes: {takes}")
                ok = False
        out = {}
        for pname, p in m.params.items():
            var = p.var or pname
            origin = ""
            if pname in given:
                value, loc = given[pname][0], given[pname][1]
            elif var in path_vars:
                value, loc = path_vars[var], at or msrc.loc(("params", pname))
            elif var in self.env:
                value, loc = self.env[var], msrc.loc(("params", pname), key=True)
                origin = f" (from the environment variable {var})"
            elif p.default is not None:
                value, loc = p.default, msrc.loc(("params", pname, "default"))
            else:
                if p.is_required():
                    about = f" ({p.description})" if p.description else ""
                    self.add(at or msrc.loc(("params", pname), key=True),
                             f"pack {m.name}: missing required param {pname!r}{about}; give it in `with:`")
                    ok = False
                continue
            try:
                out[var] = check_value(p, value)
            except ValueError as e:
                self.add(loc, f"{pname}: {e}{origin}")
                ok = False
        return out if ok else None

    def _include_pack(self, inc: Any, i: int, src: _Source, base_dir: str, stack: tuple) -> None:
        name = inc.pack
        at = src.loc(("include", i, "pack"))
        vendored = self._vendored()
        cands = resolve.find(name, base_dir, self.env, vendored)
        first = next(cands, None)
        if first is None:
            known = sorted({c.name for c in resolve.all_candidates(base_dir, self.env)} | set(vendored))
            looked = ", ".join(f"{d} ({o})" for o, d in resolve.search_dirs(base_dir, self.env))
            self.add(at, f"pack {name!r} not found{suggest(name, known)}; looked in {looked} and the "
                     f"{resolve.ENTRY_POINT_GROUP} entry points (`decorator pack list` shows what is there)")
            return
        locked: LockEntry | None = None
        if self.lock is not None:
            locked = self.lock[0].packs.get(name)
            if locked is None:
                self.add(at, f"pack {name!r} is not in {self.lock[1]}; run `decorator pack lock` to add it")
                return
        spec = parse_range(inc.version) if inc.version else None
        tried = []
        chosen = None
        for c in itertools.chain([first], cands):
            got = self._manifest(c)
            if got is None:
                return  # a broken pack on the search path: its own errors say why
            m = got[0]
            if m.name != name:
                self.add(got[1].loc(("name",)), f"pack.yaml names the pack {m.name!r}, but it is found as "
                         f"{name!r} ({c.where()}); the directory or entry point must carry the pack's name")
                return
            why = None
            if spec is not None and m.semver() not in spec:
                why = f"does not match {inc.version}"
            elif locked is not None and m.version != locked.version:
                why = f"{self.lock[1]} pins {locked.version}"
            elif m.requires and parse_version(__version__) not in parse_range(m.requires):
                why = f"requires decorator {m.requires}, this is {__version__}"
            if why is None:
                chosen = (c, got)
                break
            tried.append(f"{m.version} at {c.where()} {why}")
        if chosen is None:
            self.add(src.loc(("include", i, "version")) if inc.version else at,
                     f"pack {name!r}: no usable version; found " + "; ".join(tried))
            return
        c, got = chosen
        files = self._pack_files(c)
        contents = {}
        for rel, path in files.items():
            data = self.read_bytes(path, at)
            if data is None:
                return
            contents[rel] = data
        sha = resolve.content_hash(contents)
        if locked is not None and sha != locked.sha256:
            self.add(at, f"pack {name!r} {got[0].version} at {c.where()} has changed since {self.lock[1]} was "
                     f"written (content sha256 {sha[:12]}, locked {locked.sha256[:12]}); refusing it: restore "
                     "the pack, or run `decorator pack lock` to accept the change")
            return
        prev = self.resolved.get(name)
        if prev is not None and prev.version != got[0].version:
            self.add(at, f"pack {name!r} {got[0].version} ({c.where()}) is also included as {prev.version} "
                     f"({prev.source}); one rule set uses one version of a pack")
            return
        self.resolved[name] = ResolvedPack(name, got[0].version, c.where() if locked is None else locked.source,
                                           sha, c.dir, files)
        given = {k: (v, src.loc(("include", i, "with", k)), src.loc(("include", i, "with", k), key=True))
                 for k, v in inc.with_.items()}
        outer, self.collect_tests = self.collect_tests, False
        try:
            self._load_pack(c, got, given, {}, stack, at)
        finally:
            self.collect_tests = outer

    # -- one document -------------------------------------------------------------------------
    def _document(self, doc: Any, src: _Source, base_dir: str, ivars: dict, stack: tuple) -> None:
        if doc is None:
            return
        if not isinstance(doc, dict):
            self.add(src.loc(()), f"expected a mapping with a `rules:` list, found {show_value(doc)}")
            return
        own = {}
        self.unresolved = set()
        raw_vars = doc.get("vars")
        if isinstance(raw_vars, dict):
            self._substitute(doc, ("vars",), src, {})
            own = {k: v for k, v in raw_vars.items() if isinstance(v, (str, int, float, bool))}
        lookup = {**own, **ivars}
        for k in list(doc.keys()):
            if k != "vars":
                self._substitute(doc, (k,), src, lookup)
        try:
            model = RulesDocument.model_validate(doc)
        except ValidationError as e:
            errs = e.errors()
            # A typo gives both "unknown key 'valu'" and "missing required key 'value'": the first
            # (with its suggestion) says it all.
            typos = {(tuple(x["loc"][:-1]), m) for x in errs if x["type"] == "extra_forbidden"
                     for m in difflib.get_close_matches(str(x["loc"][-1]), _allowed_keys(x["loc"][:-1]),
                                                        n=1, cutoff=0.6)}
            for err in errs:
                if err["type"] == "missing" and (tuple(err["loc"][:-1]), err["loc"][-1]) in typos:
                    continue
                self._pydantic_error(err, src)
            # The document is invalid, but its includes may still be loadable: report their errors too.
            try:
                raw = doc.get("include") or []
                includes = _INCLUDES.validate_python([_include_shorthand(i) for i in raw]) \
                    if isinstance(raw, list) else []
            except ValidationError:
                includes = []
            self._includes(includes, src, base_dir, stack)
            # Rules that are valid on their own still get their load-time checks (files, names),
            # so one run reports everything.
            raw_rules = doc.get("rules")
            for i, item in enumerate(raw_rules if isinstance(raw_rules, list) else []):
                try:
                    rule = Rule.model_validate(item)
                except ValidationError:
                    continue
                self._rule(rule, i, src, base_dir)
            return
        self._includes(model.include, src, base_dir, stack)
        for i, rule in enumerate(model.rules):
            if rule.mode is None:  # the file's default, else enforce: compile sees it settled
                rule = rule.model_copy(update={"mode": model.mode or "enforce"})
            self._rule(rule, i, src, base_dir)
        for i, case in enumerate(model.tests if self.collect_tests else ()):
            if self.pack is not None:
                case = self._qualified_case(case)
            ex = case.expect
            refs = [(shadow_ref(name)[0] if key == "shadow" else name, src.loc(("tests", i, "expect", key, j)))
                    for key, names in (("fired", ex.fired), ("not_fired", ex.not_fired),
                                       ("notify", ex.notify or []), ("record", ex.record or []),
                                       ("shadow", ex.shadow or []))
                    for j, name in enumerate(names)]
            self.tests.append(LoadedTest(case, src.loc(("tests", i)), refs))

    def _qualified_case(self, case: TestCase) -> TestCase:
        """A pack's own tests name its rules as written; the rule set knows them as `pack/name`."""
        def q(names: list[str]) -> list[str]:
            return [n if "/" in n else f"{self.pack}/{n}" for n in names]

        ex = case.expect
        update = {"fired": q(ex.fired), "not_fired": q(ex.not_fired)}
        if ex.notify is not None:
            update["notify"] = q(ex.notify)
        if ex.record is not None:
            update["record"] = q(ex.record)
        if ex.mirror is not None:
            update["mirror"] = q(ex.mirror)
        if ex.shadow is not None:  # "rule" or "rule:action"
            update["shadow"] = [n if "/" in n else f"{self.pack}/{n}" for n in ex.shadow]
        return case.model_copy(update={"expect": ex.model_copy(update=update)})

    def _includes(self, includes: list, src: _Source, base_dir: str, stack: tuple) -> None:
        for i, inc in enumerate(includes):
            if inc.pack is not None:
                self._include_pack(inc, i, src, base_dir, stack)
                continue
            at = src.loc(("include", i))
            target = os.path.normpath(os.path.join(base_dir, inc.path))
            ivars = dict(inc.vars)
            if os.path.isdir(target) and resolve.manifest_in(target):
                self._load_dir_pack(target, ivars, stack, at)
            elif os.path.isdir(target):
                files = _yaml_files(target)
                if not files:
                    self.add(at, f"include: no *.yaml or *.yml files in directory {target}")
                for f in files:
                    self.load_file(f, ivars, stack, at)
            elif os.path.exists(target):
                self.load_file(target, ivars, stack, at)
            else:
                self.add(at, f"include: no such file or directory: {target}")

    def _rule(self, rule: Any, i: int, src: _Source, base_dir: str) -> None:
        here = ("rules", i)
        if self.pack is not None:  # two packs may both have a `hsts` rule: they are `a/hsts`, `b/hsts`
            rule = rule.model_copy(update={"name": f"{self.pack}/{rule.name}"})
        name_loc = src.loc(here + ("name",))
        first = self.names.get(rule.name)
        if first is not None:
            self.add(name_loc, f"duplicate rule name {rule.name!r} (first defined at {first}); names must "
                     "be unique across the rule set")
            return
        self.names[rule.name] = name_loc
        m = rule.match
        info = RuleInfo(name=rule.name, needs_response=m.needs_response(), base_dir=base_dir, path=m.path,
                        path_regex=m.path_regex, methods=tuple(m.method) if m.method else None)
        prepared: dict[str, Any] = {}
        before = len(self.errors)
        for name, config in rule.actions():
            cls = ACTIONS[name]
            ctx = _ActionCtx(self, src, here + (name,))
            for loc, message in cls.phase_errors(config, info):
                ctx.error(loc, message)
            prepared[name] = cls.prepare(config, info, ctx)
        if len(self.errors) == before:
            self.entries.append(LoadedRule(rule, src.loc(here), base_dir, prepared, info))

    # -- ${VAR} -------------------------------------------------------------------------------
    def _substitute(self, parent: Any, path: tuple, src: _Source, lookup: Mapping) -> None:
        """Replace ${NAME} / ${NAME:-default} in every string value under parent[path[-1]] (in place)."""
        stack = [(parent, path[-1], path)]
        seen: set[int] = set()  # YAML aliases share nodes: each once, or nine aliases of nine is 9**9 visits
        while stack:
            node, k, p = stack.pop()
            value = node[k]
            if isinstance(value, (dict, list)):
                if id(value) in seen:
                    continue
                seen.add(id(value))
                if isinstance(value, dict):
                    stack.extend((value, kk, p + (kk,)) for kk in value)
                else:
                    stack.extend((value, j, p + (j,)) for j in range(len(value)))
            elif isinstance(value, str) and "$" in value:
                new = self._expand(value, p, src, lookup)
                if new is not value:
                    node[k] = new

    def _expand(self, text: str, path: tuple, src: _Source, lookup: Mapping) -> Any:
        out = []
        pos = 0
        substituted = False
        for m in _REF.finditer(text):
            out.append(text[pos:m.start()])
            pos = m.end()
            if m.group(0) == "$${":
                out.append("${")
                continue
            if not m.group(0).endswith("}"):
                self.add(src.col_in_scalar(src.loc(path), text, m.start()),
                         f"unterminated ${{ in {text!r}; write ${{NAME}} or ${{NAME:-default}} ($${{ for a literal ${{)")
                self.unresolved.add(path)
                return text
            inner = _REF_INNER.match(m.group(1))
            if not inner:
                self.add(src.col_in_scalar(src.loc(path), text, m.start()),
                         f"bad variable reference {m.group(0)!r}; expected ${{NAME}} or ${{NAME:-default}}")
                self.unresolved.add(path)
                return text
            name, default = inner.group(1), inner.group(2)
            if name in lookup:
                val = lookup[name]
            elif name in self.env:
                val = self.env[name]
            else:
                val = None
            if default is not None and (val is None or val == ""):
                val = default  # as in the shell, ':-' also covers a variable set to the empty string
            if val is None:
                self.add(src.col_in_scalar(src.loc(path), text, m.start()),
                         f"variable {name} is not set (not in vars, not in the environment) and has no "
                         f"default; set it or write ${{{name}:-default}}")
                self.unresolved.add(path)
                return text
            out.append(_scalar_text(val))
            substituted = True
        out.append(text[pos:])
        # Marked, so that validation turns it into the number or true/false its field takes (a vars
        # entry's 503 or true, too, is text once it stands in a value).
        return VarText("".join(out)) if substituted else "".join(out)

    # -- pydantic errors -> located messages ----------------------------------------------------
    def _pydantic_error(self, err: dict, src: _Source, root: type[BaseModel] | None = None) -> None:
        loc = tuple(err["loc"])
        kind = err["type"]
        where = _dotted(loc)
        if kind == "extra_forbidden":
            key = loc[-1]
            allowed = _allowed_keys(loc[:-1], root or RulesDocument)
            msg = f"unknown key {key!r}"
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
            if allowed:
                msg += f"; expected one of: {', '.join(allowed)}"
            parent = _dotted(loc[:-1])
            self.add(src.loc(loc, key=True), f"{parent}: {msg}" if parent else msg)
            return
        if kind == "missing":
            self.add(src.loc(loc, parent=True), f"{_dotted(loc[:-1]) or 'document'}: missing required key "
                     f"{loc[-1]!r}")
            return
        if any(loc[:len(p)] == p for p in self.unresolved):
            return  # the ${VAR} in this value was already reported; its raw text is no news
        message = _describe(err)
        at = src.loc(loc)
        if loc and loc[-1] == "[key]":
            where = _dotted(loc[:-1])
            message = f"bad key: {message}"
        pos = getattr((err.get("ctx") or {}).get("error"), "pos", None)
        if isinstance(pos, int) and isinstance(err.get("input"), str):
            at = src.col_in_scalar(at, err["input"], pos)
        self.add(at, f"{where}: {message}" if where else message)


def _scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _dotted(loc: Sequence) -> str:
    out = ""
    for e in loc:
        if e == "[key]":
            continue
        out += f"[{e}]" if isinstance(e, int) else (f".{e}" if out else str(e))
    return out


_EXPECTED = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string",
    "bool_type": "true or false", "bool_parsing": "true or false", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
}


def _describe(err: dict) -> str:
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    found = show_value(err.get("input"))
    if kind in ("value_error", "assertion_error"):
        return re.sub(r"^(Value error|Assertion failed), ", "", msg)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, found {found}"
    if kind == "string_pattern_mismatch":
        return f"expected a string matching {ctx.get('pattern')}, found {found}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        op = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"expected a number {op} {bound}, found {found}"
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        return f"{msg[0].lower()}{msg[1:]}; found {found}"
    return f"{msg[0].lower()}{msg[1:]}; found {found}"


def _allowed_keys(loc: Sequence, root: type[BaseModel] = RulesDocument) -> list[str]:
    """Keys the model at `loc` accepts (for 'did you mean' and 'expected one of')."""
    types: list = [root]
    for elem in loc:
        nxt: list = []
        for tp in types:
            for t in _unwrap(tp):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    f = _field(t, elem) if isinstance(elem, str) else None
                    if f is not None:
                        nxt.append(f.annotation)
                elif typing.get_origin(t) is list and isinstance(elem, int):
                    nxt.extend(typing.get_args(t)[:1])
                elif typing.get_origin(t) is dict and isinstance(elem, str):
                    nxt.extend(typing.get_args(t)[1:2])
        types = nxt
    keys: list[str] = []
    for tp in types:
        for t in _unwrap(tp):
            if isinstance(t, type) and issubclass(t, BaseModel):
                keys.extend(k for k in (f.alias or n for n, f in t.model_fields.items()) if k not in keys)
    return keys


def _field(model: type[BaseModel], key: str) -> Any:
    return next((f for n, f in model.model_fields.items() if (f.alias or n) == key), None)


def _unwrap(tp: Any) -> list:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        out = []
        for a in typing.get_args(tp):
            out.extend(_unwrap(a))
        return out
    return [tp]
