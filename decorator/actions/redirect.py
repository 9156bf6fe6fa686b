"""`redirect`: answer 301/302/303/307/308 with a Location built from the rule's path parameters,
before the app is called; the query string is kept unless `query: false`.

Imports proxy.hooks, rules.values and actions.params; never pydantic (the config model lives in
actions.configs_traffic).
"""

from __future__ import annotations

import difflib
import string
from typing import Any

from decorator.actions.params import URL_FIELDS, param_names, param_reader
from decorator.actions.registry import Action, LoadContext, RuleInfo, register, request_only, template_values
from decorator.proxy.hooks import Exchange, Reply
from decorator.rules.values import Template, header_safe

REDIRECT_STATUSES = (301, 302, 303, 307, 308)


def url_template(text: str, rule: RuleInfo, loc: tuple, ctx: LoadContext) -> Template | None:
    """`text` compiled with the rule's path parameters and URL_FIELDS allowed; a located error with
    the closest name when it uses a field the rule does not provide."""
    names = param_names(rule)
    allowed = (*names, *URL_FIELDS)
    try:
        return Template(text, allowed)
    except ValueError:
        pass
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:  # unbalanced braces: say so as the template parser does
        ctx.error(loc, f"bad template {text!r}: {e} (write {{{{ and }}}} for literal braces)")
        return None
    unknown = sorted(used - set(allowed))
    if not unknown:  # a conversion or format spec ({page!r}): the template parser's own message
        try:
            Template(text, allowed)
        except ValueError as e:
            ctx.error(loc, str(e))
        return None
    for name in unknown:
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {{{close[0]}}}?)" if close else ""
        where = (f"the match's path parameters are {', '.join('{' + n + '}' for n in names)}" if names else
                 "the rule's match has no path parameters (use path: /docs/{page} or a path_regex "
                 "with named groups)")
        ctx.error(loc, f"unknown field {{{name}}} in {text!r}{hint}; {where}, and "
                  + ", ".join("{" + f + "}" for f in URL_FIELDS) + " are always there")
    return None


class UrlBuilder:
    """A compiled URL template and the rule's parameter reader: `render(ex)` -> text."""

    __slots__ = ("names", "params", "rule", "template")

    def __init__(self, template: Template, rule: RuleInfo) -> None:
        self.template = template
        self.rule = rule.name
        self.names = param_names(rule)
        self.params = param_reader(rule)

    def render(self, ex: Exchange) -> str:
        t = self.template
        if t.static:
            return t.text
        values = template_values(ex, self.rule, 0)
        values["query"] = ex.query
        if self.params is not None:
            values.update(dict.fromkeys(self.names, ""))  # an optional group that did not take part
            values.update(self.params(ex.path))
        return t.render(values)


@register
class Redirect(Action):
    name = "redirect"
    Config = "decorator.actions.configs_traffic:RedirectConfig"
    summary = "Answer with a redirect (301/302/303/307/308) to a URL built from the path; query kept."
    replies = True

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        return request_only("redirect", rule)

    @classmethod
    def prepare(cls, config: Any, rule: RuleInfo, ctx: LoadContext) -> Template | None:
        return url_template(config.to, rule, ("to",), ctx)

    def __init__(self, config: Any, rule: RuleInfo, prepared: Template, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self._url = UrlBuilder(prepared, rule)
        self._status = config.status
        self._query = config.query
        self.request = self._redirect

    def location(self, ex: Exchange) -> str:
        url = self._url.render(ex)
        if self._query and ex.query:
            url += ("&" if "?" in url else "?") + ex.query
        return header_safe(url)

    def would(self, ex: Exchange, phase: str) -> str:
        return f"redirect {self._status} to {self.location(ex)}"

    def _redirect(self, ex: Exchange) -> Reply:
        loc = self.location(ex).encode("latin-1", "replace")
        return Reply(self._status, [(b"Location", loc), (b"Content-Type", b"text/plain; charset=utf-8")],
                     body=b"Redirecting to " + loc + b"\n")
