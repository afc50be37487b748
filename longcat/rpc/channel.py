"""Client channels with the same message-size limits as the servers, and health checks."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_MAX_MESSAGE_MB = 256


def make_channel(address: str, max_message_mb: int = DEFAULT_MAX_MESSAGE_MB, balanced: bool = False) -> grpc.Channel:
    """An insecure channel. ``balanced``: round-robin over every address DNS returns (a headless Service)."""
    limit = max_message_mb * 1024 * 1024
    # Reconnect within ~2 s of a peer coming back: gRPC's default backoff grows to 120 s, and until the next
    # attempt every call fails at once with UNAVAILABLE (a restarted encoder would fail, then dead-letter, the
    # denoiser workers' jobs for minutes).
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
               ("grpc.max_reconnect_backoff_ms", 2000)]
    if balanced:
        options.append(("grpc.lb_policy_name", "round_robin"))
    return grpc.insecure_channel(address, options=options)


def health_status(channel: grpc.Channel, service: str = "", timeout: float = 2.0) -> str:
    """'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN', or 'UNAVAILABLE' when nothing answers."""
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return "SERVICE_UNKNOWN"
        return "UNAVAILABLE"


def wait_until_serving(channel: grpc.Channel, service: str = "", timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    status = "UNAVAILABLE"
    while time.monotonic() < deadline:
        status = health_status(channel, service)
        if status == "SERVING":
            return
        time.sleep(0.1)
    raise TimeoutError(f"{service or 'server'} not SERVING after {timeout:.0f}s (last: {status})")
