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


def gone_code(context) -> grpc.StatusCode:
    """Why a call that lost its client ended: its deadline passed, or it was cancelled."""
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else \
        grpc.StatusCode.CANCELLED


def record_outcome(service: str, method: str, start: float, code: grpc.StatusCode | None,
                   exc: BaseException | None, traceback: bool = True) -> None:
    """Metrics and the call's closing log line (both doors): ``code`` None = it succeeded."""
    metrics.LATENCY.labels(service, method).observe(time.perf_counter() - start)
    metrics.IN_FLIGHT.labels(service).dec()
    if code is None:
        log.info("rpc ok", extra={"service": service, "method": method,
                                  "duration_s": round(time.perf_counter() - start, 4)})
        return
    metrics.ERRORS.labels(service, method, code.name).inc()
    level = logging.ERROR if code == grpc.StatusCode.INTERNAL else logging.INFO
    log.log(level, "rpc failed", exc_info=traceback and code == grpc.StatusCode.INTERNAL,
            extra={"service": service, "method": method, "code": code.name, "error": str(exc)})


def _code(context, exc: BaseException | None) -> grpc.StatusCode | None:
    if exc is None:
        return None
    if isinstance(exc, Cancelled) and not context.is_active():
        return gone_code(context)  # the client went away or its deadline passed: nothing to send, but say why
    return status_for(exc)


def abort_details(context, exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message an error answers (its trailers, e.g. a retry hint, set on ``context``)."""
    trailers = getattr(exc, "trailers", None)
    if trailers:  # e.g. a retry hint with RESOURCE_EXHAUSTED
        context.set_trailing_metadata(tuple((k, str(v)) for k, v in trailers.items()))
    message = cap_message(str(exc)) if isinstance(exc, LongCatError) else f"internal error: {type(exc).__name__}"
    return status_for(exc), message


def _abort(context, exc: BaseException):
    context.abort(*abort_details(context, exc))


class Call:
    """One call's bookkeeping, the same for both doors: its request id, log scope and span, metrics, and the
    closing log line."""

    def __init__(self, service: str, method: str, context):
        self.service, self.method = service, method
        self.token = request_id.set(_request_id(context))
        self.scope = RpcScope(service, method, context.invocation_metadata())  # job/tenant log fields, span
        metrics.REQUESTS.labels(service, method).inc()
        metrics.IN_FLIGHT.labels(service).inc()
        self.start = time.perf_counter()

    def end(self, failure: BaseException | None, code: grpc.StatusCode | None, traceback: bool = True) -> None:
        """``code``: what the call ended with (None: it succeeded), worked out once by its door."""
        record_outcome(self.service, self.method, self.start, code, failure, traceback)
        self.scope.close(failure, code.name if code is not None else "")
        request_id.reset(self.token)


def rpc_method(service: str):
    """Decorate a servicer method (unary or server-streaming generator) of ``service``."""

    def wrap(fn):
        method = fn.__name__

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(self, req, context):
                call, failure = Call(service, method, context), None
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
                    call.end(failure, _code(context, failure))
            return stream

        @functools.wraps(fn)
        def unary(self, req, context):
            call, failure = Call(service, method, context), None
            try:
                return fn(self, req, context)
            except Exception as exc:  # noqa: BLE001
                failure = exc
                _abort(context, exc)
            finally:
                call.end(failure, _code(context, failure))
        return unary

    return wrap
