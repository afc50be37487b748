"""What the HTTP door checks before it reads a body: the API key (401) and the declared size (413).

A plain ASGI middleware, so that an unauthenticated or oversized upload is refused from its headers alone,
without the server spending memory or time on the body. The caller it resolves travels in the request scope
(``caller`` dependency in ``deps.py``)."""

from __future__ import annotations

from longcat.errors import Unauthenticated
from services.gateway.auth import ApiKeys
from services.gateway.http.errors import error_response, from_longcat

# Prefixes whose bodies are datasets or adapter files (the upload limit), not single images.
UPLOAD_PREFIXES = ("/v1/trainings", "/v1/adapters")


class Guard:
    def __init__(self, app, auth: ApiKeys, max_request_bytes: int, max_upload_bytes: int):
        self.app = app
        self.auth = auth
        self.max_request_bytes = max_request_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        try:
            who = self.auth.caller_for(headers.get(b"authorization", b"").decode("latin-1"))
        except Unauthenticated as exc:
            return await from_longcat(exc)(scope, receive, send)
        scope.setdefault("state", {})["caller"] = who
        limit = self.max_upload_bytes if scope["path"].startswith(UPLOAD_PREFIXES) else self.max_request_bytes
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return await error_response(400, "Content-Length is not a number", "content-length")(
                    scope, receive, send)
            if size > limit:
                return await error_response(413, f"the request body is {size} bytes, over the {limit} byte limit",
                                            None, "request_too_large")(scope, receive, send)
        if length is not None:
            return await self.app(scope, receive, send)
        started = False

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            return await self.app(scope, _limited(receive, limit, scope["state"]), sending)
        except BodyTooLarge as exc:
            if started:
                raise
            return await error_response(413, str(exc), None, "request_too_large")(scope, receive, send)


def _limited(receive, limit: int, state: dict):
    """A body sent without Content-Length (chunked): cut it off past the limit (the form parser then fails
    with a 400 rather than buffering without bound)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                state["body_too_large"] = limit  # the form parser turns any error into a 400: errors.py looks here
                raise BodyTooLarge(limit)
        return message

    return wrapped


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the request body is over the {limit} byte limit")
        self.limit = limit

