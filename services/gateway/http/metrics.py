"""Prometheus metrics of the HTTP door (beside the gRPC ones in ``longcat.rpc.metrics``): requests by route
template and status, and their wall time. Served at ``/metrics`` on the HTTP port and on ``--metrics-port``."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

REQUESTS = Counter("longcat_http_requests_total", "HTTP requests answered, by route and status",
                   ["method", "route", "status"])
LATENCY = Histogram("longcat_http_latency_seconds", "HTTP request wall time (to the end of the body)",
                    ["method", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                                  120, 300))


class HttpMetrics:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}
        t0 = time.perf_counter()

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # templates only: bounded labels
            REQUESTS.labels(scope["method"], route, str(status["code"])).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - t0)
