"""The action registry: the one contract every action (built-in or added) follows.

An action is a class with a YAML key (`name`), a pydantic `Config`, a load-time `prepare` and
per-phase handlers. Imports only proxy.hooks; never pydantic (a built-in names its Config as
"module:Class", resolved by `config_model` when the models are built), rules.models or the tunnel.

Shadow mode (a rule's `mode: shadow`) is part of the contract, so every action gets it by
following it: the compiler never calls a shadow rule's handlers; in each phase where the action
has a handler it calls `would(ex, phase)` instead, and counts and logs what that returns (the
action's "would-be" effect) in decorator_rule_shadow_hits_total{rule,action}. The default says
the action would act whenever the rule matches; an action whose effect depends on more than the
match overrides `would` (ratelimit: only when the key's bucket is empty; cors: only for an
allowed Origin). Actions that only observe (`observe_only = True`, e.g. `record`) run as usual
in shadow mode.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from decorator.proxy.hooks import Exchange, Reply

if TYPE_CHECKING:
    from decorator.rules.base import Strict

log = logging.getLogger("decorator.actions")

BUILTIN = ("respond", "headers", "record", "notify", "redirect", "rewrite", "cors", "ratelimit", "fault",
           "basic_auth", "forward_auth", "mirror", "retry")


@dataclass(frozen=True)
class RuleInfo:
    """What an action may know about the rule it belongs to."""

    name: str
    needs_response: bool    # the rule's match reads the response (status, response headers, timing)
    base_dir: str           # directory of the rule's file: relative paths start here
    path: str | None = None         # the match's path glob ({name} parameters: see actions.params)
    path_regex: str | None = None   # the match's path_regex (named groups are parameters too)
    methods: tuple[str, ...] | None = None  # the match's methods (None: every method)


class LoadContext(Protocol):
    """What `prepare` gets from the loader (decorator.rules.load implements it)."""

    def read_file(self, path: str, loc: tuple) -> bytes | None:
        """Read a file the action needs (recorded in the rule set's digest); None after reporting
        a located error when it cannot be read. `loc` is relative to the action's config."""

    def error(self, loc: tuple, message: str) -> None:
        """Report a user error at `loc` (relative to the action's config, e.g. ("file",))."""

    def is_real_file(self, path: str) -> bool:
        """False for files that exist only inside a ConfigMap manifest being validated."""


def request_only(action: str, rule: RuleInfo, does: str = "acts") -> list[tuple[tuple, str]]:
    """`phase_errors` of an action that works before the app is called: its rule's match must not
    read the response."""
    if rule.needs_response:
        return [((), f"{action} {does} before the app is called, but this rule's match reads the response "
                 "(status, response_headers, response.* or timing.*)")]
    return []


class Action:
    """Base of every action. One instance per rule that uses it, built once per compile.

    Subclasses set `name`, `Config`, `summary`, may override `prepare` (load time: read files,
    check what the model alone cannot) and set, in `__init__`, the handlers they need:

    - `request(ex) -> Reply | None`: before the app is called. A Reply answers directly.
    - `response(ex, reply) -> Reply | None`: on the response head. `reply` is the Reply an
      earlier rule chose (or None: the app's response goes out). Actions with `replies = True`
      return a Reply to replace the response; the others edit headers (`reply.headers` when a
      reply was chosen, else `ex.response_headers`) and return None.
    - `complete(ex) -> None`: the exchange is over (ex.status is what the client got).

    Handlers run on the event loop: they must never block. A request handler that must wait (a
    timer, a call to a service, work in a thread) returns an awaitable of `Reply | None`; the
    exchange is held until it resolves, then the rule set goes on. A response handler may return
    `proxy.hooks.Retry` (only when `ex.can_resend()`): the request goes to the app again, and no
    header edit applies to the dropped answer. `keep_body` (bytes, set in __init__) asks the
    tunnel to keep request bodies up to that size (for a Retry, and `ex.kept_body()` in the
    complete phase). A handler that raises is logged and counted in
    runtime.counters["action_errors"][rule]; the exchange goes on.

    Shadow mode: `observe_only = True` for an action with no effect on the exchange or the
    outside world (it then runs unchanged in shadow rules). Every other action is shadowed: see
    `would`.
    """

    name: ClassVar[str]
    Config: ClassVar[type[Strict] | str]  # the model, or "module:Class" to import it only when needed
    summary: ClassVar[str] = ""
    replies: ClassVar[bool] = False
    keep_body: int = 0
    observe_only: ClassVar[bool] = False

    request: Callable[[Exchange], Reply | None] | None = None
    response: Callable[[Exchange, Reply | None], Reply | None] | None = None
    complete: Callable[[Exchange], None] | None = None

    @classmethod
    def prepare(cls, config: Any, rule: RuleInfo, ctx: LoadContext) -> Any:
        """Load-time work (read files, compile templates); the result is handed to __init__."""
        return None

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        """(loc, message) for configurations that cannot run in the rule's phase."""
        return []

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        self.config = config
        self.rule = rule
        self.prepared = prepared
        self.runtime = runtime

    def would(self, ex: Exchange, phase: str) -> str | None:
        """Shadow mode, called instead of the handler of `phase` ("request", "response" or
        "complete") when the rule matched: a short text saying what the handler would do to `ex`
        (counted, logged, shown by `decorator explain`), or None when it would do nothing.

        It must not change the exchange, answer, or send anything. It may keep the action's own
        bookkeeping as if enforcing (a rate limiter takes its token), so that switching the rule
        to `enforce` starts from the state shadow mode measured. The default: the action would
        act whenever the rule matches."""
        return self.name


ACTIONS: dict[str, type[Action]] = {}


def register(cls: type[Action]) -> type[Action]:
    """Add an action class under its YAML key (a decorator, usable by third-party modules)."""
    if not getattr(cls, "name", None) or not getattr(cls, "Config", None):
        raise TypeError(f"{cls.__name__}: an action needs `name` and `Config`")
    ACTIONS[cls.name] = cls
    return cls


def config_model(cls: type[Action]) -> type[Strict]:
    """The pydantic model of an action's config, imported on first use when named by a string."""
    cfg = cls.Config
    if isinstance(cfg, str):
        module, _, name = cfg.partition(":")
        cfg = cls.Config = getattr(importlib.import_module(module), name)
    return cfg


_plugins_loaded = False


def load_plugins() -> None:
    """Import the added actions (once). The models call this before they are built; a process that
    only runs validated rules imports just the modules its rules name (`require`), so it never
    scans the installed distributions (importlib.metadata costs memory)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    # Additions ship as packages declaring an entry point in the "decorator.actions" group that
    # points at a module; importing it registers its classes, exactly like the built-ins.
    for ep in entry_points(group="decorator.actions"):
        try:
            ep.load()
        except Exception:  # a broken add-on must not stop the sidecar: log and go on without it
            log.exception("action plugin %s failed to load", ep.name)


def require(name: str, module: str) -> type[Action]:
    """The action registered as `name`, importing `module` (where validation found it) if needed."""
    cls = ACTIONS.get(name)
    if cls is None:
        importlib.import_module(module)
        cls = ACTIONS[name]
    return cls


def template_values(ex: Exchange, rule: str, status: int) -> dict[str, str]:
    """The values `{field}` templates may use (see rules.base.TEMPLATE_FIELDS)."""
    return {
        "status": str(status), "path": ex.path, "method": ex.method, "request_id": ex.request_id,
        "rule": rule, "route": ex.route or ex.path,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


for _mod in BUILTIN:
    importlib.import_module(f"decorator.actions.{_mod}")
