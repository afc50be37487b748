"""``longcat.v1.EditService``: validate, authenticate, queue over Redis, relay events. Never runs a model."""

from __future__ import annotations

import time

from longcat.api.prompts import check_prompt_length
from longcat.api.edit import Limits, validate_request
from longcat.errors import Cancelled, DeadlineExceeded, LongCatError, NotFound
from longcat.jobs.connection import redis_unavailable_as_error
from longcat.api.edit_proto import request_from_proto
from longcat.jobs.store import JobStore
from longcat.rpc.errors import STATUS
from longcat.rpc.handler import rpc_method
from longcat.v1 import edit_pb2, edit_pb2_grpc
from services.gateway.auth import ApiKeys
from services.gateway.events import watch

SERVICE = "longcat.v1.EditService"
MAX_DEADLINE_S = 30 * 86400


class JobFailed(LongCatError):
    """A job's terminal failure, re-raised to a blocking caller with the job's own status code."""

    def __init__(self, view):
        super().__init__(view.reason or view.state.lower())
        self.code = view.error_code if view.error_code in STATUS else "INTERNAL"


class JobAccess:
    """Jobs are visible only to their owner; others get NOT_FOUND (existence is not leaked)."""

    def __init__(self, store: JobStore, auth: ApiKeys):
        self.store = store
        self.auth = auth

    def get(self, job_id: str, context, kind: str | None = None):
        owner = self.auth.owner(context)
        view = self.store.get(job_id) if job_id else None
        if view is None or view.owner != owner or (kind and view.kind != kind):
            raise NotFound(f"no job {job_id!r}", "job_id")
        return view

    def watch(self, request, context, kind: str):
        self.get(request.job_id, context, kind)
        yield from watch(self.store, request.job_id, request.after_event_id, context.is_active)

    def cancel(self, request, context, kind: str):
        self.get(request.job_id, context, kind)
        self.store.cancel(request.job_id, kind)
        return self.store.to_proto(self.store.get(request.job_id))


class EditServicer(edit_pb2_grpc.EditServiceServicer):
    def __init__(self, store: JobStore, auth: ApiKeys, limits: Limits, max_queue: int, tokenizer=None,
                 retry_after_s: float = 2.0):
        self.store = store
        self.jobs = JobAccess(store, auth)
        self.auth = auth
        self.limits = limits
        self.max_queue = max_queue
        self.tokenizer = tokenizer
        self.retry_after_s = retry_after_s

    def _submit(self, request: edit_pb2.EditRequest, context) -> edit_pb2.Job:
        owner = self.auth.owner(context)
        # The same rules as the engine, before anything is queued.
        req = validate_request(request_from_proto(request), self.limits)
        if self.tokenizer is not None:
            check_prompt_length(self.tokenizer, req.prompt, "prompt", request.truncate_prompt)
            check_prompt_length(self.tokenizer, req.negative_prompt, "negative_prompt", request.truncate_prompt)
        remaining = context.time_remaining()  # grpc reports "no deadline" as None or as a huge number
        deadline = time.time() + remaining if remaining is not None and remaining < MAX_DEADLINE_S else 0.0
        # The seed is resolved here, so a retried delivery renders the same image.
        msg = edit_pb2.EditRequest()
        msg.CopyFrom(request)
        msg.seed = req.seed
        with redis_unavailable_as_error():
            try:
                job_id, _, _ = self.store.submit("edit", owner, msg.SerializeToString(), request.request_id,
                                                 deadline, self.max_queue, fields={"total_steps":
                                                                                   req.num_inference_steps})
            except LongCatError as exc:
                if exc.code == "RESOURCE_EXHAUSTED":
                    exc.trailers = {"retry-after-ms": int(self.retry_after_s * 1000)}
                raise
            return self.store.to_proto(self.store.get(job_id))

    @rpc_method(SERVICE)
    def SubmitEdit(self, request, context):
        return self._submit(request, context)

    @rpc_method(SERVICE)
    def Edit(self, request, context):
        job = self._submit(request, context)
        with redis_unavailable_as_error():
            for ev in watch(self.store, job.id, "0", context.is_active):
                if ev.HasField("job") and ev.job.state in (edit_pb2.SUCCEEDED, edit_pb2.FAILED, edit_pb2.CANCELLED):
                    break
            view = self.store.get(job.id)
        if not context.is_active():  # the caller went away: don't spend a GPU on a result nobody reads
            with redis_unavailable_as_error():
                self.store.cancel(job.id)
            raise Cancelled("the caller went away")
        if view is None:
            raise NotFound("the job expired before its result was read", "job_id")
        if view.state == "SUCCEEDED":
            return self.store.to_proto(view).result
        if view.error_code == "DEADLINE_EXCEEDED":
            raise DeadlineExceeded(view.reason)
        raise JobFailed(view)

    @rpc_method(SERVICE)
    def WatchJob(self, request, context):
        with redis_unavailable_as_error():
            yield from self.jobs.watch(request, context, "edit")

    @rpc_method(SERVICE)
    def GetJob(self, request, context):
        with redis_unavailable_as_error():
            return self.store.to_proto(self.jobs.get(request.job_id, context, "edit"))

    @rpc_method(SERVICE)
    def CancelJob(self, request, context):
        with redis_unavailable_as_error():
            return self.jobs.cancel(request, context, "edit")
