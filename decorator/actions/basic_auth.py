"""`basic_auth`: HTTP Basic authentication against bcrypt hashes (htpasswd -B), before the app.

Owns parsing htpasswd files at load (only bcrypt entries: a located error for any other kind), the
401 challenge, and checking credentials: bcrypt (constant-time, and slow by design) runs in a small
thread pool, so the request phase returns an awaitable; a verified credential is remembered (keyed
by a per-process HMAC of the header, bounded) so a logged-in client costs one dictionary lookup.
Imports proxy.hooks; bcrypt lazily.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from decorator.actions.registry import Action, LoadContext, RuleInfo, register, request_only
from decorator.proxy.hooks import Exchange, Reply

_BCRYPT = re.compile(r"^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$")
CACHE_MAX = 1000            # verified credentials remembered per rule
_HASH_KINDS = (("$apr1$", "an Apache MD5 ($apr1$)"), ("{SHA}", "a SHA-1 ({SHA})"), ("$1$", "an MD5-crypt ($1$)"),
               ("$5$", "a SHA-256-crypt ($5$)"), ("$6$", "a SHA-512-crypt ($6$)"))
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decorator-bcrypt")
    return _executor


def hash_problem(h: str) -> str | None:
    """Why `h` is not a bcrypt hash this action can check, or None."""
    if _BCRYPT.match(h):
        return None
    kind = next((name for prefix, name in _HASH_KINDS if h.startswith(prefix)), None)
    if kind is None:
        kind = "a plain-text or crypt()" if not h.startswith("$") else "an unknown"
    return f"only bcrypt hashes are supported (create them with `htpasswd -B`); found {kind} entry"


def parse_htpasswd(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """htpasswd text -> ({user: hash}, [(line number, problem)])."""
    users: dict[str, str] = {}
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, h = line.partition(":")
        if not sep or not user:
            problems.append((n, "expected user:hash"))
            continue
        problem = hash_problem(h)
        if problem:
            problems.append((n, f"user {user!r}: {problem}"))
        elif user in users:
            problems.append((n, f"user {user!r} appears twice"))
        else:
            users[user] = h
    return users, problems


@register
class BasicAuth(Action):
    name = "basic_auth"
    Config = "decorator.actions.configs_edge:BasicAuthConfig"
    summary = "HTTP Basic authentication (bcrypt htpasswd): 401 with WWW-Authenticate until the client logs in."
    replies = True

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        return request_only("basic_auth", rule)

    @classmethod
    def prepare(cls, config: Any, rule: RuleInfo, ctx: LoadContext) -> dict[str, str] | None:
        users: dict[str, str] = {}
        ok = True
        if config.users_file is not None:
            path = os.path.normpath(os.path.join(rule.base_dir, config.users_file))
            data = ctx.read_file(path, ("users_file",))
            if data is None:
                return None
            found, problems = parse_htpasswd(data.decode("utf-8", "replace"))
            for line, problem in problems:
                ctx.error(("users_file",), f"{config.users_file}:{line}: {problem}")
                ok = False
            users.update(found)
        for user, h in (config.users or {}).items():
            problem = hash_problem(h)
            if problem:
                ctx.error(("users", user), f"user {user!r}: {problem}")
                ok = False
            users[user] = h
        if ok and not users:
            ctx.error(("users_file",) if config.users_file is not None else ("users",), "no users: nobody could log in")
            ok = False
        return users if ok else None

    def __init__(self, config: Any, rule: RuleInfo, prepared: dict[str, str], runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self._users = {u: h.encode() for u, h in prepared.items()}
        self._challenge = [(b"WWW-Authenticate", f'Basic realm="{config.realm}", charset="UTF-8"'.encode()),
                           (b"Content-Type", b"text/plain; charset=utf-8")]
        self._drop = {b"authorization"} if not config.forward_credentials else set()
        self._user_header = config.user_header.encode("latin-1") if config.user_header else None
        if self._user_header is not None:
            self._drop.add(self._user_header.lower())
        self._secret = os.urandom(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        # Checked when the user is unknown, so that takes as long as a wrong password (same cost).
        self._dummy: bytes | None = None
        self._cost = next(iter(self._users.values()))[4:6] if self._users else b"10"
        self.request = self._check

    def would(self, ex: Exchange, phase: str) -> str | None:
        """Shadow mode: whether the request would be challenged. bcrypt is not run for it (a
        shadow rule does no work on the request's behalf): credentials not yet verified by the
        enforcing rule count as would-be 401s, saying so."""
        value = ex.request_header(b"authorization")
        if value is None or value[:6].lower() != b"basic ":
            return "answer 401 (no Basic credentials)"
        if hmac.new(self._secret, value, hashlib.sha256).digest() in self._verified:
            return None
        try:
            user = base64.b64decode(value[6:].strip(), validate=True).partition(b":")[0].decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return "answer 401 (malformed credentials)"
        if user not in self._users:
            return f"answer 401 (unknown user {user!r})"
        return f"answer 401 unless {user!r}'s password is right (not checked in shadow mode)"

    def _deny(self) -> Reply:
        self.runtime.count("auth_denied", self.rule.name)
        return Reply(401, list(self._challenge), b"401 Unauthorized\n")

    def _check(self, ex: Exchange) -> Any:
        value = ex.request_header(b"authorization")
        if value is None or value[:6].lower() != b"basic ":
            return self._deny()
        key = hmac.new(self._secret, value, hashlib.sha256).digest()
        user = self._verified.get(key)
        if user is not None:
            self._verified.move_to_end(key)
            return self._allow(ex, user)
        try:
            user_b, sep, password = base64.b64decode(value[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return self._deny()
        if not sep:
            return self._deny()
        return self._verify(ex, key, user_b.decode("utf-8", "replace"), password)

    async def _verify(self, ex: Exchange, key: bytes, user: str, password: bytes) -> Reply | None:
        import bcrypt
        hashed = self._users.get(user)
        loop = asyncio.get_running_loop()
        if hashed is None and self._dummy is None:
            self._dummy = await loop.run_in_executor(_pool(), bcrypt.hashpw, b"-",
                                                     bcrypt.gensalt(int(self._cost)))
        ok = await loop.run_in_executor(_pool(), bcrypt.checkpw, password,
                                        hashed if hashed is not None else self._dummy)
        if not ok or hashed is None:
            return self._deny()
        self._verified[key] = user
        if len(self._verified) > CACHE_MAX:
            self._verified.popitem(last=False)
        return self._allow(ex, user)

    def _allow(self, ex: Exchange, user: str) -> None:
        self.runtime.count("auth_allowed", self.rule.name)
        drop = self._drop
        if drop:
            ex.request_headers = [f for f in ex.request_headers if f[0].lower() not in drop]
        if self._user_header is not None:
            ex.request_headers.append((self._user_header, user.encode("utf-8")))
        return None
