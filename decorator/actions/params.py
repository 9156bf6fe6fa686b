"""Path parameters for actions that build URLs (redirect, rewrite): `{name}` segments of the rule's
path glob and named groups of its path_regex, read from the path the rule just matched.

Imports rules.match (the glob compiler) and rules.values; never pydantic, proxy internals or compile.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from decorator.actions.registry import RuleInfo
from decorator.rules.match import PathPattern
from decorator.rules.values import TEMPLATE_FIELDS

# Fields every URL template may use besides the path parameters.
URL_FIELDS = (*TEMPLATE_FIELDS, "query")


def param_names(rule: RuleInfo) -> tuple[str, ...]:
    """The parameter names the rule's match provides, glob first, in order of appearance."""
    names: list[str] = []
    if rule.path is not None and "{" in rule.path:
        names += re.compile(PathPattern(rule.path).regex.pattern).groupindex
    if rule.path_regex is not None:
        names += [n for n in re.compile(rule.path_regex).groupindex if n not in names]
    return tuple(names)


def param_reader(rule: RuleInfo) -> Callable[[str], dict[str, str]] | None:
    """path -> {parameter: value} for the rule's match, or None when it has no parameters."""
    glob = PathPattern(rule.path).regex if rule.path is not None and "{" in rule.path else None
    rx = re.compile(rule.path_regex) if rule.path_regex is not None and \
        re.compile(rule.path_regex).groupindex else None
    if glob is None and rx is None:
        return None

    def read(path: str) -> dict[str, str]:
        out: dict[str, str] = {}
        if glob is not None and (m := glob.fullmatch(path)) is not None:
            out.update(m.groupdict())
        if rx is not None and (m := rx.search(path)) is not None:
            out.update({k: v for k, v in m.groupdict().items() if v is not None})
        return out
    return read
