"""One wrapper for every RPC method: request id, structured log line, metrics, error -> status code.

Servicer methods raise our exceptions (``InvalidArgument`` etc.); this turns them into canonical status
codes with the field named, counts them, and keeps the server serving.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import uuid

import grpc

from longcat.api.bounds import cap_message
from longcat.errors import Cancelled, LongCatError
from longcat.logs import request_id
from longcat.rpc import metrics
from longcat.rpc.errors import status_for
from longcat.tracing import RpcScope

log = logging.getLogger("longcat.rpc")
REQUEST_ID_KEY = "x-request-id"


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:128]
    return uuid.uuid4().hex[:16]


def _finish(service: str, method: str, start: float, context, exc: BaseException | None) -> None:
    metrics.LATENCY.labels(service, method).observe(time.perf_counter() - start)
    metrics.IN_FLIGHT.labels(service).dec()
    if exc is None:
        log.info("rpc ok", extra={"service": service, "method": method,
                                  "duration_s": round(time.perf_counter() - start, 4)})
        return
    code = status_for(exc)
    if isinstance(exc, Cancelled) and not context.is_active():
        # The client went away or its deadline passed: nothing to send, but record why.
        code = grpc.StatusCode.DEADLINE_EXCEEDED if context.time_remaining() is not None and \
            context.time_remaining() <= 0 else grpc.StatusCode.CANCELLED
    metrics.ERRORS.labels(service, method, code.name).inc()
    level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.INFO
    log.log(level, "rpc failed", exc_info=code == grpc.StatusCode.INTERNAL,
            extra={"service": service, "method": method, "code": code.name, "error": str(exc)})


def _abort(context, exc: BaseException):
    code = status_for(exc)
    trailers = getattr(exc, "trailers", None)
    if trailers:  # e.g. a retry hint with RESOURCE_EXHAUSTED
        context.set_trailing_metadata(tuple((k, str(v)) for k, v in trailers.items()))
    message = cap_message(str(exc)) if isinstance(exc, LongCatError) else f"internal error: {type(exc).__name__}"
    context.abort(code, message)


def rpc_method(service: str):
    """Decorate a servicer method (unary or server-streaming generator) of ``service``."""

    def wrap(fn):
        method = fn.__name__

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(self, req, context):
                token = request_id.set(_request_id(context))
                scope = RpcScope(service, method, context.invocation_metadata())  # job/tenant log fields, span
                metrics.REQUESTS.labels(service, method).inc()
                metrics.IN_FLIGHT.labels(service).inc()
                start, failure = time.perf_counter(), None
                try:
                    yield from fn(self, req, context)
                except GeneratorExit:
                    failure = Cancelled("client went away")
                    raise
                except Exception as exc:  # noqa: BLE001 - every error becomes a status code
                    failure = exc
                    if context.is_active():
                        _abort(context, exc)
                finally:
                    _finish(service, method, start, context, failure)
                    scope.close(failure, status_for(failure).name if failure else "")
                    request_id.reset(token)
            return stream

        @functools.wraps(fn)
        def unary(self, req, context):
            token = request_id.set(_request_id(context))
            scope = RpcScope(service, method, context.invocation_metadata())  # job/tenant log fields, span
            metrics.REQUESTS.labels(service, method).inc()
            metrics.IN_FLIGHT.labels(service).inc()
            start, failure = time.perf_counter(), None
            try:
                return fn(self, req, context)
            except Exception as exc:  # noqa: BLE001
                failure = exc
                _abort(context, exc)
            finally:
                _finish(service, method, start, context, failure)
                scope.close(failure, status_for(failure).name if failure else "")
                request_id.reset(token)
        return unary

    return wrap
