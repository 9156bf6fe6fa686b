"""`respond`: answer instead of the app, with an inline body or a file, status and headers.

Files are read at load (so a missing file is a load error and a reload re-reads them); small
ones are served from memory, big ones streamed by the tunnel. Imports proxy.hooks, rules.base.
"""

from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass
from typing import Any

from decorator.actions.registry import Action, LoadContext, RuleInfo, register, template_values
from decorator.proxy.hooks import Exchange, Reply
from decorator.rules.values import Template, escape_for, header_safe

# Files up to this size are kept in memory and sent as `body`; bigger ones are streamed.
SMALL_FILE = 64 * 1024


@dataclass(frozen=True)
class Prepared:
    body: Template | bytes | None   # Template for inline/template bodies, bytes for small files
    path: str | None                # real file streamed by the tunnel (big files)
    content_type: str


@register
class Respond(Action):
    name = "respond"
    Config = "decorator.actions.configs:RespondConfig"
    summary = "Answer instead of the app: inline body or file, status, headers."
    replies = True

    @classmethod
    def prepare(cls, config: Any, rule: RuleInfo, ctx: LoadContext) -> Prepared | None:
        if config.file is None:
            ctype = config.content_type or "text/plain; charset=utf-8"
            return Prepared(Template(config.body or ""), None, ctype)
        path = os.path.normpath(os.path.join(rule.base_dir, config.file))
        data = ctx.read_file(path, ("file",))
        if data is None:
            return None
        ctype = config.content_type or _guess_type(path)
        if config.template:
            try:
                return Prepared(Template(data.decode("utf-8")), None, ctype)
            except (UnicodeDecodeError, ValueError) as e:
                ctx.error(("file",), f"{config.file}: {e}")
                return None
        if len(data) > SMALL_FILE and ctx.is_real_file(path):
            return Prepared(None, path, ctype)
        return Prepared(data, None, ctype)

    def __init__(self, config: Any, rule: RuleInfo, prepared: Prepared, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        self._status = config.status
        # Values from the request ({path}, {request_id}) are escaped for the body's language.
        self._escape = escape_for(prepared.content_type)
        self._fixed = [(b"Content-Type", prepared.content_type.encode("latin-1"))]
        self._templated: list[tuple[bytes, Template]] = []
        for k, v in config.headers.items():
            t = Template(v)
            if t.static:
                self._fixed.append((k.encode("latin-1"), t.text.encode("latin-1")))
            else:
                self._templated.append((k.encode("latin-1"), t))
        body = prepared.body
        self._dynamic = isinstance(body, Template) and not body.static
        self._static_body = body.text.encode() if isinstance(body, Template) and body.static else body
        if rule.needs_response:
            self.response = self._respond_response
        else:
            self.request = self._respond_request

    def would(self, ex: Exchange, phase: str) -> str:
        what = f"file {self.config.file}" if self.config.file is not None else "an inline body"
        return f"answer {self._status or ex.status or 200} with {what}"

    def _respond_request(self, ex: Exchange) -> Reply:
        return self._reply(ex, self._status or 200)

    def _respond_response(self, ex: Exchange, reply: Reply | None) -> Reply:
        return self._reply(ex, self._status or ex.status or 200)

    def _reply(self, ex: Exchange, status: int) -> Reply:
        headers = list(self._fixed)
        if self._dynamic or self._templated:
            values = template_values(ex, self.rule.name, status)
            for k, t in self._templated:
                headers.append((k, header_safe(t.render(values)).encode("latin-1", "replace")))
            if self._dynamic:
                return Reply(status, headers, body=self.prepared.body.render(values, self._escape).encode())
        if self.prepared.path is not None:
            return Reply(status, headers, file=self.prepared.path)
        return Reply(status, headers, body=self._static_body or b"")


def _guess_type(path: str) -> str:
    ctype, _ = mimetypes.guess_type(path)
    if ctype is None:
        return "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/json", "application/javascript"):
        return ctype + "; charset=utf-8"
    return ctype
