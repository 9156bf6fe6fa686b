"""HTTP/1.1 framing rules on top of httptools (llhttp): what a head may contain, how bodies are framed.

Owns status lines, hop-by-hop handling (RFC 9110 §7.6.1), the request-framing checks llhttp leaves to us
(RFC 9112 §6: only `chunked` is understood, Transfer-Encoding needs HTTP/1.1, Host rules) and head
serialisation. Sans-IO: no sockets, no asyncio. Must not import rules, actions or telemetry.
"""

from __future__ import annotations

from http import HTTPStatus

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
REASONS.setdefault(421, b"Misdirected Request")


def status_line(status: int, reason: bytes | None = None) -> bytes:
    line = _STATUS_LINES.get(status) if reason is None else None
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason if reason is not None else REASONS.get(status, b""))
    return line


_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in REASONS.items()}

# Headers that describe one connection, never forwarded (RFC 9110 §7.6.1). Plus whatever the
# Connection header names. Proxy-Connection is not standard but old clients still send it.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade",
})
# Framing headers a Reply must not set: the tunnel frames replies itself.
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})

_OWS = b" \t"


_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
_NO_TOKENS: frozenset[bytes] = frozenset()


class FramingError(Exception):
    """A request the tunnel refuses to forward; `status` is what the client gets (400, 405, 431, 505...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_COMMON_TOKENS = {b"keep-alive": frozenset({b"keep-alive"}), b"close": frozenset({b"close"}),
                  b"upgrade": frozenset({b"upgrade"})}
# ...and as they are usually spelled, found without lower-casing first.
_COMMON_TOKENS.update({b"Keep-Alive": _COMMON_TOKENS[b"keep-alive"], b"Close": _COMMON_TOKENS[b"close"],
                       b"Upgrade": _COMMON_TOKENS[b"upgrade"]})


def connection_tokens(value: bytes) -> frozenset[bytes]:
    common = _COMMON_TOKENS.get(value)  # as usually spelled: no lower() needed
    if common is not None:
        return common
    low = value.lower()
    common = _COMMON_TOKENS.get(low)  # nearly every Connection header is one of these
    if common is not None:
        return common
    return _split_tokens(low)


def _split_tokens(low: bytes) -> frozenset[bytes]:
    return frozenset(t.strip(_OWS) for t in low.split(b",") if t.strip(_OWS))


class RequestFraming:
    """What the head of one request says about its body and its connection, after our checks.

    `headers` is the list to forward: hop-by-hop headers removed (except `Upgrade` on an upgrade
    request), values stripped of trailing whitespace.
    """

    __slots__ = (
        "chunked",
        "content_length",
        "has_body",
        "has_xff",
        "has_xfp",
        "headers",
        "host",
        "keep_alive",
        "request_id",
        "upgrade",
    )

    def __init__(self) -> None:
        self.chunked = False
        self.content_length = -1        # -1: no Content-Length
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.request_id: bytes | None = None   # X-Request-Id as received (kept when present)
        self.has_xff = False
        self.has_xfp = False
        self.has_body = False           # chunked or Content-Length > 0 (set by check_request)


# What check_request does with a field, by lower-case name (absent: forwarded as is).
_HOP, _CONNECTION, _TRANSFER_ENCODING, _UPGRADE = "hop", "connection", "transfer-encoding", "upgrade"
_CONTENT_LENGTH, _HOST, _REQUEST_ID, _XFF, _XFP = "content-length", "host", "x-request-id", "xff", "xfp"
_REQUEST_SPECIAL = {name: _HOP for name in HOP_BY_HOP}
_REQUEST_SPECIAL.update({
    b"connection": _CONNECTION, b"transfer-encoding": _TRANSFER_ENCODING, b"upgrade": _UPGRADE,
    b"content-length": _CONTENT_LENGTH, b"host": _HOST, b"x-request-id": _REQUEST_ID,
    b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XFP,
})


def check_request(method: bytes, version: str, raw_headers: list[tuple[bytes, bytes]]) -> RequestFraming:
    """Validate one request head and split its headers into forwardable and connection-level.

    llhttp already rejects CL+TE, duplicate or malformed Content-Length, obs-fold, whitespace
    before the colon, bare CR/LF and bad chunk sizes; this adds what it accepts but we must not.
    """
    if version != "1.1" and version != "1.0":
        if version.startswith(("2", "3")):
            raise FramingError(505, f"HTTP/{version} is not supported on this port; use HTTP/1.1")
        raise FramingError(400, f"unsupported HTTP version {version!r}")
    if method == b"CONNECT":
        raise FramingError(405, "CONNECT is not supported by this reverse proxy")
    f = RequestFraming()
    http11 = version == "1.1"
    conn_tokens: frozenset[bytes] = _NO_TOKENS
    te_seen = 0
    out = f.headers
    for field in raw_headers:
        name, value = field
        if value and value[-1] in (32, 9):  # llhttp keeps trailing OWS; the field value excludes it
            value = value.rstrip(_OWS)
            field = (name, value)
        kind = _REQUEST_SPECIAL.get(name.lower())  # one lookup; most fields are none of these
        if kind is None:
            out.append(field)
            continue
        if kind is _HOP:
            continue  # te and the like: ours to negotiate with the app, not the client's
        if kind is _CONNECTION:
            tokens = connection_tokens(value)
            conn_tokens = conn_tokens | tokens if conn_tokens else tokens  # one field: no new set
            continue
        if kind is _TRANSFER_ENCODING:
            te_seen += 1
            if value.lower() != b"chunked":
                raise FramingError(400, "only 'Transfer-Encoding: chunked' is accepted")
            f.chunked = True
            continue
        if kind is _UPGRADE:
            f.upgrade = value
            continue
        if kind is _CONTENT_LENGTH:
            f.content_length = int(value)  # llhttp has checked the digits and duplicates
        elif kind is _HOST:
            if f.host is not None:
                raise FramingError(400, "more than one Host header")
            f.host = value
        elif kind is _REQUEST_ID:
            f.request_id = value
        elif kind is _XFF:
            f.has_xff = True
        else:
            f.has_xfp = True
        out.append(field)
    if te_seen > 1:
        raise FramingError(400, "more than one Transfer-Encoding header")
    if f.chunked and not http11:
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing cannot be trusted.
        raise FramingError(400, "Transfer-Encoding is not allowed in HTTP/1.0")
    if http11 and f.host is None:
        raise FramingError(400, "HTTP/1.1 requests need a Host header")
    if conn_tokens:
        if b"close" in conn_tokens:
            f.keep_alive = False
        elif not http11 and b"keep-alive" in conn_tokens:
            f.keep_alive = True
        # Headers named in Connection are hop-by-hop too.
        # Usually the tokens are all options (keep-alive, close): no set difference to build.
        named = None if conn_tokens <= _CONNECTION_OPTIONS else conn_tokens - _CONNECTION_OPTIONS
        if named:
            f.headers = out = [(n, v) for n, v in out if n.lower() not in named]
        if f.upgrade is not None and b"upgrade" not in conn_tokens:
            f.upgrade = None  # Upgrade without Connection: upgrade is not an upgrade request
    else:
        f.upgrade = None
        if not http11:
            f.keep_alive = False
    f.has_body = f.chunked or f.content_length > 0
    if f.upgrade is not None and f.has_body:
        raise FramingError(400, "an Upgrade request must not carry a body")
    return f


class ResponseFraming:
    """What the app's response head says: body framing and the headers to pass to the client."""

    __slots__ = ("chunked", "content_length", "headers", "keep_alive")

    def __init__(self) -> None:
        self.chunked = False
        self.content_length = -1
        self.keep_alive = True
        self.headers: list[tuple[bytes, bytes]] = []


