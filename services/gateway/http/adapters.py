"""Adapters over HTTP: list, describe, delete (only your own, with API keys on), set who may see one, download
the LoRA file (diffusers-format safetensors, as the trainer publishes it) and upload one (checked against the
model).

``{name}`` may pin a version (``style@v2``); ``?owner=alice`` names another tenant's adapter (``alice/style``),
one a path segment could not carry."""

from __future__ import annotations

from typing import Iterator

from fastapi import APIRouter, Body, Depends, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from longcat.errors import TooLarge
from services.gateway.core import Caller, GatewayCore
from services.gateway.http.deps import caller, core
from services.gateway.http.errors import error_response
from services.gateway.http.views import adapter_json

router = APIRouter(tags=["adapters"])


OWNER = Query("", description="the adapter's owner, for another tenant's adapter shared with you")


def _ref(name: str, owner: str) -> str:
    return f"{owner}/{name}" if owner else name


@router.get("/v1/adapters", summary="Every adapter you may see: yours, and those shared with you")
def list_adapters(who: Caller = Depends(caller), gw: GatewayCore = Depends(core)) -> dict:
    return {"object": "list", "data": [adapter_json(a) for a in gw.list_adapters(who)]}


@router.get("/v1/adapters/{name}", summary="One adapter")
def get_adapter(name: str, owner: str = OWNER, who: Caller = Depends(caller),
                gw: GatewayCore = Depends(core)) -> dict:
    return adapter_json(gw.get_adapter(who, _ref(name, owner)))


@router.delete("/v1/adapters/{name}", summary="Delete an adapter you published (name@vN: that version only)")
def delete_adapter(name: str, owner: str = OWNER, who: Caller = Depends(caller),
                   gw: GatewayCore = Depends(core)) -> dict:
    return {**adapter_json(gw.delete_adapter(who, _ref(name, owner))), "deleted": True}


@router.patch("/v1/adapters/{name}", summary="Set who may see your adapter: private, shared or public")
def set_visibility(name: str, owner: str = OWNER,
                   visibility: str = Body(..., embed=True, description="private, shared or public"),
                   who: Caller = Depends(caller), gw: GatewayCore = Depends(core)) -> dict:
    return adapter_json(gw.set_adapter_visibility(who, _ref(name, owner), visibility))


@router.get("/v1/adapters/{name}/download", summary="The adapter's LoRA weights (diffusers-format safetensors)",
            response_class=StreamingResponse, responses={200: {"content": {"application/octet-stream": {}}}})
def download_adapter(name: str, owner: str = OWNER, who: Caller = Depends(caller),
                     gw: GatewayCore = Depends(core)):
    download = gw.download_adapter(who, _ref(name, owner))  # a PEFT-format adapter comes out with diffusers keys
    return StreamingResponse(download.chunks(), media_type="application/octet-stream",
                             headers={"Content-Disposition": f'attachment; filename="{name}.{download.filename}"',
                                      "Content-Length": str(download.total_bytes)})


@router.post("/v1/adapters/{name}", summary="Upload a LoRA (diffusers or PEFT safetensors) under a name",
             status_code=201, responses={409: {"description": "an adapter of this name exists"},
                                         413: {"description": "over the upload limit"}})
async def upload_adapter(name: str, file: UploadFile = File(..., description="the LoRA .safetensors file"),
                         config: UploadFile | None = File(None, description="PEFT adapter_config.json"),
                         overwrite: bool = Form(False), who: Caller = Depends(caller),
                         gw: GatewayCore = Depends(core)):
    peft_config = (await config.read()).decode("utf-8", "replace") if config is not None else ""
    try:
        adapter = await run_in_threadpool(gw.upload_adapter, who, name, _chunks(file), overwrite, peft_config)
    except TooLarge as exc:
        return error_response(413, str(exc), exc.field, "request_too_large")
    return adapter_json(adapter)


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    while data := upload.file.read(1 << 20):
        yield data
