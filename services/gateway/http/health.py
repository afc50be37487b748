"""Liveness, readiness (Redis reachable: the same signal as the gRPC health service) and Prometheus metrics
on the HTTP port, for Kubernetes probes and scrapers that speak HTTP."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready for requests (Redis reachable)")
def readyz(request: Request):
    if request.app.state.ready():
        return {"status": "ready"}
    return JSONResponse({"status": "not ready", "reason": "redis unreachable"}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics of this process", response_class=PlainTextResponse)
def metrics():
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
