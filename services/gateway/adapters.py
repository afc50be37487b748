"""``longcat.v1.AdapterService`` over gRPC: a thin door onto :class:`GatewayCore` (the adapter registry,
read and pruned through the gateway)."""

from __future__ import annotations

from longcat.errors import InvalidArgument
from longcat.rpc.handler import rpc_method
from longcat.v1 import adapters_pb2, adapters_pb2_grpc
from services.gateway.auth import ApiKeys
from services.gateway.core import GatewayCore

SERVICE = "longcat.v1.AdapterService"
CHUNK_BYTES = 1 << 20  # well under gRPC's default 4 MiB message limit


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

    @rpc_method(SERVICE)
    def SetAdapterVisibility(self, request, context):
        return self.core.set_adapter_visibility(self.auth.caller(context), request.name, request.visibility)

    @rpc_method(SERVICE)
    def DownloadAdapter(self, request, context):
        download = self.core.download_adapter(self.auth.caller(context), request.name)
        first = True
        for data in download.chunks(CHUNK_BYTES):
            if first:
                yield adapters_pb2.AdapterChunk(adapter=download.adapter, filename=download.filename,
                                                total_bytes=download.total_bytes, data=data)
                first = False
            else:
                yield adapters_pb2.AdapterChunk(data=data)
            if not context.is_active():
                return

    @rpc_method(SERVICE)
    def UploadAdapter(self, request_iterator, context):
        caller = self.auth.caller(context)
        first = next(request_iterator, None)
        if first is None or not first.HasField("metadata"):
            raise InvalidArgument("the first message must carry the metadata (name, overwrite)", "metadata")
        meta = first.metadata
        return self.core.upload_adapter(caller, meta.name, _data(request_iterator), meta.overwrite, meta.peft_config)


def _data(messages):
    for m in messages:
        if m.HasField("metadata"):
            raise InvalidArgument("only the first message may carry metadata", "metadata")
        yield m.data
