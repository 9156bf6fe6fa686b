"""`fault`: chaos testing: delay some matched requests, answer some with an error instead of the app.

The delay and the abort are decided independently per request; a delay is a timer the exchange
awaits (the request phase returns an awaitable), never a blocking sleep. Imports proxy.hooks only.
"""

from __future__ import annotations

import asyncio
import random
from http import HTTPStatus
from typing import Any

from decorator.actions.registry import Action, RuleInfo, register, request_only
from decorator.proxy.hooks import Exchange, Reply


@register
class Fault(Action):
    name = "fault"
    Config = "decorator.actions.configs_edge:FaultConfig"
    summary = "Inject faults: delay and/or abort a share of matched requests (chaos testing)."
    replies = True

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        return request_only("fault", rule)

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self._delay = config.delay
        self._delay_p = config.delay_percent / 100.0
        self._abort = config.abort
        self._abort_p = config.abort_percent / 100.0
        self._random = random.random
        if self._abort is not None:
            try:
                phrase = HTTPStatus(self._abort).phrase
            except ValueError:
                phrase = "Error"
            self._body = f"{self._abort} {phrase} (fault injected by rule {rule.name})\n".encode()
        self.request = self._fault

    def _draw(self) -> tuple[bool, bool]:
        # Two independent draws: "1% aborted" holds whatever share is delayed.
        delay = self._delay is not None and (self._delay_p >= 1.0 or self._random() < self._delay_p)
        abort = self._abort is not None and (self._abort_p >= 1.0 or self._random() < self._abort_p)
        return delay and self._delay > 0, abort

    def would(self, ex: Exchange, phase: str) -> str | None:
        """Shadow mode: the same draws, said instead of done."""
        delay, abort = self._draw()
        what = [f"delay {self._delay * 1000:g}ms"] if delay else []
        if abort:
            what.append(f"answer {self._abort}")
        return " then ".join(what) or None

    def _fault(self, ex: Exchange) -> Any:
        delay, abort = self._draw()
        reply = None
        if abort:
            self.runtime.count("fault_aborts", self.rule.name)
            reply = Reply(self._abort, [(b"Content-Type", b"text/plain; charset=utf-8")], self._body)
        if delay:
            self.runtime.count("fault_delays", self.rule.name)
            return _after(self._delay, reply)
        return reply


async def _after(seconds: float, reply: Reply | None) -> Reply | None:
    await asyncio.sleep(seconds)
    return reply
