"""``longcat.v1.TrainingService`` over gRPC: a thin door onto :class:`GatewayCore` (validate a training job
completely, queue it for the Celery trainers, relay its events; receive datasets for remote trainers)."""

from __future__ import annotations

from longcat.rpc.handler import rpc_method
from longcat.v1 import training_pb2, training_pb2_grpc
from services.gateway.auth import ApiKeys
from services.gateway.core import GatewayCore

SERVICE = "longcat.v1.TrainingService"


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, core: GatewayCore, auth: ApiKeys):
        self.core = core
        self.auth = auth

    @rpc_method(SERVICE)
    def SubmitTraining(self, request, context):
        return self.core.submit_training(self.auth.caller(context), request)

    @rpc_method(SERVICE)
    def WatchJob(self, request, context):
        yield from self.core.watch_job(self.auth.caller(context), request.job_id, request.after_event_id,
                                       "training", context.is_active)

    @rpc_method(SERVICE)
    def GetJob(self, request, context):
        return self.core.get_job(self.auth.caller(context), request.job_id, "training")

    @rpc_method(SERVICE)
    def CancelJob(self, request, context):
        return self.core.cancel_job(self.auth.caller(context), request.job_id, "training")

    @rpc_method(SERVICE)
    def ListJobs(self, request, context):
        jobs = self.core.list_jobs(self.auth.caller(context), request.kind, request.state, request.limit)
        return training_pb2.ListJobsResponse(jobs=jobs)

    @rpc_method(SERVICE)
    def UploadDataset(self, request_iterator, context):
        return self.core.upload_dataset(self.auth.caller(context), request_iterator)
