"""Tracing in every process: its own provider, set up after it starts, never blocking work.

OpenTelemetry's batch processor keeps a thread and a queue, neither of which survive a
fork, so each process (spawned, not forked) builds its provider here, with a resource
naming its role, index and pid. Spans are exported over OTLP/HTTP only when the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set; otherwise nothing is
recorded at all. The batch processor drops spans when its queue is full rather than wait,
so a slow or absent collector never slows the pipeline.

Trace context crosses processes as a W3C `traceparent` string inside the ZeroMQ messages
(`Open.trace`, `Work.trace`): `context_of` turns one into a parent, `traceparent_of`
turns a span into one.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICE = "streamer"
_propagator = TraceContextTextMapPropagator()
_provider_ready = False


def exporting(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(role: str, index: int | None = None, service: str = SERVICE) -> None:
    """Install this process's tracer provider (once). Without an endpoint, tracing is a no-op."""
    global _provider_ready
    if _provider_ready or not exporting():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attrs: dict[str, str | int] = {"service.name": service, "streamer.role": role, "process.pid": os.getpid()}
    if index is not None:
        attrs["streamer.index"] = index
    provider = TracerProvider(resource=Resource.create(attrs))
    # Short export timeout and a bounded queue: a stuck collector costs dropped spans, not latency.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=2), max_queue_size=4096,
                                                   schedule_delay_millis=500, export_timeout_millis=2000))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # flush what is queued on a clean exit
    _provider_ready = True


def tracer(name: str) -> Tracer:
    return trace.get_tracer(name)


def context_of(traceparent: str | None) -> Context | None:
    """The parent context a `traceparent` string names (None: start a new trace)."""
    if not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def traceparent_of(span: Span) -> str | None:
    """The W3C `traceparent` of `span`, to carry in a message; None for a non-recording span."""
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent")


def finish(span: Span, error: str | None = None) -> None:
    """End a stage's span, marked failed with `error` when there is one."""
    if error is not None:
        span.set_status(StatusCode.ERROR, error)
    span.end()
