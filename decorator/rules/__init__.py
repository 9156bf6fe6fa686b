"""Rules: YAML -> validated pydantic models -> compiled `proxy.hooks.Hooks`.

The public API (docs/architecture.md): load_rules, compile_rules, Runtime, RuleSet, imported
lazily so that action modules can use rules.base without a cycle through this package.
Must not import proxy internals (only proxy.hooks), telemetry or the tunnel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from decorator.actions.runtime import Runtime
    from decorator.rules.compile import RuleHooks, compile_rules
    from decorator.rules.load import RuleSet, load_rules

__all__ = ["RuleHooks", "RuleSet", "Runtime", "compile_rules", "load_rules"]

_WHERE = {
    "Runtime": "decorator.actions.runtime",
    "RuleHooks": "decorator.rules.compile",
    "compile_rules": "decorator.rules.compile",
    "RuleSet": "decorator.rules.load",
    "load_rules": "decorator.rules.load",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'decorator.rules' has no attribute {name!r}")
