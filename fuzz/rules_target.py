"""The `rules` target: generated and mutated rules documents (plain files and ConfigMap manifests)
through the real loader, compiler and matcher, and the ConfigMap directory reader.

Oracle: loading either succeeds or raises RulesInvalid whose every error reads `file:line:col:
message` (a user error with a location); any other exception is a finding (a bug's traceback).
What loads is compiled and run on generated exchanges (templates, globs, regexes, JMESPath, the
actions) by the same driver the tunnel uses: no exception, and every input within a time bound
(SIGALRM), so a pattern that backtracks without end is a hang, not a slow test.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import tempfile
import time

from decorator.errors import RulesInvalid
from decorator.rules.compile import compile_rules
from decorator.rules.load import load_rules
from decorator.rules.packtest import CaptureRuntime, simulate
from fuzz.common import ErrorLog, Result, campaign, corpus, mutated

BATCH = 32
INPUT_SECONDS = 2.0      # one document: load, compile and a few exchanges
_LOCATED = re.compile(r"^(?P<file>[^\n]+?):(?P<line>[1-9][0-9]*):(?P<col>[1-9][0-9]*): \S")


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


_YAML_TOKENS = [t.encode() for t in [
    ": ", "- ", "{", "}", "[", "]", ",", "\n", "\n  ", "\n    - ", "\t", "'", '"', "|", ">", "#", "&a ", "*a", "<<: *a",
    "!!python/object/apply:os.system ['true']", "!!binary", "!!int", "~", "null", "true", "1e999", "0x1F",
    "99999999999999999999", "${X}", "${X:-d}", "$${X}", "${", "%YAML 1.1\n---\n", "---\n", "...\n", "\ufeff",
    "(a+)+$", "(a|ab)*c", "[", "\\", "**", "*", "{id}", "{", "`1`", "request.query", "response.status", "&&", "||",
    "5xx", "404", "600", "-1", "GET", "get", "path", "path_regex", "when", "match", "status", "method", "headers",
    "respond", "record", "notify", "include", "vars", "tests", "rules", "name", "file", "../../etc/passwd",
    "/dev/zero", "kind: ConfigMap", "data", "é", "\x00", "\x85", "\u2028",
]]
_PATHS = ["/", "/api/users/7", "/img/a/b/c.png", "/v1/items/abc", "/maintenance", "/%2e%2e/x", "/caf\xe9",
          "/" + "a" * 2000, "/" + "a/" * 500 + "!", "/api/" + "x" * 1500 + "/", "/?debug=1", "/search?q=" + "a" * 300]


def _laughs() -> bytes:
    """A billion-laughs document: aliases that expand exponentially if anything walks them naively."""
    lines = ['x-0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"x-{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("rules:\n  - name: r\n    match: { path: /x }\n    record: { timing: true }\n    x-l: *a9")
    return "\n".join(lines).encode()


def document(r: random.Random, seeds: list[bytes]) -> bytes:
    kind = r.randint(0, 9)
    if kind == 0:
        return _laughs()
    if kind < 4:
        return _generated(r)
    data = mutated(r, seeds, _YAML_TOKENS, 5)
    return data


def _generated(r: random.Random) -> bytes:
    """A rule from a grammar: each match key drawn from valid and broken spellings."""
    match = {
        "path": ["/api/**", "/users/{id}", "/img/*.png", "/a/{x}/{x}", "/{", "**", "/a**b", "/*/**/*", "/" + "*" * 50],
        "path_regex": ["^/v[0-9]+/", "(a+)+$", "(a|ab)*c", "^(?!/health)", "[", "(?P<x>a)(?P=x)", "a{1,100000}",
                       "\\d+$", "(?i)^/API/", "^/(users|teams)/[0-9]+$"],
        "status": ["404", "5xx", "[4xx, 503]", "500-599", "600", "99", "4XX", "599-500", "[]", "abc"],
        "method": ["GET", "[GET, HEAD]", "get", "G3T", "[]", "''"],
        "when": ["\"request.query.debug == '1'\"", "\"response.status >= `500`\"", "\"length(request.path) > `10`\"",
                 "\"nosuch.field\"", "\"request.headers.\\\"x-a\\\" != null\"", "\"[\"", "\"a ||\"", "\"`1`\"",
                 "\"sort_by(request.headers, &@)\"", "\"request.query.*.x[?@ > `1`]\""],
        "headers": ["{X-A: core}", "{X-A: false}", "{Accept: {regex: \"^text/\"}}", "{\"X A\": 1}", "{X-A: {regex: \"(\"}}",
                    "{X-A: {present: true, equals: x}}"],
    }
    actions = ["record: { timing: true }", "respond: { status: 503, body: down }", "respond: { file: nope.html }",
               "headers: { response: { set: { X-A: \"${X:-1}\" } } }", "notify: { url: \"http://127.0.0.1:9/x\", cooldown: 1s }",
               "respond: { status: 99 }", "nosuch: {}", "record: 7"]
    rules = []
    for i in range(r.randint(0, 3)):
        keys = r.sample(list(match), r.randint(0, 3))
        m = ", ".join(f"{k}: {r.choice(match[k])}" for k in keys)
        name = r.choice([f"r{i}", "r0", "", "a b", "x" * 300])
        rules.append(f"  - name: {name}\n    match: {{ {m} }}\n    {r.choice(actions)}")
    head = r.choice(["", "vars: { X: /v }\n", "include: [nope.yaml]\n", "vars: [1]\n", "x-a: &a {path: /x}\n"])
    return (head + "rules:\n" + "\n".join(rules) + "\n").encode()


class Runner:
    def __init__(self, result: Result) -> None:
        self.result = result
        self.dir = tempfile.mkdtemp(prefix="decorator-fuzz-rules-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.n = 0

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def batch(self, docs: list[bytes]) -> None:
        for doc in docs:
            self.one(doc)

    def one(self, doc: bytes) -> None:
        self.result.inputs += 1
        self.n += 1
        name = "configmap.yaml" if b"ConfigMap" in doc else "rules.yaml"
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(doc)
        with open(os.path.join(self.dir, "page.html"), "wb") as f:
            f.write(b"<p>page</p>")
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, INPUT_SECONDS)
        try:
            self._judge(path, doc)
        except Hang:
            self.result.fail(f"hang: more than {INPUT_SECONDS:.0f}s on one document", doc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.unlink(path)

    def _judge(self, path: str, doc: bytes) -> None:
        try:
            ruleset = load_rules([path], env={"X": "/x"})
        except RulesInvalid as e:
            for err in e.errors:
                if not _LOCATED.match(str(err)):
                    self.result.fail(f"an error without file:line:col: {err}", doc)
                    return
            return
        except Hang:
            raise
        except Exception as e:  # any other exception is what this target looks for
            self.result.fail(f"loading raised {type(e).__name__}: {e}", doc)
            return
        runtime = CaptureRuntime()
        try:
            hooks = compile_rules(ruleset, runtime)
            rnd = random.Random(self.n)
            for _ in range(3):
                target = rnd.choice(_PATHS)
                headers = [(b"X-A", rnd.choice([b"core", b"x" * 1000])), (b"Accept", b"text/html")]
                simulate(hooks, rnd.choice(["GET", "HEAD", "POST"]), target, headers)
        except Hang:
            raise
        except Exception as e:
            self.result.fail(f"compiling or running raised {type(e).__name__}: {e}", doc)


def run(inputs: int, seed: int | None = None) -> Result:
    result = Result("rules")
    seeds = corpus("rules")
    runner = Runner(result)
    with ErrorLog(result, ("decorator",)):
        try:
            runner.batch(seeds[:inputs])
            campaign(result, inputs, seed, BATCH, lambda r: document(r, seeds), runner.batch)
        finally:
            runner.close()
    result.seconds = time.monotonic() - result.t0
    return result


def replay(inputs: list[bytes]) -> Result:
    result = Result("rules")
    runner = Runner(result)
    with ErrorLog(result, ("decorator",)):
        try:
            runner.batch(inputs)
        finally:
            runner.close()
    return result
