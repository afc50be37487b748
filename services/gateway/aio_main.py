"""The gateway's gRPC door on one asyncio event loop: a ``grpc.aio`` server (health, reflection, the three
public services), the shared event hub, readiness following Redis, and the SIGTERM drain of both doors."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from grpc_health.v1 import health_pb2

from longcat.jobs.connection import REDIS_ERRORS
from longcat.rpc.aio_server import AioGrpcServer
from services.gateway.aio_servicers import SERVICES, add_to_server
from services.gateway.auth_first import AuthFirst
from services.gateway.hub import EventHub

log = logging.getLogger("longcat.gateway")


async def monitor_redis(client, server: AioGrpcServer, pool, period_s: float = 2.0) -> None:
    """Readiness follows Redis: without it the gateway can only answer UNAVAILABLE."""
    loop, serving = asyncio.get_running_loop(), None
    while not server.stopping.is_set():
        try:
            ok = bool(await loop.run_in_executor(pool, client.ping))
        except REDIS_ERRORS:
            ok = False
        if ok != serving and not server.stopping.is_set():
            serving = ok
            if ok:
                await server.mark_serving()
            else:
                log.warning("redis unreachable: NOT_SERVING until it is back")
                await server.set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            await asyncio.wait_for(server.stopping.wait(), period_s)
        except asyncio.TimeoutError:
            pass


async def serve_grpc(core, auth, client, args, hub: EventHub, start_http) -> None:
    """Serve until SIGTERM/SIGINT, then drain (``--grace-s``). ``start_http(stopping)`` starts the HTTP door
    (or returns None) once gRPC listens."""
    # Short calls (Redis round trips, uploads) run here; waiting calls never take a thread of it.
    pool = ThreadPoolExecutor(max(4, args.threads), thread_name_prefix="gateway-call")
    server = AioGrpcServer(SERVICES, args.host, args.port, args.max_message_mb,
                           interceptors=[AuthFirst(auth, SERVICES)])  # no key: refused before the body is read
    add_to_server(server.server, core, auth, hub, pool)
    stopping = threading.Event()
    doors = {}

    async def on_stop() -> None:  # gRPC drained (NOT_SERVING at once): the HTTP door stops and drains too
        stopping.set()
        if doors.get("http") is not None:
            doors["http"].begin_stop()

    server.install_signal_handlers(args.grace_s, on_stop=on_stop)
    await server.start()
    http = doors["http"] = await asyncio.get_running_loop().run_in_executor(None, start_http, stopping)
    monitor = asyncio.create_task(monitor_redis(client, server, pool))
    await server.wait()
    monitor.cancel()
    if http is not None:
        await asyncio.get_running_loop().run_in_executor(None, http.stop)
    # Calls cut by the drain cancel their jobs on the pool: let those finish (bounded) before exiting.
    await asyncio.sleep(0.2)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, pool.shutdown), 10)
    except asyncio.TimeoutError:
        log.warning("calls still running at exit were abandoned")
    hub.stop()
