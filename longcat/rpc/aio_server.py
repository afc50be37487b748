"""The asyncio twin of :class:`longcat.rpc.server.GrpcServer` (a ``grpc.aio`` server): health (NOT_SERVING
until marked), reflection, explicit message-size limits, and a graceful stop on SIGTERM (NOT_SERVING first,
then drain). A call that waits (a stream, a blocking edit) costs a coroutine, not a thread, so waiting
calls cannot starve short ones. Must be created and used on the running event loop."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from longcat.rpc import wire
from longcat.rpc.server import listen, server_options

log = logging.getLogger("longcat.rpc.server")


class AioGrpcServer:
    def __init__(self, service_names: list[str], host: str = "0.0.0.0", port: int = 0,
                 max_message_mb: int = 256, max_connection_age_s: float = 0, interceptors: tuple = ()):
        self.server = grpc.aio.server(options=server_options(max_message_mb, max_connection_age_s),
                                      interceptors=tuple(interceptors))
        self.service_names = list(service_names)
        self.health = health_aio.HealthServicer()
        wire.register(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.server)  # junk: INVALID_ARGUMENT
        reflection.enable_server_reflection(
            self.service_names + [health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.port = listen(self.server, host, port)
        self.host = host
        self.stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    async def set_all(self, status) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def start(self) -> "AioGrpcServer":
        await self.set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("listening", extra={"port": self.port, "services": self.service_names})
        return self

    async def mark_serving(self) -> None:
        await self.set_all(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"port": self.port})

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING first (load balancers stop sending), then let in-flight calls finish for ``grace_s``."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"grace_s": grace_s})
        await self.server.stop(grace_s)
        log.info("stopped")
        self._stopped.set()

    def install_signal_handlers(self, grace_s: float, on_signal=None, on_stop=None) -> None:
        """SIGTERM/SIGINT: ``on_signal()`` at once, drain, then ``await on_stop()``."""
        loop = asyncio.get_running_loop()

        def handle(signum):
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            if on_signal:
                on_signal()
            loop.create_task(self._stop_then(grace_s, on_stop))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, handle, sig)

    async def _stop_then(self, grace_s, on_stop):
        await self.stop(grace_s)
        if on_stop:
            await on_stop()

    async def wait(self) -> None:
        await self.server.wait_for_termination()
