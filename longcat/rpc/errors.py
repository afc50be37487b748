"""Our exceptions -> canonical gRPC status codes, with a message that names the field at fault."""

from __future__ import annotations

import grpc

from longcat.errors import LongCatError

STATUS = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, LongCatError):
        return STATUS.get(exc.code, grpc.StatusCode.INTERNAL)
    return grpc.StatusCode.INTERNAL


def error_from_rpc(err: grpc.RpcError) -> LongCatError:
    """A client-side RpcError back into our exception types (field recovered from 'field: message')."""
    from longcat import errors

    code = err.code().name if err.code() else "INTERNAL"
    details = err.details() or code
    field, _, message = details.partition(": ")
    if not message or " " in field:
        field, message = None, details
    cls = {
        "INVALID_ARGUMENT": errors.InvalidArgument,
        "NOT_FOUND": errors.NotFound,
        "CANCELLED": errors.Cancelled,
    }.get(code, errors.LongCatError)
    exc = cls(message, field)
    if cls is errors.LongCatError:
        exc.code = code
    return exc
