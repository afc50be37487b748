"""OpenTelemetry tracing glue: one trace per job, gateway -> queue -> worker -> encoder (and -> trainer).

Off unless an OTLP endpoint is configured (``--otlp-endpoint`` or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): then spans go out over OTLP/HTTP (protobuf) in batches. Off, every
function here returns at once (no SDK imported, no context made): zero cost.

How the context travels:
- gRPC calls: the W3C ``traceparent`` (and ``tracestate``) metadata; every RPC handler (longcat.rpc.handler)
  opens a server span, child of the caller's context when it sent one.
- The job queue: the submitting RPC's ``traceparent`` is stored in the job's hash (field ``traceparent``); the
  denoiser worker / trainer that runs the job opens the job's span as its child.
- The job id and tenant travel in gRPC metadata too (``x-job-id`` / ``x-tenant``), for the log lines of the
  service called (longcat.logs).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from longcat.logs import bind_job, job_id, log_scope, tenant

log = logging.getLogger("longcat.tracing")
JOB_ID_KEY, TENANT_KEY = "x-job-id", "x-tenant"
TRACEPARENT = "traceparent"
_tracer = None  # set by setup_tracing when exporting; None = off


def endpoint_from_env() -> str:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


def setup_tracing(service: str, endpoint: str = "") -> bool:
    """Export this process's spans to ``endpoint`` (an OTLP/HTTP base URL such as ``http://collector:4318``),
    else to the standard OTEL_* variables' endpoint; neither: tracing stays off. Returns whether it is on."""
    global _tracer
    endpoint = endpoint or endpoint_from_env()
    if not endpoint:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    base = endpoint.rstrip("/")
    traces_url = base if base.endswith("/v1/traces") else base + "/v1/traces"
    # OTEL_SERVICE_NAME (standard) wins over our name; OTEL_RESOURCE_ATTRIBUTES are merged by the SDK.
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                                        or service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("longcat")
    log.info("tracing on", extra={"otlp_endpoint": traces_url, "service_name": service})
    return True


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Flush spans still batched (a service stopping)."""
    if _tracer is not None:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


def _context_from(carrier: dict):
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier) if carrier.get(TRACEPARENT) else None


@contextmanager
def span(name: str, parent: dict | str | None = None, kind: str = "internal", attributes: dict | None = None):
    """A span around the block, current within it. ``parent``: a carrier (``{"traceparent": ...}``) or a
    traceparent string; None = the current span's child. Yields the span (None when tracing is off)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    carrier = {TRACEPARENT: parent} if isinstance(parent, str) else (parent or {})
    with _tracer.start_as_current_span(name, context=_context_from(carrier), kind=getattr(SpanKind, kind.upper()),
                                       attributes={k: v for k, v in (attributes or {}).items() if v}) as s:
        yield s


def start_span(name: str, parent: str = "", attributes: dict | None = None):
    """A span that outlives a block (a job in the step scheduler over many loop turns): end it with
    :func:`end_span`; make it current with :func:`use_span`. None when tracing is off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, context=_context_from({TRACEPARENT: parent}),
                              attributes={k: v for k, v in (attributes or {}).items() if v})


@contextmanager
def use_span(s):
    if s is None:
        yield
        return
    from opentelemetry import trace

    with trace.use_span(s, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


def set_error(s, error: BaseException) -> None:
    if s is not None:
        from opentelemetry.trace import Status, StatusCode

        s.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))


def end_span(s, error: BaseException | None = None, code: str = "") -> None:
    if s is None:
        return
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        s.set_status(Status(StatusCode.ERROR, code or f"{type(error).__name__}: {error}"[:300]))
    s.end()


def current_traceparent() -> str:
    """The current span's W3C traceparent ('' when tracing is off or no span is current): stored with a job."""
    if _tracer is None:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(TRACEPARENT, "")


def job_fields() -> dict[str, str]:
    """Fields stored with a job at submission so that whoever runs it continues this trace ({} when off)."""
    parent = current_traceparent()
    return {TRACEPARENT: parent} if parent else {}


def outgoing_metadata(metadata=None) -> list[tuple[str, str]]:
    """gRPC metadata for a call made on behalf of a job: the caller's, plus the job id and tenant of this
    thread (longcat.logs) and, when tracing, the current trace context."""
    out = list(metadata or ())
    have = {k for k, _ in out}
    for key, value in ((JOB_ID_KEY, job_id.get()), (TENANT_KEY, tenant.get()), (TRACEPARENT, current_traceparent())):
        if value and key not in have:
            out.append((key, value))
    return out


def incoming(metadata) -> dict[str, str]:
    """The trace and job keys of a call's metadata (what :func:`outgoing_metadata` put there)."""
    return {k: str(v)[:256] for k, v in metadata or () if k in (TRACEPARENT, "tracestate", JOB_ID_KEY, TENANT_KEY)}


# Services called only by our own services: their callers' x-job-id / x-tenant are trusted for log lines. The
# public doors (gateway) set job and tenant themselves, from the caller's key and the job it names.
INTERNAL_SERVICES = frozenset({"longcat.v1.Encoder", "longcat.v1.Denoiser", "longcat.v1.Trainer"})


class RpcScope:
    """One RPC on the server side: its log scope (job id and tenant, see longcat.logs) and its server span,
    child of the caller's trace context. ``close`` once, with the call's error if it failed."""

    def __init__(self, service: str, method: str, metadata):
        meta = incoming(metadata)
        self._logs = log_scope()
        self._logs.__enter__()
        if service in INTERNAL_SERVICES and (meta.get(JOB_ID_KEY) or meta.get(TENANT_KEY)):
            bind_job(meta.get(JOB_ID_KEY) or None, meta.get(TENANT_KEY) or None)
        self._span = self._use = None
        if _tracer is not None:
            from opentelemetry.trace import SpanKind

            self._span = _tracer.start_span(f"{service}/{method}", context=_context_from(meta), kind=SpanKind.SERVER,
                                            attributes={"rpc.system": "grpc", "rpc.service": service,
                                                        "rpc.method": method})
            self._use = use_span(self._span)
            self._use.__enter__()

    def close(self, error: BaseException | None = None, code: str = "") -> None:
        try:
            if self._span is not None:
                # known by now: a submission's new job id, the caller's tenant (the door resolved its key)
                for key, value in (("longcat.job_id", job_id.get()), ("longcat.tenant", tenant.get())):
                    if value:
                        self._span.set_attribute(key, value)
                if error is not None:
                    self._span.set_attribute("rpc.grpc.status_code", code)
                self._use.__exit__(None, None, None)
                end_span(self._span, error, code)
        finally:
            self._logs.__exit__(None, None, None)
