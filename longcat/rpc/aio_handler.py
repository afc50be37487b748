"""The asyncio twin of :func:`longcat.rpc.handler.rpc_method`, for servicers on a ``grpc.aio`` server: the
same request id, structured log line, metrics and error -> status code mapping (with trailers, e.g. a
retry hint on RESOURCE_EXHAUSTED), for coroutine (unary) and async-generator (streaming) methods.

Also :func:`in_pool`: run a blocking call (Redis, files) on a bounded executor without losing the request id
(contextvars travel with it), so the event loop never waits on I/O itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from concurrent.futures import Executor

import grpc

from longcat.errors import Cancelled
from longcat.logs import job_id, tenant
from longcat.rpc.errors import status_for
from longcat.rpc.handler import Call, abort_details, gone_code

log = logging.getLogger("longcat.rpc")


async def in_pool(pool: Executor | None, fn, *args):
    """``fn(*args)`` on ``pool``, awaited; the caller's contextvars (request id, log context) go with it."""
    ctx = contextvars.copy_context()
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(ctx.run, fn, *args))
    finally:
        # What the call learnt (bind_job: a new job's id, the caller's tenant) comes back to the RPC's scope,
        # so its closing log line and span name them as the threaded door's do.
        for var in (job_id, tenant):
            learnt = ctx.get(var)  # None: never set in there (the default applies)
            if learnt is not None and learnt != var.get():
                var.set(learnt)


def _code(context, exc: BaseException | None) -> grpc.StatusCode | None:
    if exc is None:
        return None
    # The client went away or its deadline passed (the call's task was cancelled): nothing to send.
    return gone_code(context) if isinstance(exc, (asyncio.CancelledError, Cancelled)) else status_for(exc)


def _end(call: Call, context, failure: BaseException | None) -> None:
    call.end(failure, _code(context, failure), traceback=not isinstance(failure, asyncio.CancelledError))


async def _abort(context, exc: BaseException):
    await context.abort(*abort_details(context, exc))


def aio_rpc_method(service: str):
    """Decorate an async servicer method (coroutine, or async generator for server streaming) of ``service``."""

    def wrap(fn):
        method = fn.__name__

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def stream(self, req, context):
                call, failure = Call(service, method, context), None
                try:
                    async for item in fn(self, req, context):
                        yield item
                except (asyncio.CancelledError, GeneratorExit) as exc:
                    failure = exc if isinstance(exc, asyncio.CancelledError) else Cancelled("client went away")
                    raise
                except Exception as exc:  # noqa: BLE001 - every error becomes a status code
                    failure = exc
                    await _abort(context, exc)
                finally:
                    _end(call, context, failure)
            return stream

        @functools.wraps(fn)
        async def unary(self, req, context):
            call, failure = Call(service, method, context), None
            try:
                return await fn(self, req, context)
            except asyncio.CancelledError as exc:
                failure = exc
                raise
            except Exception as exc:  # noqa: BLE001
                failure = exc
                await _abort(context, exc)
            finally:
                _end(call, context, failure)
        return unary

    return wrap
