"""Optional OpenTelemetry tracing (``app.tracing``, off by default).

Three spans follow an event: ``collector.ingest`` (HTTP ingest; it continues a
``traceparent`` the client sent), ``collector.process`` (the worker's validation,
enrichment and aggregation of one traced Kafka record, a child of the span whose W3C
``traceparent`` header the record carries) and ``collector.sink.write`` (one sink batch
write).  A row aggregates many events, so a write is not any one event's child: it
*links* the process spans of the traced records handled since the sink's previous write
(at most :data:`MAX_LINKS`).

Records without a ``traceparent`` (most producers') get no span, and with tracing off
every function here returns after one check, so the hot path pays nothing.  Spans go
to an OTLP/HTTP endpoint (``app.tracing_endpoint``) through a batching processor.
"""

from __future__ import annotations

import atexit
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanContext, Tracer

    from collector.config import Settings

#: W3C trace context headers, as Kafka header keys
TRACE_HEADERS: Final = ("traceparent", "tracestate")
#: links a sink write span carries at most
MAX_LINKS: Final = 32

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
#: span contexts of recent process spans, with a running sequence number
_recent: deque[tuple[int, SpanContext]] = deque(maxlen=4 * MAX_LINKS)
_sequence = 0
#: sink name -> sequence number of the last context its write linked
_linked: dict[str, int] = {}


def enabled() -> bool:
    return _tracer is not None


def setup(settings: Settings, exporter: SpanExporter | None = None) -> bool:
    """Start tracing when ``app.tracing`` is on; True if it is.

    ``exporter`` replaces the OTLP exporter (tests pass the SDK's in-memory one; spans
    are then exported as each ends).
    """
    global _tracer, _provider
    app = settings.app
    if not app.tracing:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    shutdown()
    resource = Resource.create({"service.name": app.tracing_service_name,
                                "service.namespace": "collector",
                                "collector.app_id": app.id})
    provider = TracerProvider(resource=resource,
                              sampler=ParentBased(TraceIdRatioBased(app.tracing_sample_ratio)))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = _parse_headers(app.tracing_headers.get_secret_value())
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=app.tracing_endpoint, headers=headers)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider, _tracer = provider, provider.get_tracer("collector")
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Flush and stop (at exit, and before a new :func:`setup`)."""
    global _tracer, _provider, _sequence
    provider, _provider, _tracer = _provider, None, None
    _recent.clear()
    _linked.clear()
    _sequence = 0
    if provider is not None:
        provider.shutdown()


def _parse_headers(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` (OTEL_EXPORTER_OTLP_HEADERS' format)."""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {key.strip(): value.strip() for key, value in pairs}


def _carrier(headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    out: dict[str, str] = {}
    for key, value in items:
        name = str(key).lower()
        if name in TRACE_HEADERS:
            out[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return out


def extract(headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> Any:
    """The context a ``traceparent`` in ``headers`` names, or None (none, or invalid)."""
    if _tracer is None:
        return None
    carrier = _carrier(headers)
    if "traceparent" not in carrier:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def inject(headers: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]] | None:
    """``headers`` plus the current span's ``traceparent`` (unchanged when not tracing)."""
    if _tracer is None:
        return headers
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return [*(headers or []), *((k, v.encode("latin-1")) for k, v in carrier.items())]


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, parent: Any = None,
         kind: str = "INTERNAL", links: list[Any] | None = None) -> Iterator[Span | None]:
    """A current span (None when not tracing); an exception marks it as an error."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind[kind],
                                       attributes=dict(attributes or {}),
                                       links=links) as current:
        yield current


@contextmanager
def process_spans(records: Iterable[Any]) -> Iterator[list[Span]]:
    """A ``collector.process`` span for each record with a ``traceparent`` header.

    ``records`` have ``topic``, ``partition``, ``offset`` and, when they came from
    Kafka, ``headers``.  The spans end when the batch is done (sent and acked).
    """
    if _tracer is None:
        yield []
        return
    global _sequence
    from opentelemetry.trace import SpanKind, Status, StatusCode

    spans: list[Span] = []
    for record in records:
        parent = extract(getattr(record, "headers", None))
        if parent is None:
            continue
        spans.append(_tracer.start_span(
            "collector.process", context=parent, kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "kafka",
                        "messaging.destination.name": record.topic,
                        "messaging.kafka.destination.partition": record.partition,
                        "messaging.kafka.message.offset": record.offset}))
    try:
        yield spans
    except BaseException as exc:
        for one in spans:
            one.record_exception(exc)
            one.set_status(Status(StatusCode.ERROR, repr(exc)[:200]))
        raise
    finally:
        for one in spans:
            one.end()
            _sequence += 1
            _recent.append((_sequence, one.get_span_context()))


def links_for(sink: str) -> list[Any] | None:
    """Links to the process spans since ``sink``'s previous write (None when none)."""
    if _tracer is None or not _recent:
        return None
    from opentelemetry.trace import Link

    last = _linked.get(sink, 0)
    fresh = [context for seq, context in _recent if seq > last][-MAX_LINKS:]
    _linked[sink] = _recent[-1][0]
    return [Link(context) for context in fresh] or None


__all__ = ["MAX_LINKS", "TRACE_HEADERS", "enabled", "extract", "inject", "links_for",
           "process_spans", "setup", "shutdown", "span"]
