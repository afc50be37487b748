"""``AsyncLongCatClient``: the asyncio twin of :class:`longcat.client.LongCatClient` (grpc.aio)."""

from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Callable

import grpc

from longcat.client import requests as rq
from longcat.client.errors import from_rpc_error
from longcat.client.reach import is_connect_failure, no_gateway, nothing_listening
from longcat.client.sync import TERMINAL, _job_error, resolve_address
from longcat.errors import NotFound
from longcat.rpc.channel import DEFAULT_MAX_MESSAGE_MB
from longcat.v1 import adapters_pb2, adapters_pb2_grpc, edit_pb2, edit_pb2_grpc, training_pb2, training_pb2_grpc


class AsyncLongCatClient:
    def __init__(self, address: str | None = None, api_key: str | None = None, timeout: float | None = None,
                 retries: int = 5, backoff_s: float = 0.2):
        self.address = resolve_address(address)
        limit = DEFAULT_MAX_MESSAGE_MB * 1024 * 1024
        self.channel = grpc.aio.insecure_channel(self.address, options=[
            ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
        key = api_key if api_key is not None else os.environ.get("LONGCAT_API_KEY")
        self.metadata = [("authorization", f"Bearer {key}")] if key else []
        self.timeout, self.retries, self.backoff_s = timeout, retries, backoff_s
        self.connected = False  # set by the first answer; until then a refused connection fails at once
        self.edits = edit_pb2_grpc.EditServiceStub(self.channel)
        self.training = training_pb2_grpc.TrainingServiceStub(self.channel)
        self.adapters = adapters_pb2_grpc.AdapterServiceStub(self.channel)

    async def _call(self, method, request, timeout: float | None = None):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                answer = await method(request, timeout=timeout or self.timeout, metadata=self.metadata)
                self.connected = True
                return answer
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    self.connected = True
                    raise from_rpc_error(err) from None
                if not self.connected and nothing_listening(self.address):
                    raise no_gateway(self.address) from None
                if attempt == self.retries:
                    raise (no_gateway(self.address) if is_connect_failure(err.details())
                           else from_rpc_error(err)) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncLongCatClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def edit(self, image, prompt: str, *, on_progress: Callable | None = None, timeout: float | None = None,
                   **options) -> edit_pb2.EditResult:
        request = rq.edit_request(image, prompt, **options)
        if on_progress is None:
            return await self._call(self.edits.Edit, request, timeout)
        job = await self._call(self.edits.SubmitEdit, request, timeout)
        final = None
        async for ev in self.watch(job.id, kind="edit"):
            on_progress(ev)
            if ev.HasField("job"):
                final = ev.job
        if final is None or final.state != edit_pb2.SUCCEEDED:
            raise _job_error(final or await self.get_job(job.id, "edit"))
        return final.result

    async def submit_edit(self, image, prompt: str, **options) -> edit_pb2.Job:
        return await self._call(self.edits.SubmitEdit, rq.edit_request(image, prompt, **options))

    async def get_job(self, job_id: str, kind: str | None = None) -> edit_pb2.Job:
        last = None
        for stub in ([self.edits] if kind == "edit" else [self.training] if kind == "training"
                     else [self.edits, self.training]):
            try:
                return await self._call(stub.GetJob, edit_pb2.GetJobRequest(job_id=job_id))
            except NotFound as exc:
                last = exc
        raise last

    async def cancel_job(self, job_id: str, kind: str | None = None) -> edit_pb2.Job:
        job = await self.get_job(job_id, kind)
        stub = self.training if job.kind == edit_pb2.TRAINING else self.edits
        return await self._call(stub.CancelJob, edit_pb2.CancelJobRequest(job_id=job_id))

    async def watch(self, job_id: str, after: str = "", kind: str | None = None) -> AsyncIterator[edit_pb2.JobEvent]:
        if kind is None:
            kind = "training" if (await self.get_job(job_id)).kind == edit_pb2.TRAINING else "edit"
        stub = self.training if kind == "training" else self.edits
        delay, attempts = self.backoff_s, 0
        while True:
            try:
                async for ev in stub.WatchJob(edit_pb2.WatchJobRequest(job_id=job_id, after_event_id=after),
                                              metadata=self.metadata):
                    after = ev.event_id or after
                    attempts = 0
                    yield ev
                    if ev.HasField("job") and ev.job.state in TERMINAL:
                        return
                return
            except grpc.aio.AioRpcError as err:
                attempts += 1
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempts > self.retries:
                    raise from_rpc_error(err) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def train(self, config, dataloader=None, name: str = "") -> edit_pb2.Job:
        from longcat.client.datasets import LocalTrainingJob

        return await self._call(self.training.SubmitTraining, LocalTrainingJob.load(config, dataloader, name).request())

    async def list_jobs(self, kind: str | None = None, state: str | None = None, limit: int = 100):
        req = training_pb2.ListJobsRequest(limit=limit)
        if kind:
            req.kind = edit_pb2.JobKind.Value(kind.upper())
        if state:
            req.state = edit_pb2.JobState.Value(state.upper())
        return list((await self._call(self.training.ListJobs, req)).jobs)

    async def list_adapters(self):
        return list((await self._call(self.adapters.ListAdapters, adapters_pb2.ListAdaptersRequest())).adapters)

    async def get_adapter(self, name: str):
        return await self._call(self.adapters.GetAdapter, adapters_pb2.GetAdapterRequest(name=name))

    async def delete_adapter(self, name: str):
        return await self._call(self.adapters.DeleteAdapter, adapters_pb2.DeleteAdapterRequest(name=name))

    async def set_adapter_visibility(self, name: str, visibility: str):
        return await self._call(self.adapters.SetAdapterVisibility,
                                adapters_pb2.SetAdapterVisibilityRequest(name=name, visibility=visibility))
