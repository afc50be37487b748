"""OpenAI-compatible image edits: ``POST /v1/images/edits`` (blocking, OpenAI's images response) and the
``url`` results it hands out."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from longcat.errors import InvalidArgument, NotFound
from longcat.v1 import edit_pb2
from services.gateway.core import Caller, GatewayCore, deadline_from_remaining
from services.gateway.http import waits
from services.gateway.http.deps import caller, core
from services.gateway.http.errors import NotYet
from services.gateway.http.forms import EditForm, edit_form

router = APIRouter(tags=["images"])


async def while_connected(request: Request, fn, *args):
    """Run the blocking ``fn(*args, is_active)`` in a worker thread; a client that disconnects makes
    ``is_active`` false, so the core cancels the job instead of rendering for nobody."""
    active = threading.Event()
    active.set()

    async def watch_disconnect():
        while active.is_set():
            if await request.is_disconnected():
                active.clear()
                return
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch_disconnect())
    try:
        return await run_in_threadpool(fn, *args, active.is_set)
    finally:
        watcher.cancel()


def request_timeout(request: Request) -> float | None:
    """The caller's own time limit, seconds, as gRPC's deadline: ``X-Request-Timeout``, or the header OpenAI's
    Python client sends with its ``timeout`` (``X-Stainless-Timeout``). Past it the edit fails with 504."""
    for name in ("x-request-timeout", "x-stainless-timeout"):
        value = request.headers.get(name)
        if value:
            try:
                seconds = float(value)
            except ValueError:
                raise InvalidArgument(f"{value!r} is not a number of seconds", name) from None
            if not seconds > 0:
                raise InvalidArgument(f"must be a positive number of seconds, got {value!r}", name)
            return seconds
    return None


def numbered(request: edit_pb2.EditRequest, i: int) -> edit_pb2.EditRequest:
    """Image ``i`` of ``n``: seed + i (when a seed was given), its own idempotency key."""
    msg = edit_pb2.EditRequest()
    msg.CopyFrom(request)
    if i and msg.HasField("seed"):
        msg.seed += i
    if i and msg.request_id:
        msg.request_id = f"{msg.request_id}#{i}"
    return msg


@router.post("/v1/images/edits", summary="Edit an image (OpenAI-compatible)",
             response_class=JSONResponse,
             responses={200: {"description": "OpenAI's images response: {created, data: [{b64_json | url}]}"}})
async def images_edits(request: Request, form: EditForm = Depends(edit_form), who: Caller = Depends(caller),
                       gw: GatewayCore = Depends(core)) -> JSONResponse:
    deadline = deadline_from_remaining(request_timeout(request))
    hub = waits.hub_of(request)
    results = await asyncio.gather(*[
        waits.edit(request, hub, gw, who, numbered(form.request, i), deadline) if hub is not None else
        while_connected(request, gw.edit, who, numbered(form.request, i), deadline) for i in range(form.n)])
    data = []
    for result in results:
        if form.response_format == "url":
            data.append({"url": str(request.base_url).rstrip("/") + f"/v1/images/results/{result.job_id}.png",
                         "seed": result.seed})
        else:
            data.append({"b64_json": base64.b64encode(result.image).decode(), "seed": result.seed})
    # A plain JSONResponse: the images are large strings, FastAPI's response encoding would walk them again.
    return JSONResponse({"created": int(time.time()), "data": data})


@router.get("/v1/images/results/{job_id}.png", summary="An edit's result image (same key as the edit)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def image_result(job_id: str, who: Caller = Depends(caller), gw: GatewayCore = Depends(core)):
    return png_of(gw.get_job(who, job_id, "edit"))


def png_of(job: edit_pb2.Job) -> Response:
    state = edit_pb2.JobState.Name(job.state)
    if job.state in (edit_pb2.FAILED, edit_pb2.CANCELLED):
        raise NotFound(f"job {job.id} has no result: it is {state}", "job_id")
    if job.state != edit_pb2.SUCCEEDED:
        raise NotYet(f"job {job.id} is {state}: no result yet", "job_id")
    if not job.result.image:
        raise NotFound(f"the result of job {job.id} has expired", "job_id")
    return Response(job.result.image, media_type="image/png")
