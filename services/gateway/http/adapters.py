"""Adapters over HTTP: list, describe, delete (only your own, with API keys on) and download the LoRA file
(diffusers-format safetensors, as the trainer publishes it)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from services.gateway.core import Caller, GatewayCore
from services.gateway.http.deps import caller, core
from services.gateway.http.views import adapter_json

router = APIRouter(tags=["adapters"])


@router.get("/v1/adapters", summary="Every published adapter")
def list_adapters(who: Caller = Depends(caller), gw: GatewayCore = Depends(core)) -> dict:
    return {"object": "list", "data": [adapter_json(a) for a in gw.list_adapters(who)]}


@router.get("/v1/adapters/{name}", summary="One adapter")
def get_adapter(name: str, who: Caller = Depends(caller), gw: GatewayCore = Depends(core)) -> dict:
    return adapter_json(gw.get_adapter(who, name))


@router.delete("/v1/adapters/{name}", summary="Delete an adapter you published")
def delete_adapter(name: str, who: Caller = Depends(caller), gw: GatewayCore = Depends(core)) -> dict:
    return {**adapter_json(gw.delete_adapter(who, name)), "deleted": True}


@router.get("/v1/adapters/{name}/download", summary="The adapter's LoRA weights (diffusers-format safetensors)",
            response_class=StreamingResponse, responses={200: {"content": {"application/octet-stream": {}}}})
def download_adapter(name: str, who: Caller = Depends(caller), gw: GatewayCore = Depends(core)):
    filename, stream = gw.download_adapter(who, name)
    return StreamingResponse(stream, media_type="application/octet-stream",
                             headers={"Content-Disposition": f'attachment; filename="{name}.{filename}"'})
