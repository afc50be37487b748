"""A gRPC server with what every LongCat service needs: health (NOT_SERVING until warm), reflection,
explicit message-size limits, and graceful shutdown on SIGTERM (NOT_SERVING first, then drain)."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from longcat.rpc import wire

log = logging.getLogger("longcat.rpc.server")


class PortInUse(RuntimeError):
    pass


def server_options(max_message_mb: int, max_connection_age_s: float = 0) -> list[tuple]:
    """Explicit message-size limits (both server kinds); with a connection age, clients reconnect now and then
    and so re-resolve the name: new replicas get their share."""
    limit = max_message_mb * 1024 * 1024
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
               ("grpc.so_reuseport", 0)]
    if max_connection_age_s:
        options += [("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
                    ("grpc.max_connection_age_grace_ms", 60_000)]
    return options


def listen(server, host: str, port: int) -> int:
    """Bind ``host:port`` (0: any free port) -> the port, or :class:`PortInUse`."""
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise PortInUse(f"cannot listen on {host}:{port}: the port is taken or the address is wrong") from exc
    if bound == 0:
        raise PortInUse(f"cannot listen on {host}:{port}: the port is taken or the address is wrong")
    return bound


class GrpcServer:
    def __init__(self, service_names: list[str], host: str = "0.0.0.0", port: int = 0,
                 max_message_mb: int = 256, threads: int = 8, max_connection_age_s: float = 0,
                 interceptors: tuple = ()):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                                  options=server_options(max_message_mb, max_connection_age_s),
                                  interceptors=tuple(interceptors))
        self.service_names = list(service_names)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        wire.register(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.server)  # junk: INVALID_ARGUMENT
        reflection.enable_server_reflection(
            self.service_names + [health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.port = listen(self.server, host, port)
        self.host = host
        self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._stopped = threading.Event()

    def _set_all(self, status) -> None:
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def start(self) -> "GrpcServer":
        self.server.start()
        log.info("listening", extra={"port": self.port, "services": self.service_names})
        return self

    def mark_serving(self) -> None:
        self._set_all(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"port": self.port})

    def stop(self, grace_s: float) -> None:
        """NOT_SERVING first (load balancers stop sending), then let in-flight calls finish for ``grace_s``."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        log.info("draining", extra={"grace_s": grace_s})
        self.server.stop(grace_s).wait()
        log.info("stopped")

    def install_signal_handlers(self, grace_s: float, on_stop=None, on_signal=None) -> None:
        """SIGTERM/SIGINT: ``on_signal`` at once (e.g. stop taking queued work), drain, then ``on_stop``."""
        def handle(signum, _frame):
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            if on_signal:
                on_signal()
            threading.Thread(target=self._stop_then(grace_s, on_stop), daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _stop_then(self, grace_s, on_stop):
        def run():
            self.stop(grace_s)
            if on_stop:
                on_stop()
        return run

    def wait(self) -> None:
        self.server.wait_for_termination()
