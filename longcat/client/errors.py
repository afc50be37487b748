"""gRPC status -> typed client errors (the same classes the engine raises, so callers catch one family)."""

from __future__ import annotations

import grpc

from longcat import errors

_BY_CODE = {
    "INVALID_ARGUMENT": errors.InvalidArgument,
    "NOT_FOUND": errors.NotFound,
    "CANCELLED": errors.Cancelled,
    "UNAVAILABLE": errors.Unavailable,
    "RESOURCE_EXHAUSTED": errors.ResourceExhausted,
    "UNAUTHENTICATED": errors.Unauthenticated,
    "DEADLINE_EXCEEDED": errors.DeadlineExceeded,
    "ALREADY_EXISTS": errors.AlreadyExists,
    "PERMISSION_DENIED": errors.PermissionDenied,
}


def from_rpc_error(err: grpc.RpcError) -> errors.LongCatError:
    code = err.code().name if err.code() else "UNKNOWN"
    details = err.details() or code
    field, sep, message = details.partition(": ")
    if not sep or " " in field or not field:
        field, message = None, details
    cls = _BY_CODE.get(code, errors.LongCatError)
    exc = cls(message, field)
    if cls is errors.LongCatError:
        exc.code = code
    trailers = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else {}
    if "retry-after-ms" in trailers:
        exc.retry_after_s = int(trailers["retry-after-ms"]) / 1000
    return exc
