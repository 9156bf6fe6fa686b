"""The import arrows go one way: each part's source is read with `ast` and its imports checked.

Every import counts, including those inside functions: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import decorator

PACKAGE = Path(decorator.__file__).parent

# part of the package -> what none of its modules may import (modules and their submodules)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "decorator.proxy": ("decorator.rules", "decorator.actions", "decorator.telemetry", "decorator.settings",
                        "decorator.dashboard", "decorator.wire", "pydantic"),
    "decorator.telemetry": ("decorator.dashboard", "decorator.rules", "decorator.actions", "decorator.settings",
                            "decorator.wire.models", "pydantic"),
    "decorator.rules": ("decorator.settings",),
    "decorator.packs": ("decorator.proxy", "decorator.telemetry", "decorator.settings", "decorator.dashboard"),
    "decorator.dashboard": ("decorator.proxy", "decorator.rules", "decorator.actions", "decorator.telemetry"),
    "decorator.wire": ("decorator.proxy", "decorator.rules", "decorator.actions", "decorator.telemetry",
                       "decorator.dashboard", "decorator.settings"),
    "decorator.workers": ("decorator.rules.models", "decorator.rules.load", "decorator.dashboard",
                          "decorator.wire.models", "pydantic"),
    "decorator.units": ("decorator.",),
    "decorator.delivery": ("decorator.",),
    "decorator.errors": ("decorator.",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`; `from a import b` also yields a.b."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def sources(part: str) -> list[Path]:
    root = PACKAGE.parent.joinpath(*part.split("."))
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


def hits(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f if f.endswith(".") else f + ".") for f in forbidden)


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_part_imports_nothing_it_must_not(part: str) -> None:
    files = sources(part)
    assert files and all(f.exists() for f in files), f"{part}: no source found"
    wrong = [f"{f.relative_to(PACKAGE.parent)}:{line}: imports {name}"
             for f in files for line, name in imports(f) if hits(name, FORBIDDEN[part])]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    # The check above is only as good as `imports_in`: make sure it catches the sneaky forms.
    source = "def f():\n    from ..settings import Limits\n    from . import hooks\n    import pydantic\n"
    names = {n for _, n in imports_in(source, "decorator.proxy.tunnel", is_package=False)}
    assert {"decorator.settings", "decorator.settings.Limits", "decorator.proxy.hooks", "pydantic"} <= names
    assert hits("decorator.settings.Limits", FORBIDDEN["decorator.proxy"])
    assert not hits("decorator.settingsx", ("decorator.settings",))


def test_the_sidecar_runtime_never_loads_pydantic_or_the_dashboard() -> None:
    # Idle RSS: without rules, `decorator run` imports the tunnel, telemetry and settings, none of
    # which may pull in pydantic (about 13 MB) or the dashboard's modules.
    code = ("import sys, decorator.proxy.tunnel, decorator.telemetry, decorator.settings, decorator.admin\n"
            "print(' '.join(m for m in sys.modules if m.split('.')[0] == 'pydantic'"
            " or m.startswith(('decorator.dashboard', 'decorator.wire.models'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
