"""Training over HTTP: ``POST /v1/trainings`` takes the quickstart's config and dataloader JSON and, optionally,
the datasets themselves (a zip as ``archive``, or ``files`` with their relative ``paths``). Uploaded datasets
go through the core's upload path and land in ``uploads/<name>/`` of the caller's data area; the dataloader's
relative folders then mean folders of that upload. Events (loss, validation images) come from
``/v1/jobs/{id}/events``; cancel is ``/v1/jobs/{id}/cancel``."""

from __future__ import annotations

import json
import os
from typing import Optional

from fastapi import APIRouter, Depends, File, Form, UploadFile

from longcat.api import jsonc
from longcat.api.bounds import check_json_chars
from longcat.api.names import validate_name
from longcat.errors import InvalidArgument
from longcat.v1 import training_pb2
from services.gateway.core import Caller, GatewayCore
from services.gateway.http import datasets
from services.gateway.http.deps import caller, core
from services.gateway.http.views import job_json

router = APIRouter(tags=["training"])


@router.post("/v1/trainings", summary="Queue a LoRA training job (optionally with its datasets)", status_code=201)
def submit_training(
    config: str = Form(..., description="The quickstart's config.json, as JSON text."),
    dataloader: str = Form(..., description="The dataloader JSON (edit dataset + reference dataset), as text."),
    name: str = Form("", description="Publish the adapter under this name (default: config output_dir's name)."),
    archive: Optional[UploadFile] = File(None, description="The datasets as a zip (folders named as in the "
                                                           "dataloader)."),
    files: list[UploadFile] = File([], description="Or the dataset files, one part each, with `paths`."),
    paths: list[str] = Form([], description="The relative path of each part of `files`, in order."),
    request_id: str = Form("", description="Idempotency key."),
    callback_url: str = Form("", description="POST the terminal event here, signed (allow-listed hosts)."),
    callback_progress: bool = Form(False, description="POST the loss and validation events too."),
    who: Caller = Depends(caller), gw: GatewayCore = Depends(core),
) -> dict:
    check_json_chars(config, "config")
    check_json_chars(dataloader, "dataloader")
    cfg = jsonc.loads(config, "config")
    loader = jsonc.loads(dataloader, "dataloader")
    if not isinstance(cfg, dict):
        raise InvalidArgument("must be a JSON object", "config")
    if isinstance(loader, dict) and isinstance(loader.get("datasets"), list):
        loader = loader["datasets"]
    if not isinstance(loader, list):
        raise InvalidArgument("must be a JSON list of datasets", "dataloader")
    name = name or os.path.basename(str(cfg.get("output_dir") or "longcat-lora").rstrip("/"))
    validate_name(name, "name")
    files = [f for f in files if f is not None and f.filename]
    if archive is not None and archive.filename and files:
        raise InvalidArgument("send the datasets as an archive or as files, not both", "archive")
    if (archive is not None and archive.filename) or files:
        upload = upload_datasets(gw, who, name, archive if archive is not None and archive.filename else None,
                                 files, paths)
        point_at_upload(loader, upload)
    request = training_pb2.SubmitTrainingRequest(
        config_json=json.dumps(cfg), dataloader_json=json.dumps(loader), adapter_name=name, request_id=request_id,
        callback_url=callback_url, callback_progress=callback_progress)
    return job_json(gw.submit_training(who, request))


def upload_datasets(gw: GatewayCore, who: Caller, name: str, archive: UploadFile | None, files: list[UploadFile],
                    paths: list[str]) -> str:
    with datasets.spooled() as tar:
        if archive is not None:
            datasets.zip_to_tar(archive.file, tar)
        else:
            if len(paths) != len(files):
                raise InvalidArgument(f"give one path per file: {len(files)} files, {len(paths)} paths", "paths")
            datasets.files_to_tar([(p, f.file) for p, f in zip(paths, files)], tar)
        gw.upload_dataset(who, datasets.chunks(name, tar))
    return f"uploads/{name}"


def point_at_upload(loader: list, upload: str) -> None:
    """Relative dataset folders now mean folders of the upload; caches go beside it, one per dataset."""
    for d in loader:
        if not isinstance(d, dict):
            continue
        folder = d.get("instance_data_dir")
        if folder and not os.path.isabs(str(folder)):
            d["instance_data_dir"] = f"{upload}/{str(folder).lstrip('./')}"
        if d.get("cache_dir_vae"):
            d["cache_dir_vae"] = f"cache/{upload}/{d.get('id', 'dataset')}/vae"
        if d.get("dataset_type") == "text_embeds" and d.get("cache_dir"):
            d["cache_dir"] = f"cache/{upload}/text"
