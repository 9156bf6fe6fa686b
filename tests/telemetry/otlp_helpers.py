"""A real OTLP/HTTP receiver (decoding with the opentelemetry-proto package) and an app that echoes the
trace headers it was sent, both on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import gzip
import json
from dataclasses import dataclass, field

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def attrs(kvs) -> dict:
    """KeyValue list -> {key: python value}."""
    out = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = getattr(v, kind) if kind else None
    return out


@dataclass
class OtlpReceiver:
    """Records every OTLP/HTTP export. `status`/`headers` shape the answer; `black_hole` accepts
    connections and requests and never answers."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    black_hole: bool = False
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    requests: list[tuple[str, dict]] = field(default_factory=list)   # (path, headers) of every post
    port: int = 0
    _server: asyncio.base_events.Server | None = None
    _writers: set = field(default_factory=set)

    async def start(self) -> OtlpReceiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[tuple[dict, object]]:
        """(resource attributes, span) of every span received."""
        return [(attrs(rs.resource.attributes), span) for req in self.traces for rs in req.resource_spans
                for ss in rs.scope_spans for span in ss.spans]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.black_hole:
                    continue  # read it, never answer
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                self.requests.append((path, headers))
                if self.status == 200:
                    if path == "/v1/traces":
                        self.traces.append(ExportTraceServiceRequest.FromString(body))
                    elif path == "/v1/metrics":
                        self.metrics.append(ExportMetricsServiceRequest.FromString(body))
                extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
                writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Type: application/x-protobuf\r\n{extra}"
                             f"Content-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


class EchoApp:
    """The app: answers every request 200 with JSON of the trace headers it got (None when absent)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set = set()

    async def start(self) -> EchoApp:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                got: dict[str, list[str]] = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    k, _, v = line.partition(":")
                    got.setdefault(k.strip().lower(), []).append(v.strip())
                if "content-length" in got:
                    await reader.readexactly(int(got["content-length"][0]))
                body = json.dumps({"traceparent": got.get("traceparent"),
                                   "tracestate": got.get("tracestate")}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
