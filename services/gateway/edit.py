"""``longcat.v1.EditService`` over gRPC: a thin door onto :class:`GatewayCore` (identity from the metadata,
the caller's deadline and liveness from the context). Never runs a model."""

from __future__ import annotations

from longcat.rpc.handler import rpc_method
from longcat.v1 import edit_pb2_grpc
from services.gateway.auth import ApiKeys
from services.gateway.core import GatewayCore, deadline_from_remaining

SERVICE = "longcat.v1.EditService"


class EditServicer(edit_pb2_grpc.EditServiceServicer):
    def __init__(self, core: GatewayCore, auth: ApiKeys):
        self.core = core
        self.auth = auth

    @rpc_method(SERVICE)
    def SubmitEdit(self, request, context):
        return self.core.submit_edit(self.auth.caller(context), request,
                                     deadline_from_remaining(context.time_remaining()))

    @rpc_method(SERVICE)
    def Edit(self, request, context):
        return self.core.edit(self.auth.caller(context), request, deadline_from_remaining(context.time_remaining()),
                              context.is_active)

    @rpc_method(SERVICE)
    def WatchJob(self, request, context):
        yield from self.core.watch_job(self.auth.caller(context), request.job_id, request.after_event_id, "edit",
                                       context.is_active)

    @rpc_method(SERVICE)
    def GetJob(self, request, context):
        return self.core.get_job(self.auth.caller(context), request.job_id, "edit")

    @rpc_method(SERVICE)
    def CancelJob(self, request, context):
        return self.core.cancel_job(self.auth.caller(context), request.job_id, "edit")
