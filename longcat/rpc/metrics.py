"""Prometheus metrics, one registry per process, exposed on ``--metrics-port`` (0 = off)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter("longcat_rpc_requests_total", "RPCs received", ["service", "method"])
ERRORS = Counter("longcat_rpc_errors_total", "RPCs that ended in an error, by status code",
                 ["service", "method", "code"])
LATENCY = Histogram("longcat_rpc_latency_seconds", "RPC wall time", ["service", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
STEPS_PER_SECOND = Gauge("longcat_denoise_steps_per_second", "Denoising speed of the last finished call")
STEPS = Counter("longcat_denoise_steps_total", "Denoising steps run")
CACHE = Counter("longcat_cache_requests_total", "Cache look-ups by result", ["cache", "result"])
IN_FLIGHT = Gauge("longcat_rpc_in_flight", "RPCs being handled", ["service"])


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    if port:
        start_http_server(port, addr=host)
