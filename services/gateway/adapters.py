"""``longcat.v1.AdapterService`` over gRPC: a thin door onto :class:`GatewayCore` (the adapter registry,
read and pruned through the gateway)."""

from __future__ import annotations

from longcat.rpc.handler import rpc_method
from longcat.v1 import adapters_pb2, adapters_pb2_grpc
from services.gateway.auth import ApiKeys
from services.gateway.core import GatewayCore

SERVICE = "longcat.v1.AdapterService"


class AdapterServicer(adapters_pb2_grpc.AdapterServiceServicer):
    def __init__(self, core: GatewayCore, auth: ApiKeys):
        self.core = core
        self.auth = auth

    @rpc_method(SERVICE)
    def ListAdapters(self, request, context):
        return adapters_pb2.ListAdaptersResponse(adapters=self.core.list_adapters(self.auth.caller(context)))

    @rpc_method(SERVICE)
    def GetAdapter(self, request, context):
        return self.core.get_adapter(self.auth.caller(context), request.name)

    @rpc_method(SERVICE)
    def DeleteAdapter(self, request, context):
        return self.core.delete_adapter(self.auth.caller(context), request.name)
