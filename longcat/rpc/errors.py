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
