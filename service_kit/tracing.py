"""OpenTelemetry tracing across the services, off unless configured.

With `OTEL_EXPORTER_OTLP_ENDPOINT` set (the standard variable, e.g. http://otel-collector:4317), a
service exports its spans over OTLP/gRPC: the gRPC server and client calls (instrumented, so the trace
context travels in metadata from the gateway to the router, the classifier and the ledger), the
router's provider calls, and the request id on each as `llmroute.request_id`. Unset, nothing is
recorded and the tracer is OpenTelemetry's no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

REQUEST_ID = "llmroute.request_id"
_instrumented = False


def configure(service: str, processor: SpanProcessor | None = None) -> bool:
    """Trace this process as `service` when OTLP is configured (or with `processor`: tests pass an
    in-memory one). Instruments gRPC servers and channels created from now on. True if tracing."""
    global _instrumented
    if processor is None:
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return False
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global provider can be set once per process
        provider = TracerProvider(resource=Resource.create({"service.name": f"llmroute-{service}"}))
        trace.set_tracer_provider(provider)
    provider.add_span_processor(processor)
    if not _instrumented:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer

        # The instrumentors' constructors carry no annotations (opentelemetry-instrumentation-grpc).
        GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
        GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
        _instrumented = True
    return True


def tag_request(request_id: str) -> None:
    """Put the request id on the current span (the RPC's server span)."""
    if request_id:
        trace.get_current_span().set_attribute(REQUEST_ID, request_id)


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A span of this service's own work (a provider call), a child of the current one."""
    with trace.get_tracer("llmroute").start_as_current_span(name, attributes=attributes) as current:
        yield current
