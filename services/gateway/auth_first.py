"""gRPC: a call without a valid API key is refused before its request message is read.

grpc-python receives and parses a unary request before it calls the handler (bounded only by
``--max-message-mb``), and the servicers check the key first thing after that. This interceptor looks at
the call's metadata when the call arrives; for an unauthenticated one it hands grpc a handler of the
*streaming-request* kind that never iterates its requests, so grpc does not wait for, buffer or parse the
body: the client gets UNAUTHENTICATED at once (bytes it already sent fill at most the HTTP/2 flow-control
window). Health and reflection stay open, as before. The gateway's gRPC door is a ``grpc.aio`` server, so
this is an asyncio interceptor."""

from __future__ import annotations

import grpc

from longcat.errors import Unauthenticated
from services.gateway.auth import ApiKeys


class AuthFirst(grpc.aio.ServerInterceptor):
    def __init__(self, auth: ApiKeys, services: list[str]):
        self.auth = auth
        self.prefixes = tuple(f"/{s}/" for s in services)

    async def intercept_service(self, continuation, details):
        if not self.auth.enabled or not details.method.startswith(self.prefixes):
            return await continuation(details)
        header = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value
        try:
            self.auth.owner_for(header)
        except Unauthenticated as exc:
            return _refusal(await continuation(details), str(exc))
        return await continuation(details)


def _refusal(handler, message: str):
    if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED as usual
        return None

    async def refuse(requests, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(requests, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    return grpc.stream_unary_rpc_method_handler(refuse)
