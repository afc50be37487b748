"""``longcat.v1.AdapterService``: the adapter registry, read and pruned through the gateway."""

from __future__ import annotations

from longcat.adapters.registry import AdapterInfo, AdapterRegistry
from longcat.jobs.connection import redis_unavailable_as_error
from longcat.rpc.handler import rpc_method
from longcat.v1 import adapters_pb2, adapters_pb2_grpc
from services.gateway.auth import ApiKeys

SERVICE = "longcat.v1.AdapterService"


def to_proto(info: AdapterInfo) -> adapters_pb2.Adapter:
    return adapters_pb2.Adapter(name=info.name, rank=info.rank, alpha=info.alpha, format=info.format,
                                size_bytes=info.size_bytes, created_at=info.created_at, job_id=info.job_id,
                                owner=info.owner)


class AdapterServicer(adapters_pb2_grpc.AdapterServiceServicer):
    def __init__(self, registry: AdapterRegistry, auth: ApiKeys):
        self.registry = registry
        self.auth = auth

    @rpc_method(SERVICE)
    def ListAdapters(self, request, context):
        self.auth.owner(context)
        with redis_unavailable_as_error():
            return adapters_pb2.ListAdaptersResponse(adapters=[to_proto(a) for a in self.registry.list()])

    @rpc_method(SERVICE)
    def GetAdapter(self, request, context):
        self.auth.owner(context)
        with redis_unavailable_as_error():
            return to_proto(self.registry.get(request.name))

    @rpc_method(SERVICE)
    def DeleteAdapter(self, request, context):
        owner = self.auth.owner(context)
        with redis_unavailable_as_error():
            return to_proto(self.registry.delete(request.name, owner if self.auth.enabled else None))
