"""`decorator run` as a new user meets it, as real processes: the summary line on invalid rules,
an empty rules directory, what the reload flags and SIGHUP do, and malformed dashboard URLs."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decorator.cli import build_parser
from decorator.settings import from_args
from tests.k8s.kubelet_volume import ConfigMapVolume

ROOT = Path(__file__).resolve().parents[1]
EMPTY_NOTE = "no *.yaml or *.yml files in this directory: no rules from it"


def rules_text(body: str) -> str:
    return f"rules:\n  - name: hello\n    match: {{path: /hello}}\n    respond: {{body: {body}}}\n"


def decorator(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD", "MOTHERSHIP", "RULES")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "decorator", *args], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=60, check=False)


class Running:
    """`decorator run` on port 0 (the app is never called: rules answer or nothing is asked), its
    stderr in a file so the test can read the log while it runs."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.log = tmp / f"run-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD", "MOTHERSHIP", "RULES")}
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "decorator", "run", "--host", "127.0.0.1", "--port", "0",
                 "--admin-port", "0", "--target", "127.0.0.1:1", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        m = self.wait_log(r"listening on 127\.0\.0\.1:(\d+)")
        self.port = int(m.group(1))

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log after {timeout}s:\n{self.text()}")

    def get(self, path: str) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def wait_body(self, path: str, body: bytes, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get(path)[1] == body:
                return
            time.sleep(0.05)
        raise AssertionError(f"{path} never answered {body!r}; log:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


# -- invalid rules: the errors, then one summary line ---------------------------------------------

def test_run_on_invalid_rules_ends_with_a_summary_like_validate(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: x\n    natch: {status: 404}\n    record: {timing: true}\n"
                   "  - name: y\n    recrd: {timing: true}\n")
    validate = decorator("validate", str(bad))
    started = decorator("run", "--port", "0", "--admin-port", "0", "--rules", str(bad))
    assert (validate.returncode, started.returncode) == (1, 1)
    assert validate.stderr.splitlines()[-1] == "invalid: 2 errors"
    lines = started.stderr.splitlines()
    assert lines[-1] == "not starting: 2 errors"
    assert sum(f"{bad}:" in ln for ln in lines) == 2 and "listening" not in started.stderr


# -- an empty rules directory is no rules, with a warning -----------------------------------------

@pytest.mark.parametrize("layout", ["plain", "configmap"])
def test_an_empty_rules_directory_starts_with_no_rules_and_a_later_file_loads(tmp_path, layout):
    rules = tmp_path / "rules"
    if layout == "plain":
        rules.mkdir()
        def add(text: str) -> None:
            (rules / "rules.yaml").write_text(text)
    else:  # a ConfigMap with no keys yet: only `..data -> ..2026_…/` (empty)
        volume = ConfigMapVolume(rules)
        volume.write({})
        assert (rules / "..data").is_symlink()
        def add(text: str) -> None:
            volume.write({"rules.yaml": text})
    run = Running(tmp_path, "--rules", str(rules))
    try:
        assert run.text().count(EMPTY_NOTE) == 1 and "WARNING" in run.wait_log(re.escape(EMPTY_NOTE)).string
        assert run.get("/hello")[0] != 200  # no rules: forwarded to the (absent) app
        add(rules_text("hi"))
        run.wait_body("/hello", b"hi")
        assert "rules reloaded (watch)" in run.text()
    finally:
        run.stop()
    assert run.proc.returncode == 0


def test_validate_an_empty_directory_is_ok_with_a_note_and_a_missing_path_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = decorator("validate", str(empty))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok: 0 rules in 0 files\n"
    assert r.stderr == f"note: {empty}: {EMPTY_NOTE}\n"
    r = decorator("validate", "--format", "json", str(empty))
    assert (r.returncode, r.stdout.strip()) == (0, "[]")
    missing = tmp_path / "missing"
    for args in (["validate", str(missing)], ["run", "--port", "0", "--admin-port", "0", "--rules", str(missing)]):
        r = decorator(*args)
        assert r.returncode == 1 and f"{missing}: no such file or directory" in r.stdout + r.stderr, args


def test_an_include_of_an_empty_directory_is_still_an_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "rules.yaml").write_text("include: [nothing]\nrules: []\n")
    r = decorator("validate", str(tmp_path / "rules.yaml"))
    assert r.returncode == 1 and "include: no *.yaml or *.yml files in directory" in r.stdout


# -- reload flags and SIGHUP ----------------------------------------------------------------------

def test_help_says_what_reloads_the_rules():
    r = decorator("run", "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0
    assert "--no-watch turns both off) and on SIGHUP, always" in text
    assert "no automatic reload at all: neither the file watch nor the poll; only SIGHUP reloads" in text
    assert "(default 5s; 0 = watch only)" in text


def test_no_watch_reloads_on_sighup_only(tmp_path):
    """The same edit lands on a watching sidecar and on a --no-watch one. The second waits past the
    default 5 s poll (which --no-watch used to leave running) and still serves the old rules."""
    watched, unwatched = tmp_path / "a", tmp_path / "b"
    for d in (watched, unwatched):
        d.mkdir()
        (d / "rules.yaml").write_text(rules_text("v1"))
    on = Running(tmp_path, "--rules", str(watched), "--reload-poll", "0")
    off = Running(tmp_path, "--rules", str(unwatched), "--no-watch")
    try:
        assert on.get("/hello")[1] == off.get("/hello")[1] == b"v1"
        edited = time.monotonic()
        for d in (watched, unwatched):
            (d / "rules.yaml").write_text(rules_text("v2"))
        on.wait_body("/hello", b"v2")
        time.sleep(max(0.0, edited + 6.0 - time.monotonic()))
        assert off.get("/hello")[1] == b"v1"
        assert "rules reloaded" not in off.text()
        off.proc.send_signal(signal.SIGHUP)
        off.wait_body("/hello", b"v2")
        assert "rules reloaded (SIGHUP)" in off.text()
    finally:
        on.stop()
        off.stop()


def test_a_poll_with_no_watch_is_a_usage_error(tmp_path):
    r = decorator("run", "--port", "0", "--admin-port", "0", "--no-watch", "--reload-poll", "2s")
    assert r.returncode == 2
    assert r.stderr == ("decorator run: --reload-poll: --no-watch turns off every automatic reload, the poll "
                        "too; give one or the other (SIGHUP reloads either way)\n")


# -- the dashboard URL ----------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "env", "source"), [
    (["--dashboard", "ftp://x"], {}, "--dashboard"),
    (["--dashboard", "http://"], {}, "--dashboard"),
    (["--dashboard", "dash:99999"], {}, "--dashboard"),
    ([], {"DASHBOARD": "http://:8088"}, "DASHBOARD"),
    ([], {"DASHBOARD": "dash:port"}, "DASHBOARD"),
    ([], {"MOTHERSHIP": "ws://dash:8088"}, "MOTHERSHIP"),
])
def test_a_malformed_dashboard_url_is_a_usage_error(args, env, source):
    r = decorator("run", "--port", "0", "--admin-port", "0", *args, env=env)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"decorator run: {source}: ")
    assert "push failed" not in r.stderr


@pytest.mark.parametrize(("given", "url"), [
    ("dash:8088", "http://dash:8088"),
    ("https://dash.example/base/", "https://dash.example/base/"),
    ("[::1]:8088", "http://[::1]:8088"),
])
def test_a_bare_host_port_still_gets_http(given, url):
    args = build_parser().parse_args(["run"])
    assert from_args(args, env={"DASHBOARD": given}).dashboard == url
    args = build_parser().parse_args(["run", "--dashboard", given])
    assert from_args(args, env={"DASHBOARD": "ftp://ignored"}).dashboard == url
