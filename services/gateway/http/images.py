"""OpenAI-compatible image edits: ``POST /v1/images/edits`` (blocking, OpenAI's images response) and the
``url`` results it hands out."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from longcat.errors import NotFound
from longcat.v1 import edit_pb2
from services.gateway.core import Caller, GatewayCore
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
             responses={200: {"description": "OpenAI's images response: {created, data: [{b64_json | url}]}"}})
async def images_edits(request: Request, form: EditForm = Depends(edit_form), who: Caller = Depends(caller),
                       gw: GatewayCore = Depends(core)) -> dict:
    results = await asyncio.gather(*[
        while_connected(request, gw.edit, who, numbered(form.request, i), 0.0) for i in range(form.n)])
    data = []
    for result in results:
        if form.response_format == "url":
            data.append({"url": str(request.base_url).rstrip("/") + f"/v1/images/results/{result.job_id}.png",
                         "seed": result.seed})
        else:
            data.append({"b64_json": base64.b64encode(result.image).decode(), "seed": result.seed})
    return {"created": int(time.time()), "data": data}


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
