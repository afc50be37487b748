"""Building requests from plain Python values, shared by the sync and asyncio clients."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from longcat.v1 import adapters_pb2, common_pb2, edit_pb2, training_pb2

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


ADAPTER_CHUNK = 1 << 20


def lora_upload_files(path: Path) -> tuple[Path, Path | None]:
    """A LoRA file or folder -> (its .safetensors weights, its PEFT adapter_config.json or None)."""
    from longcat.api.names import DIFFUSERS_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS
    from longcat.errors import InvalidArgument, NotFound

    if path.is_dir():
        weights = next((path / n for n in (DIFFUSERS_WEIGHTS, PEFT_WEIGHTS) if (path / n).is_file()), None)
        if weights is None:
            raise NotFound(f"{str(path)!r} holds neither {DIFFUSERS_WEIGHTS} nor {PEFT_WEIGHTS}", "path")
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise InvalidArgument(f"{str(path)!r} is not a .safetensors file", "path")
        weights = path
    else:
        raise NotFound(f"no LoRA file or folder at {str(path)!r}", "path")
    config = weights.parent / PEFT_CONFIG
    return weights, (config if config.is_file() and weights.name != DIFFUSERS_WEIGHTS else None)


def adapter_upload_messages(name: str, path: Path, overwrite: bool = False
                            ) -> Iterator[adapters_pb2.UploadAdapterRequest]:
    """The UploadAdapter stream: the metadata first, then the weights in chunks."""
    weights, config = lora_upload_files(path)
    meta = adapters_pb2.UploadAdapterMetadata(name=name, overwrite=overwrite, filename=weights.name,
                                              peft_config=config.read_text() if config else "")
    yield adapters_pb2.UploadAdapterRequest(metadata=meta)
    with weights.open("rb") as f:
        while data := f.read(ADAPTER_CHUNK):
            yield adapters_pb2.UploadAdapterRequest(data=data)


def save_adapter_chunks(chunks: Iterable[adapters_pb2.AdapterChunk], out_dir: Path):
    """Write a DownloadAdapter stream to ``out_dir/<filename>`` (atomically; the size checked)."""
    from longcat.errors import Unavailable

    out_dir.mkdir(parents=True, exist_ok=True)
    adapter, target, total, size = None, None, 0, 0
    tmp = out_dir / f".download-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with tmp.open("wb") as f:
            for chunk in chunks:
                if adapter is None:
                    adapter, target, total = chunk.adapter, out_dir / Path(chunk.filename).name, chunk.total_bytes
                f.write(chunk.data)
                size += len(chunk.data)
        if adapter is None or size != total:
            raise Unavailable(f"the download ended after {size} of {total} bytes; retry")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return adapter, target
