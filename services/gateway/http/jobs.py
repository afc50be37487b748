"""REST jobs: submit an edit without waiting, get / list / cancel jobs of either kind, their result, and their
events as Server-Sent Events (``id:`` is the event id, so a reconnecting client resumes with
``Last-Event-ID``; ``data:`` is the event as JSON, previews and results as data URLs)."""

from __future__ import annotations

import json
import threading

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from longcat.api.bounds import shown
from longcat.api.ids import check_event_id
from longcat.errors import InvalidArgument
from longcat.v1 import edit_pb2
from services.gateway.core import Caller, GatewayCore
from services.gateway.http.deps import caller, core
from services.gateway.http.forms import EditForm, edit_form
from services.gateway.http.images import png_of
from services.gateway.http.views import event_json, job_json
from services.gateway.http.waits import check_cursor, hub_of

router = APIRouter(tags=["jobs"])
KINDS = {"": 0, "edit": edit_pb2.EDIT, "training": edit_pb2.TRAINING}
STATES = {"": 0, **{name.lower(): value for name, value in edit_pb2.JobState.items() if value}}


@router.post("/v1/jobs/edits", summary="Queue an edit; returns the job at once", status_code=201)
def submit_edit(form: EditForm = Depends(edit_form), who: Caller = Depends(caller),
                gw: GatewayCore = Depends(core)) -> dict:
    if form.n != 1:
        raise InvalidArgument("a job renders one image: submit n jobs (or use /v1/images/edits)", "n")
    return job_json(gw.submit_edit(who, form.request))


@router.get("/v1/jobs", summary="Your jobs, newest first")
def list_jobs(kind: str = Query("", description="edit | training (empty: both)"),
              state: str = Query("", description="queued | running | succeeded | failed | cancelled"),
              limit: int = Query(20, ge=1, le=200), cursor: str = Query("", description="next_cursor of the "
                                                                                        "previous page"),
              who: Caller = Depends(caller), gw: GatewayCore = Depends(core)) -> dict:
    if kind not in KINDS:
        raise InvalidArgument(f"must be edit or training, got {kind!r}", "kind")
    if state.lower() not in STATES:
        raise InvalidArgument(f"must be one of {', '.join(s for s in STATES if s)}, got {state!r}", "state")
    try:
        before = float(cursor) if cursor else 0.0
    except ValueError:
        before = -1.0
    if not 0 <= before < float("inf"):  # nan, inf, negative: no time this server handed out
        raise InvalidArgument(f"{shown(cursor)} is not a cursor this server handed out", "cursor")
    jobs = gw.list_jobs(who, KINDS[kind], STATES[state.lower()], limit + 1, before=before)
    page = jobs[:limit]
    return {"object": "list", "data": [job_json(j) for j in page],
            "next_cursor": repr(page[-1].created_at) if len(jobs) > limit and page else None}


@router.get("/v1/jobs/{job_id}", summary="A job (edit or training)")
def get_job(job_id: str, who: Caller = Depends(caller), gw: GatewayCore = Depends(core)) -> dict:
    return job_json(gw.get_job(who, job_id))


@router.post("/v1/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
def cancel_job(job_id: str, who: Caller = Depends(caller), gw: GatewayCore = Depends(core)) -> dict:
    job = gw.get_job(who, job_id)
    return job_json(gw.cancel_job(who, job_id, edit_pb2.JobKind.Name(job.kind).lower()))


@router.get("/v1/jobs/{job_id}/result", summary="An edit job's result image", response_class=StreamingResponse,
            responses={200: {"content": {"image/png": {}}}})
def job_result(job_id: str, who: Caller = Depends(caller), gw: GatewayCore = Depends(core)):
    return png_of(gw.get_job(who, job_id, "edit"))


@router.get("/v1/jobs/{job_id}/events", summary="The job's events as Server-Sent Events (resume: Last-Event-ID)",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(request: Request, job_id: str, last_event_id: str = Header("", alias="Last-Event-ID"),
                     after: str = Query("", description="resume after this event id (as Last-Event-ID)"),
                     who: Caller = Depends(caller), gw: GatewayCore = Depends(core)):
    # A bad cursor and an unknown job are answered before the stream starts (a 200 cannot become a 400 later).
    cursor = check_event_id(last_event_id or after, "Last-Event-ID" if last_event_id else "after")
    job = await run_in_threadpool(gw.get_job, who, job_id)
    kind = edit_pb2.JobKind.Name(job.kind).lower()
    hub = hub_of(request)
    if hub is not None:  # waits on the shared event hub: no worker thread held by a watcher
        cursor = check_cursor(last_event_id or after, "Last-Event-ID" if last_event_id else "after")
        return StreamingResponse(hub_stream(request, hub.watch(job_id, cursor, kind)),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    active = threading.Event()
    active.set()
    events = gw.watch_job(who, job_id, cursor, kind, active.is_set)

    async def stream():
        try:
            yield "retry: 2000\n\n"
            while True:
                ev = await run_in_threadpool(next, events, None)
                if ev is None:
                    return
                yield sse(ev)
                if await request.is_disconnected():
                    return
        finally:
            active.clear()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def hub_stream(request: Request, events):
    yield "retry: 2000\n\n"
    async for ev in events:
        yield sse(ev)
        if await request.is_disconnected():
            return


def sse(ev: edit_pb2.JobEvent) -> str:
    body = event_json(ev)
    head = f"id: {ev.event_id}\n" if ev.event_id else ""
    return f"{head}event: {body['kind']}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
