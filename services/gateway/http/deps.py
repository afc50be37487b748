"""FastAPI dependencies shared by the routers: the core, and the caller ``guard.Guard`` established."""

from __future__ import annotations

from fastapi import Request

from services.gateway.core import Caller, GatewayCore


def core(request: Request) -> GatewayCore:
    return request.app.state.core


def caller(request: Request) -> Caller:
    return request.scope["state"]["caller"]

