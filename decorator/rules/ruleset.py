"""A loaded rule set as plain data: what compile needs, picklable and free of the pydantic models.

Owns RuleSet/LoadedRule, the plain view of a validated rule (`PlainRule`, `Plain`) and the conversion
from models (`plain_ruleset`). Must not import pydantic, rules.models, rules.load or proxy: the serving
process compiles from this after a separate process validated the files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from decorator.actions.registry import ACTIONS, RuleInfo, require
from decorator.errors import Location


class Plain(Mapping):
    """A validated config (a model's `model_dump()`), read like the model: `cfg.status`,
    `cfg.headers.items()`, `cfg.request.set`. Nested mappings are Plain too. A field named like a
    Mapping method (keys, items, values, get) is read with `cfg["keys"]`."""

    __slots__ = ("_d",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._d = {k: _wrap(v) for k, v in data.items()}

    def __getattr__(self, name: str) -> Any:
        try:
            return self._d[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Plain({self.dump()!r})"

    def dump(self) -> dict[str, Any]:
        """Back to plain dicts and lists (e.g. to key state by the config)."""
        return {k: _unwrap(v) for k, v in self._d.items()}


def _wrap(v: Any) -> Any:
    if isinstance(v, Mapping):
        return Plain(v)
    if isinstance(v, (list, tuple)):
        return [_wrap(x) for x in v]
    return v


def _unwrap(v: Any) -> Any:
    if isinstance(v, Plain):
        return v.dump()
    if isinstance(v, list):
        return [_unwrap(x) for x in v]
    return v


@dataclass(frozen=True)
class PlainRule:
    """One validated rule as plain data: name, enabled, match and action configs (model dumps)."""

    name: str
    enabled: bool
    match_data: dict[str, Any]
    action_data: tuple[tuple[str, str, dict[str, Any]], ...]  # (action, its module, config)
    mode: str = "enforce"  # or "shadow" (the file's default already applied by the loader)

    @property
    def match(self) -> Plain:
        return Plain(self.match_data)

    def actions(self) -> list[tuple[str, Plain]]:
        """(action name, config) for every action the rule has, in registry order; an added action's
        module is imported here when this process has not seen it yet."""
        out = []
        for name, module, config in self.action_data:
            require(name, module)
            out.append((name, Plain(config)))
        return out


@dataclass
class LoadedRule:
    """A validated rule plus where it came from and what its actions prepared at load."""

    rule: Any  # the pydantic Rule after a load, a PlainRule once made plain
    location: Location
    base_dir: str
    prepared: dict[str, Any]
    info: RuleInfo


@dataclass
class RuleSet:
    """The outcome of a load: rules in order, every file read, and their digest."""

    entries: list[LoadedRule]
    files: list[str]
    digest: str
    tests: list[Any] = field(default_factory=list)  # pack tests (LoadedTest), for `decorator test`
    paths: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)  # warnings, e.g. a rules directory with no rules files

    @property
    def rules(self) -> list:
        return [e.rule for e in self.entries]


def plain_rule(rule: Any) -> PlainRule:
    if isinstance(rule, PlainRule):
        return rule
    order = {n: i for i, n in enumerate(ACTIONS)}
    acts = sorted(((n, ACTIONS[n].__module__, c.model_dump()) for n, c in rule.actions()),
                  key=lambda a: order[a[0]])
    return PlainRule(rule.name, rule.enabled, rule.match.model_dump(), tuple(acts), rule.mode or "enforce")


def plain_ruleset(rs: RuleSet) -> RuleSet:
    """The rule set with every rule as plain data and without its pack tests: what a process that
    only serves (or a worker handed the rules by a supervisor) needs."""
    if not rs.tests and all(isinstance(e.rule, PlainRule) for e in rs.entries):
        return rs
    return replace(rs, entries=[replace(e, rule=plain_rule(e.rule)) for e in rs.entries], tests=[])
