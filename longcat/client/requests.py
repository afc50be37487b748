"""Building requests from plain Python values, shared by the sync and asyncio clients."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from longcat.v1 import common_pb2, edit_pb2, training_pb2

CHUNK = 1 << 20


def read_image(image) -> bytes:
    """bytes, a path, or a PIL image -> bytes to send."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    from longcat.images import encode_png

    return encode_png(image)


def parse_adapters(adapters) -> list[common_pb2.AdapterRef]:
    """["name", ("name", 0.5), "name:0.5", {"name":..., "scale":...}] -> AdapterRef messages."""
    out = []
    for a in adapters or ():
        if isinstance(a, str):
            name, _, scale = a.partition(":")
            out.append(common_pb2.AdapterRef(name=name, scale=float(scale) if scale else 1.0))
        elif isinstance(a, dict):
            out.append(common_pb2.AdapterRef(name=a["name"], scale=float(a.get("scale", 1.0))))
        else:
            name, scale = a
            out.append(common_pb2.AdapterRef(name=name, scale=float(scale)))
    return out


def edit_request(image, prompt: str, *, negative_prompt: str = "", width: int = 0, height: int = 0,
                 steps: int = 0, guidance: float | None = None, seed: int | None = None, adapters=(),
                 request_id: str | None = None, truncate_prompt: bool = False,
                 preview_every: int = 0) -> edit_pb2.EditRequest:
    req = edit_pb2.EditRequest(image=read_image(image), prompt=prompt, negative_prompt=negative_prompt,
                               width=width, height=height, num_inference_steps=steps,
                               adapters=parse_adapters(adapters), truncate_prompt=truncate_prompt,
                               preview_every=preview_every,
                               # A fresh idempotency key per call makes retries of UNAVAILABLE safe.
                               request_id=request_id or uuid.uuid4().hex)
    if guidance is not None:
        req.guidance_scale = guidance
    if seed is not None:
        req.seed = seed
    return req


def training_request(config, dataloader, adapter_name: str = "", request_id: str | None = None):
    def text(x):
        if isinstance(x, (dict, list)):
            return json.dumps(x)
        if isinstance(x, (str, os.PathLike)) and Path(x).is_file():
            return Path(x).read_text()
        return str(x)

    return training_pb2.SubmitTrainingRequest(config_json=text(config), dataloader_json=text(dataloader),
                                              adapter_name=adapter_name, request_id=request_id or uuid.uuid4().hex)


def tar_chunks(name: str, folders: dict[str, Path]) -> Iterator[training_pb2.UploadDatasetChunk]:
    """Stream a .tar.gz of ``folders`` (archive name -> local folder), in 1 MiB chunks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for arcname, folder in folders.items():
            tar.add(str(folder), arcname=arcname, recursive=True,
                    filter=lambda ti: ti if (ti.isfile() or ti.isdir()) else None)
    data = buf.getvalue()
    first = True
    for i in range(0, max(len(data), 1), CHUNK):
        yield training_pb2.UploadDatasetChunk(name=name if first else "", data=data[i:i + CHUNK])
        first = False


def iter_terminal(events: Iterable[edit_pb2.JobEvent]):
    for ev in events:
        yield ev
        if ev.HasField("job") and ev.job.state in (edit_pb2.SUCCEEDED, edit_pb2.FAILED, edit_pb2.CANCELLED):
            return
