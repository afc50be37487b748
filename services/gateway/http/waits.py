"""The HTTP door's waiting calls on the gateway's event hub (no worker thread held while waiting): SSE job
events and the blocking ``/v1/images/edits``. Without a hub (an app built alone, e.g. in tests) the callers
fall back to the core's blocking versions on the thread pool."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from longcat.v1 import edit_pb2
from services.gateway.core import TERMINAL, Caller, GatewayCore
from services.gateway.hub import check_cursor

__all__ = ["check_cursor", "edit", "hub_of"]


def hub_of(request: Request):
    return getattr(request.app.state, "hub", None)


async def edit(request: Request, hub, gw: GatewayCore, who: Caller, req: edit_pb2.EditRequest,
               deadline: float) -> edit_pb2.EditResult:
    """Submit, wait for the terminal event on the hub; a client that disconnects (or a passed deadline, which
    the job itself enforces) ends the wait; a gone client's job is cancelled."""
    job = await run_in_threadpool(gw.submit_edit, who, req, deadline)

    async def until_terminal():
        async for ev in hub.watch(job.id, "0", "edit"):
            if ev.HasField("job") and ev.job.state in TERMINAL:
                return

    async def until_disconnected():
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)

    waits = [asyncio.create_task(until_terminal()), asyncio.create_task(until_disconnected())]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in waits:
            t.cancel()
    for t in done:
        t.result()  # a hub error (UNAVAILABLE) surfaces here
    return await run_in_threadpool(gw.edit_outcome, job.id, waits[0] in done)
