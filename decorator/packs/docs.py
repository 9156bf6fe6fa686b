"""The shipped packs' parameter tables in docs/packs.md, generated from their pack.yaml files.

`python -m decorator.packs.docs [docs/packs.md]` rewrites the part between the markers; a test fails
when it is stale. Owns the Markdown rendering only; must not import proxy or compile.
"""

from __future__ import annotations

import os
import sys

from decorator.packs import resolve
from decorator.packs.manifest import PackManifest

BEGIN = "<!-- BEGIN shipped pack params: generated from rules/*/pack.yaml by `python -m decorator.packs.docs` -->"
END = "<!-- END shipped pack params -->"


def _cell(v: object) -> str:
    if isinstance(v, bool):
        v = "true" if v else "false"
    text = "`" + str(v).replace("|", "\\|") + "`" if v not in (None, "") else ("`\"\"`" if v == "" else "")
    return text


def tables(packs_dir: str) -> str:
    from decorator.rules.load import read_manifest

    out = []
    for sub in sorted(os.listdir(packs_dir)):
        d = os.path.join(packs_dir, sub)
        if not resolve.manifest_in(d):
            continue
        m: PackManifest = read_manifest(d)
        out.append(f"### {m.name} {m.version}\n")
        desc = f"{m.description.rstrip('.')}. " if m.description else ""
        out.append(f"{desc}Requires decorator `{m.requires or 'any'}`.\n")
        if not m.params:
            out.append("No params.\n")
            continue
        out.append("| param | type | default | variable | description |")
        out.append("|---|---|---|---|---|")
        for name, p in m.params.items():
            kind = p.type + (" (" + ", ".join(_cell(e) for e in p.enum) + ")" if p.enum else "")
            default = "required" if p.is_required() else _cell(p.default)
            desc = (p.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {kind} | {default} | `{p.var or name}` | {desc} |")
        out.append("")
    return "\n".join(out)


def update(text: str, packs_dir: str) -> str:
    """`text` with the generated part replaced (ValueError when the markers are missing)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"markers not found: {BEGIN!r} ... {END!r}")
    return text[:start + len(BEGIN)] + "\n\n" + tables(packs_dir) + "\n" + text[end:]


def main(argv: list[str]) -> int:
    path = argv[0] if argv else os.path.join("docs", "packs.md")
    shipped = resolve.shipped_dir()
    if shipped is None:
        print("no shipped packs directory found", file=sys.stderr)
        return 1
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = update(text, shipped)
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"{path}: updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
