"""``POST /v1/adapters/{name}``: bring an existing LoRA in (multipart ``file``: diffusers or PEFT safetensors;
optional ``config``: PEFT's adapter_config.json; ``overwrite``). The core checks it against the served model
from the safetensors header before anything is stored."""

from __future__ import annotations

from typing import Iterator

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from longcat.errors import TooLarge
from services.gateway.core import Caller, GatewayCore
from services.gateway.http.deps import caller, core
from services.gateway.http.errors import error_response
from services.gateway.http.views import adapter_json

router = APIRouter(tags=["adapters"])
CHUNK = 1 << 20


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    while data := upload.file.read(CHUNK):
        yield data


@router.post("/v1/adapters/{name}", summary="Upload a LoRA (diffusers or PEFT safetensors) under a name",
             status_code=201, responses={409: {"description": "an adapter of this name exists"},
                                         413: {"description": "over the upload limit"}})
async def upload_adapter(name: str, file: UploadFile = File(..., description="the LoRA .safetensors file"),
                         config: UploadFile | None = File(None, description="PEFT adapter_config.json"),
                         overwrite: bool = Form(False), who: Caller = Depends(caller),
                         gateway: GatewayCore = Depends(core)):
    peft_config = (await config.read()).decode("utf-8", "replace") if config is not None else ""
    try:
        adapter = await run_in_threadpool(gateway.upload_adapter, who, name, _chunks(file), overwrite, peft_config)
    except TooLarge as exc:
        return error_response(413, str(exc), exc.field, "request_too_large")
    return adapter_json(adapter)
