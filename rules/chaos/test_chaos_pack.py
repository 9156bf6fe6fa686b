"""The chaos pack beyond what `tests:` cases can say: the shares over many requests, drawn
independently, and `decorator test` on the pack as a user runs it. Drives the pack's compiled hooks
with decorator.rules.packtest (no network)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from decorator.rules import compile_rules, load_rules
from decorator.rules.packtest import CaptureRuntime, simulate

PACK = str(Path(__file__).resolve().parent)


def test_shares_over_many_requests_are_independent():
    rt = CaptureRuntime()
    env = {"CHAOS": "true", "CHAOS_DELAY": "1ms", "CHAOS_DELAY_PERCENT": "20", "CHAOS_ABORT_PERCENT": "10"}
    hooks = compile_rules(load_rules([PACK], env=env), rt)
    statuses = [simulate(hooks, "GET", f"/api/{i}", []).status for i in range(1500)]
    delayed, aborted = rt.counters["fault_delays"]["chaos/chaos"], rt.counters["fault_aborts"]["chaos/chaos"]
    assert statuses.count(503) == aborted and statuses.count(200) == 1500 - aborted
    assert 220 < delayed < 380 and 100 < aborted < 200  # 20% and 10%, with room for chance


def test_default_parameters_are_the_documented_ones():
    rt = CaptureRuntime()
    hooks = compile_rules(load_rules([PACK], env={"CHAOS": "true"}), rt)
    fault = hooks._req.lookup("GET", "/x")[0].fns[0][0].__self__
    assert (fault._delay, fault._delay_p, fault._abort, fault._abort_p) == (0.2, 0.1, 503, 0.01)
    assert load_rules([PACK], env={}).entries[0].rule.enabled is False  # off unless switched on


def test_decorator_test_runs_the_pack():
    r = subprocess.run([sys.executable, "-m", "decorator", "test", PACK], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 passed, 0 failed" in r.stdout
