"""Load LongCat-Image-Edit components from a diffusers-format folder, a hub id, or ``tiny``.

Each service loads only what it hosts (the encoder: text encoder + tokenizer + image processor; the
denoiser: transformer + VAE + scheduler), through the libraries' own ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from longcat.api.models import TINY, TINY_TURBO, cache_dir, is_tiny, is_tiny_turbo, tiny_dir, tiny_seed  # noqa: F401 (re-exported)
from longcat.errors import InvalidArgument, NotFound
from longcat.models.precision import Precision, quantize_module, resolve_precision
from longcat.quiet import silence_libraries

log = logging.getLogger(__name__)

HUB_MODEL_ID = "meituan-longcat/LongCat-Image-Edit"
ALL_COMPONENTS = ("scheduler", "vae", "text_encoder", "tokenizer", "text_processor", "transformer")
ENCODER_COMPONENTS = ("text_encoder", "tokenizer", "text_processor")
DENOISER_COMPONENTS = ("scheduler", "vae", "transformer")
# Components whose linear weights the base precision quantizes (the VAE stays in the compute dtype).
QUANTIZED_COMPONENTS = ("transformer", "text_encoder")


def resolve_model(model: str | os.PathLike | None) -> str:
    """``tiny`` -> the built-in tiny model (built once into the cache); a folder -> its path; else a hub id."""
    model = str(model or os.environ.get("LONGCAT_MODEL") or TINY)
    if is_tiny(model):
        seed, path, turbo = tiny_seed(model), tiny_dir(model), is_tiny_turbo(model)
        if not (path / "model_index.json").exists():
            from longcat.models.tiny import build_tiny_model

            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            build_tiny_model(tmp, seed=seed, turbo=turbo)
            try:
                tmp.rename(path)  # atomic: concurrent first uses never see a half-written model
            except OSError:
                if not (path / "model_index.json").exists():
                    raise
        return str(path)
    if os.path.isdir(model):
        if not os.path.exists(os.path.join(model, "model_index.json")):
            raise NotFound(f"{model!r} is a folder but not a diffusers model (no model_index.json)", "model")
        return os.path.abspath(model)
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return model  # a hub id; from_pretrained downloads (or reads the HF cache)
    raise NotFound(f"{model!r} is neither a folder, a hub id like {HUB_MODEL_ID!r}, nor 'tiny'", "model")


def model_fingerprint(model_path: str) -> str:
    """A short id of the weights' identity, used in cache keys (model path or id + its index/revision)."""
    index = Path(model_path) / "model_index.json"
    payload = model_path + (index.read_text() if index.exists() else "")
    for sub in ("transformer", "text_encoder", "vae"):
        cfg = Path(model_path) / sub / "config.json"
        if cfg.exists():
            payload += cfg.read_text()
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Components:
    """The loaded parts of the model; a service holds only the ones it needs."""

    model_path: str
    device: torch.device
    precision: Precision
    scheduler: Any = None
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    text_processor: Any = None
    transformer: Any = None
    fingerprint: str = field(default="")

    def as_pipeline_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ALL_COMPONENTS}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("CUDA was asked for but no CUDA GPU is visible", "device")
    return device


def _load_one(name: str, path: str, dtype: torch.dtype, revision: str | None) -> Any:
    kw: dict[str, Any] = {"subfolder": name}
    if revision:
        kw["revision"] = revision
    if name == "scheduler":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_pretrained(path, **kw)
    if name == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(path, torch_dtype=dtype, **kw).eval()
    if name == "transformer":
        from diffusers import LongCatImageTransformer2DModel

        return LongCatImageTransformer2DModel.from_pretrained(path, torch_dtype=dtype, **kw).eval()
    if name == "text_encoder":
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, **kw).eval()
    if name == "tokenizer":
        from transformers import Qwen2Tokenizer

        return Qwen2Tokenizer.from_pretrained(path, **kw)
    if name == "text_processor":
        from longcat.models.processor import ImageOnlyQwenProcessor

        return ImageOnlyQwenProcessor.from_pretrained(path, **kw)
    raise InvalidArgument(f"unknown component {name!r}; known: {', '.join(ALL_COMPONENTS)}", "components")


def load_components(
    model: str | os.PathLike | None = None,
    components: Iterable[str] = ALL_COMPONENTS,
    device: str | torch.device | None = None,
    precision: str | None = "fp32",
    revision: str | None = None,
) -> Components:
    """Load the named components of ``model`` onto ``device`` at ``precision``."""
    import diffusers  # noqa: F401  (imported here so that their loading bars can be turned off first)
    import transformers  # noqa: F401

    silence_libraries()
    path = resolve_model(model)
    device = pick_device(device)
    prec = resolve_precision(precision, device)
    out = Components(model_path=path, device=device, precision=prec, fingerprint=model_fingerprint(path))
    for name in components:
        part = _load_one(name, path, prec.compute_dtype, revision)
        if isinstance(part, torch.nn.Module):
            part.requires_grad_(False)
            part.to(device)
            if name in QUANTIZED_COMPONENTS and prec.quantized:
                quantize_module(part, prec)
        setattr(out, name, part)
        log.info("component loaded", extra={"event": "component_loaded", "component": name, "model": path,
                                            "precision": prec.name, "device": str(device)})
    return out