def check_response(keep_alive: bool, status: int, headers: list[tuple[bytes, bytes]],
                   hop: list[tuple[bytes, bytes]], content_length: int) -> ResponseFraming:
    """Framing of the app's response from its hop-by-hop fields (split off while parsing).

    `keep_alive` is the parser's verdict (version, Connection: close, close-framed body);
    `headers` are the fields to pass on (already without hop-by-hop ones), `hop` the
    (lower-cased name, value) pairs of Connection, Transfer-Encoding, Upgrade, Keep-Alive...
    """
    f = ResponseFraming()
    f.headers = headers
    f.content_length = content_length
    f.keep_alive = keep_alive
    if not hop:
        return f
    conn_tokens: frozenset[bytes] = _NO_TOKENS
    upgrade_value = None
    for low, value in hop:
        if low == b"connection":
            tokens = connection_tokens(value)
            conn_tokens = conn_tokens | tokens if conn_tokens else tokens  # one field: no new set
        elif low == b"transfer-encoding":
            if f.chunked or value.lower() != b"chunked":
                # More than one field is chunked applied twice (RFC 9112 §6.1), or another coding.
                # We re-frame the body; a coding we do not decode cannot be passed on safely.
                raise FramingError(502, "the app used a transfer-coding other than one chunked")
            f.chunked = True
        elif low == b"upgrade":
            upgrade_value = value
    if conn_tokens:
        if b"close" in conn_tokens:
            f.keep_alive = False
        # Usually the tokens are all options (keep-alive, close): no set difference to build.
        named = None if conn_tokens <= _CONNECTION_OPTIONS else conn_tokens - _CONNECTION_OPTIONS
        if named:
            f.headers = [(n, v) for n, v in headers if n.lower() not in named]
    if status == 101 and upgrade_value is not None:
        f.headers.append((b"Upgrade", upgrade_value))
    return f


def add_headers(parts: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
    """Append the fields' wire form to `parts`, which the caller joins once with the rest of its head
    (one copy of every byte, no string per field)."""
    for name, value in headers:
        parts.append(name)  # four appends: inline C in the compiled build, cheaper than one +=
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
