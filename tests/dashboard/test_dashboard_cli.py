"""`decorator dashboard` as a real subprocess: logs its URL, serves, stops cleanly on SIGTERM, keeps the
data in its --db file across a restart, and refuses bad flags with one line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from dash_helpers import endpoint, stats

DECORATOR = [sys.executable, "-m", "decorator"]


def _start(db: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([*DECORATOR, "dashboard", "--host", "127.0.0.1", "--port", "0", "--db", str(db),
                             *extra], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    line = proc.stderr.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    assert m, f"no URL in the first log line: {line!r}"
    return proc, m.group(1)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def test_dashboard_command_serves_and_keeps_data_across_restarts(tmp_path):
    db = tmp_path / "sub.db"
    proc, url = _start(db, "--retention", "2h", env={"DASHBOARD_TOKEN": "tok"})
    try:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "auth": True, "retention": 7200.0}
        body = stats("cli-pod", [endpoint("/cli", [1, 2, 3])])
        assert httpx.post(f"{url}/stats", json=body).status_code == 401
        assert httpx.post(f"{url}/stats", json=body, headers={"Authorization": "Bearer tok"}).status_code == 200
    finally:
        err = _stop(proc)
    assert "Traceback" not in err

    proc, url = _start(db)
    try:
        assert httpx.get(f"{url}/healthz").json()["auth"] is False
        assert [(e["endpoint"], e["hits"]) for e in httpx.get(f"{url}/api/endpoints").json()] == [("/cli", 3)]
    finally:
        _stop(proc)


def test_bad_flags_are_one_line_errors(tmp_path):
    r = subprocess.run([*DECORATOR, "dashboard", "--retention", "forever", "--db", str(tmp_path / "x.db")],
                       check=False, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--retention" in r.stderr and "Traceback" not in r.stderr

    r = subprocess.run([*DECORATOR, "dashboard", "--port", "0", "--db", str(tmp_path / "no" / "such" / "x.db")],
                       check=False, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--db" in r.stderr and "Traceback" not in r.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*DECORATOR, "dashboard", "--host", "127.0.0.1", "--port", str(port),
                            "--db", str(tmp_path / "y.db")], check=False, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr
