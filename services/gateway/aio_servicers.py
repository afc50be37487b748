"""The gateway's three public services on a ``grpc.aio`` server: thin async doors onto :class:`GatewayCore`.

Short calls run the (sync, transport-free) core on a bounded executor; waiting calls (``WatchJob``, the
blocking ``Edit``) wait on the shared :class:`~services.gateway.hub.EventHub` as coroutines, so a thousand
of them hold no thread and health checks and short calls keep answering. A caller that goes away (or whose
deadline passes) has its call's task cancelled: a blocking Edit then cancels its job, as before.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

from longcat.errors import InvalidArgument
from longcat.jobs.connection import REDIS_ERRORS
from longcat.rpc import wire
from longcat.rpc.aio_handler import aio_rpc_method, in_pool
from longcat.v1 import adapters_pb2, adapters_pb2_grpc, edit_pb2_grpc, training_pb2, training_pb2_grpc
from services.gateway.auth import ApiKeys
from services.gateway.core import TERMINAL, GatewayCore, deadline_from_remaining
from services.gateway.hub import EventHub

log = logging.getLogger("longcat.gateway")

EDIT_SERVICE = "longcat.v1.EditService"
TRAINING_SERVICE = "longcat.v1.TrainingService"
ADAPTER_SERVICE = "longcat.v1.AdapterService"
SERVICES = [EDIT_SERVICE, TRAINING_SERVICE, ADAPTER_SERVICE]
CHUNK_BYTES = 1 << 20  # adapter downloads: well under gRPC's default 4 MiB message limit


class _Door:
    def __init__(self, core: GatewayCore, auth: ApiKeys, hub: EventHub, pool: Executor):
        self.core, self.auth, self.hub, self.pool = core, auth, hub, pool

    async def call(self, fn, *args):
        return await in_pool(self.pool, fn, *args)

    async def watch(self, context, job_id: str, after: str, kind: str):
        caller = self.auth.caller(context)
        await self.call(self.core.get_job, caller, job_id, kind)  # NOT_FOUND for others' and unknown jobs
        async for ev in self.hub.watch(job_id, after, kind):
            yield ev


class AioEditServicer(_Door, edit_pb2_grpc.EditServiceServicer):
    @aio_rpc_method(EDIT_SERVICE)
    async def SubmitEdit(self, request, context):
        return await self.call(self.core.submit_edit, self.auth.caller(context), request,
                               deadline_from_remaining(context.time_remaining()))

    @aio_rpc_method(EDIT_SERVICE)
    async def Edit(self, request, context):
        job = await self.SubmitEdit.__wrapped__(self, request, context)
        try:
            async for ev in self.hub.watch(job.id, "0", "edit"):
                if ev.HasField("job") and ev.job.state in TERMINAL:
                    break
        except asyncio.CancelledError:  # the caller went away: don't spend a GPU on a result nobody reads
            self.pool.submit(_cancel_quietly, self.core, job.id)
            raise
        return await self.call(self.core.edit_outcome, job.id, True)

    @aio_rpc_method(EDIT_SERVICE)
    async def WatchJob(self, request, context):
        async for ev in self.watch(context, request.job_id, request.after_event_id, "edit"):
            yield ev

    @aio_rpc_method(EDIT_SERVICE)
    async def GetJob(self, request, context):
        return await self.call(self.core.get_job, self.auth.caller(context), request.job_id, "edit")

    @aio_rpc_method(EDIT_SERVICE)
    async def CancelJob(self, request, context):
        return await self.call(self.core.cancel_job, self.auth.caller(context), request.job_id, "edit")


class AioTrainingServicer(_Door, training_pb2_grpc.TrainingServiceServicer):
    @aio_rpc_method(TRAINING_SERVICE)
    async def SubmitTraining(self, request, context):
        return await self.call(self.core.submit_training, self.auth.caller(context), request)

    @aio_rpc_method(TRAINING_SERVICE)
    async def WatchJob(self, request, context):
        async for ev in self.watch(context, request.job_id, request.after_event_id, "training"):
            yield ev

    @aio_rpc_method(TRAINING_SERVICE)
    async def GetJob(self, request, context):
        return await self.call(self.core.get_job, self.auth.caller(context), request.job_id, "training")

    @aio_rpc_method(TRAINING_SERVICE)
    async def CancelJob(self, request, context):
        return await self.call(self.core.cancel_job, self.auth.caller(context), request.job_id, "training")

    @aio_rpc_method(TRAINING_SERVICE)
    async def ListJobs(self, request, context):
        jobs = await self.call(self.core.list_jobs, self.auth.caller(context), request.kind, request.state,
                               request.limit)
        return training_pb2.ListJobsResponse(jobs=jobs)

    @aio_rpc_method(TRAINING_SERVICE)
    async def UploadDataset(self, request_iterator, context):
        caller = self.auth.caller(context)
        chunks = _blocking_iter(request_iterator, asyncio.get_running_loop())
        return await self.call(self.core.upload_dataset, caller, chunks)


class AioAdapterServicer(_Door, adapters_pb2_grpc.AdapterServiceServicer):
    @aio_rpc_method(ADAPTER_SERVICE)
    async def ListAdapters(self, request, context):
        found = await self.call(self.core.list_adapters, self.auth.caller(context))
        return adapters_pb2.ListAdaptersResponse(adapters=found)

    @aio_rpc_method(ADAPTER_SERVICE)
    async def GetAdapter(self, request, context):
        return await self.call(self.core.get_adapter, self.auth.caller(context), request.name)

    @aio_rpc_method(ADAPTER_SERVICE)
    async def DeleteAdapter(self, request, context):
        return await self.call(self.core.delete_adapter, self.auth.caller(context), request.name)

    @aio_rpc_method(ADAPTER_SERVICE)
    async def SetAdapterVisibility(self, request, context):
        return await self.call(self.core.set_adapter_visibility, self.auth.caller(context), request.name,
                               request.visibility)

    @aio_rpc_method(ADAPTER_SERVICE)
    async def DownloadAdapter(self, request, context):
        download = await self.call(self.core.download_adapter, self.auth.caller(context), request.name)
        chunks = download.chunks(CHUNK_BYTES)
        try:
            data = await self.call(next, chunks, None)
            first = True
            while data is not None:
                if first:
                    yield adapters_pb2.AdapterChunk(adapter=download.adapter, filename=download.filename,
                                                    total_bytes=download.total_bytes, data=data)
                    first = False
                else:
                    yield adapters_pb2.AdapterChunk(data=data)
                data = await self.call(next, chunks, None)
        finally:
            self.pool.submit(chunks.close)  # closes the file

    @aio_rpc_method(ADAPTER_SERVICE)
    async def UploadAdapter(self, request_iterator, context):
        caller = self.auth.caller(context)
        first = await _anext_or_none(request_iterator)
        if first is None or not first.HasField("metadata"):
            raise InvalidArgument("the first message must carry the metadata (name, overwrite)", "metadata")
        meta = first.metadata
        chunks = _adapter_data(_blocking_iter(request_iterator, asyncio.get_running_loop()))
        return await self.call(self.core.upload_adapter, caller, meta.name, chunks, meta.overwrite,
                               meta.peft_config)


def add_to_server(server, core: GatewayCore, auth: ApiKeys, hub: EventHub, pool: Executor) -> None:
    # Request bytes that do not parse answer INVALID_ARGUMENT (wire.py), not grpc's INTERNAL.
    wire.register(edit_pb2_grpc.add_EditServiceServicer_to_server, AioEditServicer(core, auth, hub, pool), server)
    wire.register(training_pb2_grpc.add_TrainingServiceServicer_to_server, AioTrainingServicer(core, auth, hub, pool),
                  server)
    wire.register(adapters_pb2_grpc.add_AdapterServiceServicer_to_server, AioAdapterServicer(core, auth, hub, pool),
                  server)


def _adapter_data(messages):
    for m in messages:
        if m.HasField("metadata"):
            raise InvalidArgument("only the first message may carry metadata", "metadata")
        yield m.data


async def _anext_or_none(it):
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None


def _blocking_iter(request_iterator, loop: asyncio.AbstractEventLoop):
    """A client stream, read from an executor thread: the core consumes uploads as a plain iterator."""
    while True:
        item = asyncio.run_coroutine_threadsafe(_anext_or_none(request_iterator), loop).result()
        if item is None:
            return
        yield item


def _cancel_quietly(core: GatewayCore, job_id: str) -> None:
    try:
        core.store.cancel(job_id)
    except REDIS_ERRORS as exc:
        log.warning("could not cancel the job of a caller that went away", extra={"job_id": job_id,
                                                                                   "error": str(exc)})
