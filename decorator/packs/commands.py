"""`decorator pack new | list | show | lock | configmap`: the pack tools behind the CLI.

Owns their output only; finding packs is resolve's, loading is rules.load's, the ConfigMap layout is
configmap's. Returns exit codes. Must not import the tunnel or open sockets.
"""

from __future__ import annotations

import os
import sys

from decorator.errors import RulesInvalid, UsageError
from decorator.packs import lock as lockmod
from decorator.packs import resolve


def shown(v: object) -> str:
    """A value as it is written in YAML: true, 600, DENY, "" for the empty string."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v == "":
        return '""'
    return str(v)


def list_packs(beside: str | None = None) -> int:
    """Every pack on the search path in resolution order; a name found again later is shadowed."""
    from decorator.rules.load import read_manifest

    base = os.path.abspath(beside or ".")
    print("search order: " + " -> ".join(f"{d} ({o})" for o, d in resolve.search_dirs(base, os.environ))
          + f" -> {resolve.ENTRY_POINT_GROUP} entry points")
    rows = []
    seen: set[str] = set()
    for c in resolve.all_candidates(base, os.environ):
        try:
            m = read_manifest(c.dir)
            version, desc = m.version, m.description or ""
        except RulesInvalid as e:
            version, desc = "?", f"invalid: {e.errors[0]}"
        note = " (shadowed)" if c.name in seen else ""
        seen.add(c.name)
        rows.append((c.name, version, c.origin + note, c.dir, desc))
    if not rows:
        print("no packs found")
        return 0
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
        if r[4]:
            print(f"{'':<{w[0]}}  {r[4]}")
    return 0


def show(name: str, beside: str | None = None) -> int:
    """A pack's manifest, params (defaults and docs), rules, tests and where it comes from."""
    from decorator.rules.load import load_rules, read_manifest

    base = os.path.abspath(beside or ".")
    cands = list(resolve.find(name, base, os.environ)) if not os.path.isdir(name) else [
        resolve.Candidate(os.path.basename(os.path.normpath(name)), os.path.normpath(name), "path")]
    if not cands:
        raise UsageError(f"pack {name!r} not found (`decorator pack list` shows what there is)")
    c = cands[0]
    m = read_manifest(c.dir)
    print(f"{m.name} {m.version}" + (f" - {m.description}" if m.description else ""))
    print(f"source:   {c.where()}")
    print(f"requires: decorator {m.requires or 'any'}")
    for other in cands[1:]:
        print(f"shadows:  {other.where()}")
    print("params:" if m.params else "params:   none")
    for pname, p in m.params.items():
        default = "(required)" if p.is_required() else ("(none)" if p.default is None else shown(p.default))
        extra = f", one of {', '.join(map(str, p.enum))}" if p.enum else ""
        var = f", ${{{p.var}}}" if p.var else ""
        print(f"  {pname}: {p.type}{extra}, default {default}{var}")
        if p.description:
            print(f"      {p.description}")
    try:
        rs = load_rules([c.dir], env={})
    except RulesInvalid as e:
        print(f"rules: do not load with the defaults ({len(e.errors)} errors):")
        for err in e.errors:
            print(f"  {err}")
        return 1
    print("rules:")
    for entry in rs.entries:
        desc = getattr(entry.rule, "description", None)
        print(f"  {entry.rule.name}" + (f" - {desc}" if desc else ""))
    print(f"tests: {len(rs.tests)} (`decorator test {c.dir}`)")
    for lt in rs.tests:
        print(f"  {lt.case.name}")
    return 0


def lock(paths: list[str]) -> int:
    """Write packs.lock beside each rules path: every pack it includes by name, pinned."""
    from decorator.rules.load import load_with_packs

    for p in paths:
        if not os.path.exists(p):
            raise UsageError(f"no such file or directory: {p}")
        d = p if os.path.isdir(p) else (os.path.dirname(p) or ".")
        _, packs = load_with_packs([p], use_lock=False)
        entries = {n: lockmod.LockEntry(version=r.version, source=r.source, sha256=r.sha256)
                   for n, r in sorted(packs.items())}
        target = os.path.join(d, resolve.LOCK_FILE)
        with open(target, "w", encoding="utf-8") as f:
            f.write(lockmod.render(lockmod.LockFile(packs=entries)))
        print(f"{target}: {len(entries)} pack{'' if len(entries) == 1 else 's'}"
              + "".join(f"\n  {n} {e.version} sha256:{e.sha256[:12]}" for n, e in entries.items()))
    return 0


def configmap(paths: list[str], name: str, namespace: str | None) -> int:
    from decorator.packs.configmap import build

    sys.stdout.write(build(paths, name, namespace))
    return 0


def new(name: str, parent: str = ".") -> int:
    from decorator.packs.scaffold import scaffold

    d = scaffold(name, parent)
    print(f"created {d}/: pack.yaml, {name}.yaml, {name}.tests.yaml, {name}-page.html, README.md")
    print(f"next: decorator test {d}")
    return 0
