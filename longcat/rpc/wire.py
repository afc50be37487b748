"""Request bytes that do not parse are the caller's INVALID_ARGUMENT, not the server's INTERNAL.

gRPC deserializes a request before the handler runs; the generated ``FromString`` raises ``DecodeError`` on
junk (invalid UTF-8 in a proto3 string field, a truncated varint...), which grpc reports as INTERNAL
"Exception deserializing request!". :func:`register` adds a servicer through the generated ``add_*_to_server``
with every method's deserializer wrapped: junk becomes an :class:`Undecodable` marker, and the handler answers
INVALID_ARGUMENT for it (in a stream: for the message that did not parse) before any work. Works for the
threaded server and for ``grpc.aio`` (coroutine / async-generator handlers)."""

from __future__ import annotations

import inspect

import grpc
from google.protobuf.message import DecodeError

from longcat.errors import InvalidArgument

FIELD = "request"


class Undecodable:
    def __init__(self, error: Exception):
        self.message = f"{FIELD}: the message does not parse as its proto type (invalid UTF-8 in a string " \
                       f"field, or not protobuf): {str(error)[:200]}"


def _deserializer(parse):
    def deserialize(data: bytes):
        try:
            return parse(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            return Undecodable(exc)
    return deserialize


def _checked(messages):
    for m in messages:
        if isinstance(m, Undecodable):
            raise InvalidArgument(m.message[len(FIELD) + 2:], FIELD)
        yield m


def _unary_request(behavior):
    if inspect.isasyncgenfunction(behavior):  # grpc.aio: the same, awaited
        async def astream(request, context):
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for item in behavior(request, context):
                yield item
        return astream
    if inspect.iscoroutinefunction(behavior):
        async def aunary(request, context):
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await behavior(request, context)
        return aunary
    if inspect.isgeneratorfunction(behavior):
        def stream(request, context):
            if isinstance(request, Undecodable):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            yield from behavior(request, context)
        return stream

    def unary(request, context):
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return behavior(request, context)
    return unary


async def _achecked(messages):
    async for m in messages:
        if isinstance(m, Undecodable):
            raise InvalidArgument(m.message[len(FIELD) + 2:], FIELD)
        yield m


def _streaming_request(behavior):
    if inspect.isasyncgenfunction(behavior):
        async def astream(requests, context):
            async for item in behavior(_achecked(requests), context):
                yield item
        return astream
    if inspect.iscoroutinefunction(behavior):
        async def aunary(requests, context):
            return await behavior(_achecked(requests), context)
        return aunary
    if inspect.isgeneratorfunction(behavior):
        def stream(requests, context):
            yield from behavior(_checked(requests), context)
        return stream
    return lambda requests, context: behavior(_checked(requests), context)


def safe_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler is None or handler.request_deserializer is None:
        return handler
    wrap = _streaming_request if handler.request_streaming else _unary_request
    slot = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
            (True, True): "stream_stream"}[(handler.request_streaming, handler.response_streaming)]
    return handler._replace(request_deserializer=_deserializer(handler.request_deserializer),
                            **{slot: wrap(getattr(handler, slot))})


class _SafeGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner):
        self.inner = inner

    def service(self, handler_call_details):
        return safe_handler(self.inner.service(handler_call_details))


class _SafeServer:
    """What the generated ``add_*_to_server`` sees: the real server, with every handler wrapped on the way in."""

    def __init__(self, server):
        self.server = server

    def add_generic_rpc_handlers(self, handlers):
        self.server.add_generic_rpc_handlers(tuple(_SafeGeneric(h) for h in handlers))

    def add_registered_method_handlers(self, service, handlers):
        self.server.add_registered_method_handlers(service, {k: safe_handler(v) for k, v in handlers.items()})


def register(add_to_server, servicer, server) -> None:
    """``register(edit_pb2_grpc.add_EditServiceServicer_to_server, servicer, server)``."""
    add_to_server(servicer, _SafeServer(server))
