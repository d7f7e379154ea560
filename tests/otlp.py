"""An OTLP/HTTP trace receiver for tests: aiohttp on a free port, protobuf decoded with
opentelemetry-proto, spans kept with the resource (role, index, pid) that sent them."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from server import free_port


@dataclass(frozen=True)
class Got:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    role: str
    attributes: dict[str, Any]
    error: bool
    duration_ms: float


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[Got] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        got = []
        for rs in req.resource_spans:
            res = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(Got(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                   str(res.get("service.name")), str(res.get("streamer.role", "")),
                                   {a.key: _value(a.value) for a in s.attributes}, s.status.code == 2,
                                   (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6))
        with self._lock:
            self.spans.extend(got)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> Receiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def of_trace(self, trace_id: str) -> list[Got]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, names: set[str] | dict[str, int], timeout: float = 20.0) -> list[Got]:
        """The trace's spans once it has each of `names` (or, for a dict, at least that many of
        each): spans come from several processes, each exporting in its own batches."""
        want = names if isinstance(names, dict) else dict.fromkeys(names, 1)

        def missing(spans: list[Got]) -> dict[str, int]:
            return {n: k for n, k in want.items() if sum(s.name == n for s in spans) < k}

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.of_trace(trace_id)
            if not missing(spans):
                return spans
            time.sleep(0.1)  # polling: the condition is the wait
        raise TimeoutError(f"spans {missing(self.of_trace(trace_id))} never arrived")
