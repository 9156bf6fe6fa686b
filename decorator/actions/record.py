"""`record`: hand the exchange's timing/status/size to telemetry at completion.

Calls `runtime.recorder.record(ex, fields)`; with no recorder it only counts. Imports proxy.hooks
and rules.base only; telemetry is reached through the runtime, never imported.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from decorator.actions.registry import Action, RuleInfo, register
from decorator.proxy.hooks import Exchange

ALL_FIELDS = frozenset({"timing", "status", "size"})


def record_fields(config: Any) -> frozenset[str]:
    """The fields a `record` config asks for: none named means all; else those set to true."""
    given = {k: v for k in ALL_FIELDS if (v := getattr(config, k)) is not None}
    if not given:
        return ALL_FIELDS
    return frozenset(k for k, v in given.items() if v)


@register
class Record(Action):
    name = "record"
    Config = "decorator.actions.configs:RecordConfig"
    summary = "Record timing/status/size of the exchange into telemetry (at completion)."
    observe_only = True  # runs as usual in shadow rules: it changes nothing

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self._fields = record_fields(config)
        rec = runtime.recorder if runtime is not None else None
        # Straight to the recorder when there is one: this runs on every exchange it matches.
        # (An Aggregator binds the fields itself; any other recorder only needs `record(ex, fields)`.)
        if rec is None:
            self.complete = self._record
        elif hasattr(rec, "recorder"):
            self.complete = rec.recorder(self._fields)
        else:
            self.complete = partial(rec.record, fields=self._fields)

    def _record(self, ex: Exchange) -> None:
        rec = self.runtime.recorder
        if rec is None:
            self.runtime.count("records", self.rule.name)
        else:
            rec.record(ex, self._fields)
