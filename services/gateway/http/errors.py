"""Errors on the HTTP door, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

A :class:`LongCatError` (raised by the core, the same one the gRPC door maps to status codes) becomes the HTTP
status below, with ``param`` naming the field at fault; a form or query value FastAPI cannot parse is a 400
naming its field, like the core's own validation."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from longcat.api.bounds import cap_message
from longcat.errors import LongCatError

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "CANCELLED": 409,            # the job was cancelled (by its owner, or by a shutdown) before it finished
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
}
ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
              404: "not_found_error", 409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
              503: "service_unavailable", 504: "timeout_error"}


class NotYet(LongCatError):
    """The job exists but is not there yet (no result while it runs): 409."""

    code = "FAILED_PRECONDITION"


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": cap_message(message), "type": ERROR_TYPE.get(status, "server_error"), "param": param,
                      "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def from_longcat(exc: LongCatError) -> JSONResponse:
    status = HTTP_STATUS.get(exc.code, 500)
    headers = {}
    if status == 429:
        retry_ms = (getattr(exc, "trailers", None) or {}).get("retry-after-ms", 1000)
        headers["Retry-After"] = str(max(1, -(-int(retry_ms) // 1000)))  # whole seconds, rounded up
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(status, str(exc), exc.field, exc.code.lower(), headers)


def _field_of(loc) -> str | None:
    # ("body", "n") / ("query", "limit") / ("path", "job_id") -> the field's name
    names = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(names) or None


def install(app: FastAPI) -> None:
    @app.exception_handler(LongCatError)
    async def _longcat(request: Request, exc: LongCatError):
        return from_longcat(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = _field_of(first.get("loc", ()))
        message = first.get("msg", "invalid request")
        return error_response(400, f"{field}: {message}" if field else message, field, "invalid_argument")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        limit = request.scope.get("state", {}).get("body_too_large")
        if limit:
            return error_response(413, f"the request body is over the {limit} byte limit", None, "request_too_large")
        return error_response(exc.status_code, str(exc.detail), None, None, getattr(exc, "headers", None))
