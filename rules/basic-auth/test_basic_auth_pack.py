"""The basic-auth pack in a running sidecar (`decorator run` as a process) in front of a real app,
with a real htpasswd file made by bcrypt; the placeholder file lets nobody in; load errors name the
htpasswd line."""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import bcrypt

from tests.support import free_port, threaded_http_server, wait_port

PACK = Path(__file__).resolve().parent


class App(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_GET(self) -> None:
        App.seen.append(dict(self.headers.items()))
        body = b"admin page"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def _auth(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_the_pack_guards_admin_in_a_running_sidecar(tmp_path):
    users = tmp_path / "team.htpasswd"
    users.write_text(f"ops:{bcrypt.hashpw(b's3cret pass', bcrypt.gensalt(5)).decode()}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD", "MOTHERSHIP", "RULES")}
    env.update(BASIC_AUTH="true", BASIC_AUTH_USERS_FILE=str(users), BASIC_AUTH_REALM="ops")
    with threaded_http_server(App) as app_port:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "decorator", "run", "--host", "127.0.0.1", "--port", str(port),
                                 "--target", f"127.0.0.1:{app_port}", "--rules", str(PACK), "--no-watch"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, text=True)
        try:
            wait_port(port, proc)
            App.seen.clear()
            status, headers, _ = _get(port, "/admin/")
            assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="ops", charset="UTF-8"'
            assert _get(port, "/admin/", _auth("ops", "wrong"))[0] == 401
            assert App.seen == []
            status, _, body = _get(port, "/admin/", {**_auth("ops", "s3cret pass"), "X-Remote-User": "root"})
            assert (status, body) == (200, b"admin page")
            assert "Authorization" not in App.seen[0] and App.seen[0]["X-Remote-User"] == "ops"
            assert _get(port, "/shop")[0] == 200
        finally:
            proc.terminate()
            proc.wait(10)


def test_a_non_bcrypt_entry_is_a_located_load_error(tmp_path):
    users = tmp_path / "old.htpasswd"
    users.write_text("# made long ago\nalice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n")
    env = dict(os.environ, BASIC_AUTH_USERS_FILE=str(users))
    r = subprocess.run([sys.executable, "-m", "decorator", "validate", str(PACK)], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 1
    assert f"basic-auth.yaml:26:19: {users}:2: user 'alice': only bcrypt hashes are supported" in r.stdout, r.stdout
    assert "htpasswd -B" in r.stdout


def test_decorator_test_runs_the_pack():
    r = subprocess.run([sys.executable, "-m", "decorator", "test", str(PACK)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "7 passed, 0 failed" in r.stdout
