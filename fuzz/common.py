"""What every fuzz target shares: the result line, hypothesis settings for a campaign, corpus files,
byte mutations and random read splits. No HTTP knowledge here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "corpus"


@dataclass
class Result:
    """One target's campaign: inputs judged, failures (each with the input that caused it)."""

    target: str
    inputs: int = 0
    failures: list[tuple[str, bytes]] = field(default_factory=list)
    seconds: float = 0.0
    t0: float = field(default_factory=time.monotonic)

    def fail(self, what: str, data: bytes) -> None:
        if len(self.failures) < 1000:  # a broken build must not eat the memory
            self.failures.append((what, data))
        else:
            self.failures.append((what, b""))

    def line(self) -> str:
        return f"{self.target}: {self.inputs} inputs, {len(self.failures)} failures"

    def rate(self) -> str:
        s = self.seconds or (time.monotonic() - self.t0)
        return f"{self.target}: {self.inputs / s:.0f} inputs/s over {s:.1f}s" if s else ""


def campaign_settings(examples: int, seed: int | None) -> settings:
    """Generation only (no shrinking: a campaign counts failures and goes on), no database, no
    deadline; a seed makes a run repeatable (FUZZ_SEED)."""
    return settings(max_examples=max(1, examples), deadline=None, database=None, derandomize=False,
                    phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                    report_multiple_bugs=False, print_blob=False)


def campaign(result: Result, inputs: int, seed: int | None, batch: int,
             make_input: Callable[[random.Random], object], run_batch: Callable[[list], None]) -> None:
    """Run `run_batch` on lists of `batch` inputs until `inputs` were judged. Hypothesis is the
    engine: each example is a Random it controls (so FUZZ_SEED repeats a run exactly), from which
    the target's grammar and mutator build a batch; drawing each byte through hypothesis's own
    strategies measured ~60 ms a batch, 6x the cost of judging it."""
    left = inputs - result.inputs
    if left <= 0:
        return

    @campaign_settings(-(-left // batch), seed)
    @given(st.randoms(use_true_random=True))
    def example(r: random.Random) -> None:
        n = min(batch, inputs - result.inputs)
        if n > 0:
            run_batch([make_input(r) for _ in range(n)])

    if seed is not None:
        example = hypothesis_seed(seed)(example)
    example()


class ErrorLog(logging.Handler):
    """Every ERROR the code under test logs (a hook's or the tunnel's own traceback) is a failure."""

    def __init__(self, result: Result, loggers: tuple[str, ...] = ("decorator",)) -> None:
        super().__init__(logging.ERROR)
        self.result = result
        self.loggers = [logging.getLogger(n) for n in loggers]

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.result.fail(f"logged an error: {text}", b"")

    def __enter__(self) -> ErrorLog:
        self.saved = [(lg.propagate, lg.level) for lg in self.loggers]
        for lg in self.loggers:
            lg.addHandler(self)
            lg.propagate = False  # the warnings of a million refused inputs are not for stderr
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc: object) -> None:
        for lg, (propagate, level) in zip(self.loggers, self.saved):
            lg.removeHandler(self)
            lg.propagate = propagate
            lg.setLevel(level)


def corpus(target: str) -> list[bytes]:
    """The committed seeds of a target (small files, one input each), in name order."""
    d = CORPUS / target
    return [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()] if d.is_dir() else []


# Tokens that matter to an HTTP parser, spliced into inputs by the mutator.
HTTP_TOKENS = [
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b";", b",", b"0", b"-1", b"+", b"0x10", b"\xff", b"\x7f",
    b"\r\n\r\n", b"chunked", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"Content-Length: 0\r\n",
    b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Host: x\r\n", b"HTTP/1.1", b"HTTP/1.0", b"\r\n 0",
    b"ffffffffffffffff", b"99999999999999999999", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"0\r\n\r\n", b"Expect: 100-continue\r\n",
    b"Upgrade: websocket\r\nConnection: upgrade\r\n", b"\xc3\xa9", b"%00", b"/../", b"*",
]


def mutated(r: random.Random, seeds: list[bytes], tokens: list[bytes], max_ops: int = 4) -> bytes:
    """A seed with a few byte-level edits: flip, insert a token, delete a range, duplicate a range,
    truncate. The edits most likely to break framing in interesting ways, not uniform noise."""
    data = bytearray(r.choice(seeds))
    for _ in range(r.randint(0, max_ops)):
        op = r.randint(0, 5)
        n = len(data)
        pos = r.randint(0, n)
        if op == 0 and n:
            data[min(pos, n - 1)] = r.randint(0, 255)
        elif op == 1:
            data[pos:pos] = r.choice(tokens)
        elif op == 2:
            del data[pos:pos + r.randint(1, 8)]
        elif op == 3:
            end = min(n, pos + r.randint(1, 32))
            data[pos:pos] = data[pos:end]
        elif op == 4:
            del data[pos:]
        else:
            data[pos:pos] = r.randbytes(r.randint(1, 4))
    return bytes(data)


def splits(r: random.Random, data: bytes) -> list[bytes]:
    """`data` cut at random places (a client's writes, so the parser sees many partial reads)."""
    if len(data) < 2 or r.randint(0, 3) == 0:
        return [data]
    cuts = sorted({r.randint(1, len(data) - 1) for _ in range(r.randint(1, 6))})
    parts, prev = [], 0
    for c in cuts:
        parts.append(data[prev:c])
        prev = c
    parts.append(data[prev:])
    return parts


_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def client_socket_options(s: socket.socket) -> None:
    """A campaign opens thousands of client connections a second on a machine other tests share.
    Each closes with a reset (SO_LINGER 0: no TIME_WAIT pile), takes its port at connect time even
    when bound to a source address (IP_BIND_ADDRESS_NO_PORT), and has SO_REUSEADDR so that another
    process's listener (with SO_REUSEADDR, as asyncio's are) can still bind the same port number."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
    except OSError:
        pass


async def settle(proxy: Any, result: Result) -> None:
    """Wait until the proxy has nothing open or in flight; a leak (a failure) if that never happens."""
    for _ in range(200):
        if not proxy.connections and proxy.stats["in_flight"] == 0:
            return
        await asyncio.sleep(0.01)
    result.fail(f"leak: {len(proxy.connections)} connections, "
                f"{proxy.stats['in_flight']} exchanges still open after the batch", b"")
