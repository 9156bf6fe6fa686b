"""What the sidecar itself answers: heads of hooks' replies, and its own error pages.

Owns the Date header (formatted once a second), the error pages' wording (general terms only: the
app's address and OS error texts go to the log, never to clients) and reply heads. Sans-IO.
Must not import rules, actions or telemetry.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from decorator.proxy.http import REASONS, add_headers, status_line

# What a client is told, by status; the specific cause is logged with the request id.
MESSAGES: dict[int, str] = {
    400: "the request could not be parsed",
    408: "the request was not received in time",
    414: "the request target is too long",
    431: "the request header block is too large",
    500: "the sidecar could not build its response",
    502: "the app could not be reached or did not answer properly",
    503: "the sidecar is not accepting requests right now",
    504: "the app did not answer in time",
    505: "this HTTP version is not supported",
}

_date_second = -1
_date_line = b""


def date_line() -> bytes:
    """`Date: <IMF-fixdate>\\r\\n` for now (RFC 9110 §6.6.1), formatted at most once a second."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_line = b"Date: %s\r\n" % formatdate(now, usegmt=True).encode("ascii")
        _date_second = now
    return _date_line


def error_body(status: int, message: str) -> bytes:
    return b"%d %s\n%s\n" % (status, REASONS.get(status, b""), message.encode("utf-8", "replace"))


def reply_head(status: int, reason: bytes | None, headers: list[tuple[bytes, bytes]], length: int,
               close: bool, keep_alive_10: bool) -> bytes:
    """The head of a reply the sidecar frames itself: `length` < 0 means no body is allowed
    (1xx, 204, 304), `keep_alive_10` adds the Connection: keep-alive an HTTP/1.0 client needs."""
    parts = [status_line(status, reason), date_line()]
    add_headers(parts, headers)
    if length >= 0:
        parts.append(b"Content-Length: %d\r\n" % length)
    if close:
        parts.append(b"Connection: close\r\n")
    elif keep_alive_10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def simple_response(status: int, message: str | None = None, close: bool = True,
                    extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A complete small response the sidecar sends on its own (limits, refusals), whole."""
    body = error_body(status, message if message is not None else MESSAGES.get(status, ""))
    headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
    if extra:
        headers += extra
    return reply_head(status, None, headers, len(body), close, False) + body
